"""Learning curves from run directories: one line per group of seeds, mean and spread."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from policyopt.config import ConfigError


def read_metric(run_dir: Path, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(global_step, value) rows of ``metric`` in ``run_dir/metrics.csv`` where it is set."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no metrics.csv")
    steps, values = [], []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if metric not in (reader.fieldnames or []):
            raise ConfigError(f"{path} has no column {metric!r}")
        for row in reader:
            if row.get(metric) not in (None, ""):
                steps.append(float(row["global_step"]))
                values.append(float(row[metric]))
    return np.array(steps), np.array(values)


def run_label(run_dir: Path) -> str:
    """``algo on env`` from config.json, so seeds of one setting share a line."""
    info_path = run_dir / "config.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        return f"{info.get('algo')} on {info.get('env_id')}"
    return run_dir.name


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    head = np.cumsum(values[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def plot_runs(
    run_dirs: list[str | Path],
    output: str | Path,
    metric: str = "rollout/ep_return",
    smooth_window: int = 1,
    labels: list[str] | None = None,
) -> Path:
    """Plot ``metric`` against steps; runs with the same label are averaged (mean +- std).

    The label of a run is ``labels[i]`` if given (a sweep labels runs by config), else its algo and env.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    runs = [Path(r) for r in run_dirs]
    for run, label in zip(runs, labels or [None] * len(runs), strict=True):
        if not run.is_dir():
            raise ConfigError(f"run directory {run} does not exist")
        steps, values = read_metric(run, metric)
        if len(steps):
            groups[label or run_label(run)].append((steps, smooth(values, smooth_window)))
    if not groups:
        raise ConfigError(f"no run has values for {metric!r}")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, curves in groups.items():
        if len(curves) == 1:
            ax.plot(*curves[0], label=label)
            continue
        end = min(c[0][-1] for c in curves)
        grid = np.linspace(max(c[0][0] for c in curves), end, 200)
        ys = np.stack([np.interp(grid, s, v) for s, v in curves])
        mean, std = ys.mean(0), ys.std(0)
        ax.plot(grid, mean, label=f"{label} ({len(curves)} runs)")
        ax.fill_between(grid, mean - std, mean + std, alpha=0.25)
    ax.set_xlabel("environment steps")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output
