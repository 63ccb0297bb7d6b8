"""One ``Logger`` for every algorithm: stdout, CSV and TensorBoard.

Metric names carry a prefix: ``rollout/`` (episode returns and lengths), ``loss/``,
``diag/`` (diagnostics such as approx_kl, clip_frac, ess, explained_var, grad_norm),
``time/`` (sps, update_s), ``eval/``. The training loops call ``log``; algorithms only
return their metrics from ``update``.
"""

from __future__ import annotations

import csv
import math
import time
from collections import deque
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


class CSVWriter:
    """metrics.csv in wide form; the file is rewritten when a new metric name first appears."""

    def __init__(self, path: Path):
        self.path = path
        self.fields: list[str] = ["global_step"]
        self.rows: list[dict[str, Any]] = []

    def write(self, step: int, metrics: dict[str, float]) -> None:
        row = {"global_step": step, **metrics}
        self.rows.append(row)
        new = [k for k in metrics if k not in self.fields]
        if new or not self.path.exists():
            self.fields += new
            with self.path.open("w", newline="") as f:
                writer = csv.DictWriter(f, self.fields)
                writer.writeheader()
                writer.writerows(self.rows)
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, self.fields).writerow(row)

    def load_existing(self) -> None:
        """Continue an existing file (on resume), keeping its rows and columns."""
        if self.path.exists():
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.fields = list(reader.fieldnames or ["global_step"])
                self.rows = list(reader)

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (a resumed run re-logs them)."""
        self.rows = [r for r in self.rows if int(float(r["global_step"])) <= step]
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, self.fields)
            writer.writeheader()
            writer.writerows(self.rows)


class Logger:
    """Writes metrics to stdout (every ``print_interval`` seconds), CSV and TensorBoard."""

    def __init__(
        self,
        run_dir: str | Path | None = None,
        *,
        stdout: bool = True,
        tensorboard: bool = True,
        print_interval: float = 10.0,
    ):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.stdout = stdout
        self.print_interval = print_interval
        self._last_print = -math.inf
        self.csv: CSVWriter | None = None
        self.tb = None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.csv = CSVWriter(self.run_dir / "metrics.csv")
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))
        self.last: dict[str, float] = {}

    def resume(self, step: int) -> None:
        if self.csv is not None:
            self.csv.load_existing()
            if self.csv.rows:
                self.csv.truncate_after(step)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        metrics = {k: float(v) for k, v in metrics.items()}
        self.last.update(metrics)
        if self.csv is not None:
            self.csv.write(step, metrics)
        if self.tb is not None:
            for key, value in metrics.items():
                self.tb.add_scalar(key, value, step)
        now = time.monotonic()
        if self.stdout and now - self._last_print >= self.print_interval:
            self._last_print = now
            self.print_summary(step)

    def print_summary(self, step: int) -> None:
        shown = {k: v for k, v in self.last.items() if k.split("/")[0] in ("rollout", "loss", "diag", "time", "eval")}
        parts = [f"{k}={v:.4g}" for k, v in sorted(shown.items())]
        console.print(f"[bold]step {step}[/bold]  " + "  ".join(parts), highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


class ProgressBar:
    """A rich progress bar: steps, steps/s and the mean return of recent episodes."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, description: str = "training"):
        self.enabled = enabled
        self.recent: deque[float] = deque(maxlen=20)
        self._t0 = time.monotonic()
        self._start = start
        if not enabled:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[sps]} steps/s"),
            TextColumn("return {task.fields[ret]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task(description, total=total, completed=start, sps="-", ret="-")
        self.progress.start()

    def update(self, step: int, episode_returns: list[float] = ()) -> None:
        self.recent.extend(episode_returns)
        if not self.enabled:
            return
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        sps = f"{(step - self._start) / elapsed:,.0f}"
        ret = f"{sum(self.recent) / len(self.recent):.1f}" if self.recent else "-"
        self.progress.update(self.task, completed=step, sps=sps, ret=ret)

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()
