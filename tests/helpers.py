"""Helpers shared by test modules."""

import csv
import importlib.util
from pathlib import Path

import pytest

needs_envpool = pytest.mark.skipif(importlib.util.find_spec("envpool") is None, reason="envpool is not installed")


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv without the wall-clock columns (time/...), which differ between runs."""
    with (run_dir / "metrics.csv").open() as f:
        return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in csv.DictReader(f)]
