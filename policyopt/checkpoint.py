"""Checkpoint files: atomic, versioned, checksummed, loadable without unpickling objects.

File layout: one header line of JSON (magic, format version, SHA-256 and length of the
payload), then the payload written by ``torch.save``. The payload holds only tensors and
plain Python values (``state_dict``s, counters, RNG states, the config as JSON), so it is
read back with ``torch.load(weights_only=True)``; nothing in it can execute code.

Writes go to a temporary file in the same directory, are fsynced, then renamed over the
target, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

MAGIC = "policyopt-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read: missing, truncated, corrupt, or from another format."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    header = {"magic": MAGIC, "version": FORMAT_VERSION, "sha256": hashlib.sha256(body).hexdigest(), "length": len(body)}
    atomic_write_bytes(path, json.dumps(header).encode() + b"\n" + body)


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    raw = path.read_bytes()
    head, sep, body = raw.partition(b"\n")
    try:
        header = json.loads(head) if sep else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict) or header.get("magic") != MAGIC:
        raise CheckpointError(f"{path} is not a policyopt checkpoint (bad header)")
    if header.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {header.get('version')}, this policyopt reads {FORMAT_VERSION}"
        )
    if len(body) != header["length"]:
        raise CheckpointError(f"{path} is truncated: {len(body)} of {header['length']} payload bytes")
    if hashlib.sha256(body).hexdigest() != header["sha256"]:
        raise CheckpointError(f"{path} is corrupt: checksum mismatch")
    try:
        return torch.load(io.BytesIO(body), map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} could not be decoded: {exc}") from exc


_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


class CheckpointDir:
    """``<run_dir>/checkpoints/step_<N>.pt``, keeping the newest ``keep`` files."""

    def __init__(self, run_dir: str | os.PathLike, keep: int = 3):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep = keep

    def save(self, step: int, payload: dict[str, Any]) -> Path:
        path = self.dir / f"step_{step:012d}.pt"
        save(path, payload)
        for old in self.all()[: -self.keep]:
            old.unlink(missing_ok=True)
        return path

    def all(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := _STEP_FILE.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        files = self.all()
        return files[-1] if files else None
