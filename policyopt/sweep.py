"""``policyopt sweep CONFIG.yaml``: a grid or random search over configs and seeds, run as Ray tasks.

CONFIG.yaml::

    name: ppo-lr                 # optional; names the output directory (default: the file name)
    algo: ppo
    env: CartPole-v1
    steps: 20000                 # optional; default: the preset's budget
    seeds: [0, 1, 2]             # or a count: 3 means seeds 0, 1, 2
    config: {num_envs: 4}        # optional: the same overrides for every run
    grid:                        # every combination of these values ...
      learning_rate: [0.001, 0.0003]
    # ... or a random search, sampled by Optuna's seeded RandomSampler:
    # random:
    #   learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}
    #   activation: {choices: [tanh, relu]}
    # trials: 8
    # sampler_seed: 0
    eval_episodes: 10            # optional; evaluation episodes after training
    preset: true                 # optional; apply the tuned preset for this env first
    address: null                # optional; a Ray cluster to join (default: a local instance)

Every (config, seed) trains as one Ray task, on CPUs reserved for it (one, plus one per rollout
worker for IMPALA or ``workers > 0``), and writes its own run directory
``OUT/runs/c<i>__seed<s>/``. Then ``OUT/summary.csv`` (one row per run: config, seed, final
evaluation return, steps/s), ``OUT/summary.md`` (the same, and per config the mean and
minimum over seeds) and ``OUT/curves.png`` (learning curves, one line per config) are written.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import time
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from policyopt.config import ConfigError, build_config, load_yaml, preset
from policyopt.registry import get_algorithm

SWEEP_KEYS = {
    "name", "algo", "env", "steps", "seeds", "config", "grid", "random", "trials", "sampler_seed",
    "eval_episodes", "preset", "address",
}
SUMMARY_FIELDS = ["config", "params", "seed", "eval_return", "eval_std", "steps", "steps_per_s", "wall_s", "run_dir", "error"]


@dataclass
class Sweep:
    name: str
    algo: str
    env: str
    seeds: list[int]
    steps: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    random: dict[str, dict[str, Any]] = field(default_factory=dict)
    trials: int = 0
    sampler_seed: int = 0
    eval_episodes: int = 10
    preset: bool = True
    address: str | None = None


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file; every problem is a one-line ``ConfigError``."""
    path = Path(path)
    data = load_yaml(path)
    unknown = sorted(set(data) - SWEEP_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown sweep key {unknown[0]!r}; expected some of {', '.join(sorted(SWEEP_KEYS))}")
    for key in ("algo", "env", "seeds"):
        if key not in data:
            raise ConfigError(f"{path}: the sweep needs {key!r}")
    seeds = data["seeds"]
    seeds = list(range(seeds)) if isinstance(seeds, int) else seeds
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ConfigError(f"{path}: seeds must be a count or a list of integers")
    grid, space = data.get("grid") or {}, data.get("random") or {}
    if bool(grid) == bool(space):
        raise ConfigError(f"{path}: give exactly one of 'grid' (key: [values]) and 'random' (key: {{low, high}})")
    if grid and not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"{path}: every grid key needs a non-empty list of values")
    trials = int(data.get("trials", 0))
    if space and trials < 1:
        raise ConfigError(f"{path}: a random search needs trials >= 1")
    get_algorithm(data["algo"])
    sweep = Sweep(
        name=str(data.get("name") or path.stem),
        algo=str(data["algo"]).lower(),
        env=str(data["env"]),
        seeds=seeds,
        steps=data.get("steps"),
        config=dict(data.get("config") or {}),
        grid=grid,
        random=space,
        trials=trials,
        sampler_seed=int(data.get("sampler_seed", 0)),
        eval_episodes=int(data.get("eval_episodes", 10)),
        preset=bool(data.get("preset", True)),
        address=data.get("address"),
    )
    if sweep.steps is not None and sweep.steps <= 0:
        raise ConfigError(f"{path}: steps must be > 0, got {sweep.steps}")
    return sweep


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in the order of the file."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def search_space(config_cls: type, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Optuna distributions for ``random:``; ints or floats by the config field's type."""
    import optuna

    hints = typing.get_type_hints(config_cls)
    out: dict[str, Any] = {}
    for key, spec in space.items():
        if key not in hints:
            raise ConfigError(f"unknown config key {key!r} in random: for {config_cls.__name__}")
        if not isinstance(spec, dict):
            raise ConfigError(f"random: {key} needs {{low, high[, log]}} or {{choices: [...]}}")
        if "choices" in spec:
            out[key] = optuna.distributions.CategoricalDistribution(spec["choices"])
            continue
        if "low" not in spec or "high" not in spec:
            raise ConfigError(f"random: {key} needs low and high")
        log = bool(spec.get("log", False))
        if hints[key] is int:
            out[key] = optuna.distributions.IntDistribution(int(spec["low"]), int(spec["high"]), log=log)
        else:
            out[key] = optuna.distributions.FloatDistribution(float(spec["low"]), float(spec["high"]), log=log)
    return out


def random_points(sweep: Sweep, config_cls: type) -> list[dict[str, Any]]:
    """``trials`` configs drawn by Optuna's ``RandomSampler`` seeded with ``sampler_seed``."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("a random search needs Optuna: pip install 'policyopt[ray]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=sweep.sampler_seed))
    distributions = search_space(config_cls, sweep.random)
    return [study.ask(distributions).params for _ in range(sweep.trials)]


def run_one(algo: str, env: str, overrides: dict[str, Any], seed: int, steps: int | None, run_dir: str,
            eval_episodes: int, use_preset: bool) -> dict[str, Any]:
    """Train one (config, seed) into ``run_dir`` and evaluate it; runs inside a Ray task."""
    import torch

    from policyopt.logging import console

    torch.set_num_threads(1)
    console.quiet = True  # a task's progress lines would interleave on the driver; metrics.csv has them
    cls = get_algorithm(algo)
    agent = cls(env, seed=seed, preset=use_preset, config=overrides)
    budget = steps or agent.suggested_steps
    if budget is None:
        raise ConfigError(f"no steps given and {algo} has no preset budget for {env}")
    t0 = time.perf_counter()
    agent.learn(budget, run_dir=run_dir, progress=False)
    wall = time.perf_counter() - t0
    returns = agent.evaluate(eval_episodes) if eval_episodes > 0 else [float("nan")]
    result = {"eval_return": float(np.mean(returns)), "eval_std": float(np.std(returns)), "steps": budget,
              "steps_per_s": budget / wall, "wall_s": wall}
    (Path(run_dir) / "eval.json").write_text(json.dumps({"episodes": eval_episodes, "mean_return": result["eval_return"],
                                                         "std_return": result["eval_std"]}))
    return result


def format_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def reserve_cpus(ray: Any, cpus: int) -> tuple[Any, Any]:
    """A placement group of ``cpus`` one-CPU bundles for one run, and the strategy that runs a task in it.

    The run's task takes one bundle; the rollout worker actors it starts (IMPALA, ``workers > 0``)
    are captured into the others. Without the reservation, the CPU a task frees while it waits
    on its workers goes to the next queued run instead, whose workers then wait too: with more
    runs than cores, every run holds a CPU and none of their workers can start.
    """
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    group = ray.util.placement_group([{"CPU": 1}] * cpus)
    return group, PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)


def run_sweep(sweep: Sweep, out: str | Path, *, address: str | None = None, echo: Any = print) -> list[dict[str, Any]]:
    """Run every (config, seed) of ``sweep`` as a Ray task and write the summary into ``out``."""
    from policyopt.distributed import connect

    cls = get_algorithm(sweep.algo)
    out = Path(out)
    points = random_points(sweep, cls.Config) if sweep.random else grid_points(sweep.grid)
    base = preset(cls.name, sweep.env) if sweep.preset else {}
    base.pop("total_steps", None)
    # reject a bad config here, before any task starts; a run needs one CPU, and one per rollout worker
    cpus = [1 + build_config(cls.Config, base, sweep.config, params).workers for params in points]
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps({**asdict(sweep), "points": points}, indent=2, default=str))

    ray = connect(address or sweep.address, num_cpus=max(cpus))
    available = int(ray.cluster_resources().get("CPU", 0))
    if max(cpus) > available:
        raise ConfigError(f"a run needs {max(cpus)} CPUs (1 + workers) but the Ray instance has {available}")
    task = ray.remote(num_cpus=1)(run_one)
    pending: dict[Any, dict[str, Any]] = {}
    groups: dict[Any, Any] = {}
    for i, params in enumerate(points):
        for seed in sweep.seeds:
            run_dir = out / "runs" / f"c{i}__seed{seed}"
            row = {"config": f"c{i}", "params": format_params(params), "seed": seed, "run_dir": str(run_dir)}
            group, placed = reserve_cpus(ray, cpus[i])
            ref = task.options(scheduling_strategy=placed).remote(
                sweep.algo, sweep.env, {**sweep.config, **params}, seed, sweep.steps, str(run_dir),
                sweep.eval_episodes, sweep.preset)
            pending[ref], groups[ref] = row, group
    rows = []
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        row = pending.pop(ref)
        ray.util.remove_placement_group(groups.pop(ref))
        try:
            row.update(ray.get(ref))
            echo(f"[{len(rows) + 1}/{len(rows) + len(pending) + 1}] {row['config']} seed {row['seed']}: "
                 f"eval_return {row['eval_return']:.2f}, {row['steps_per_s']:.0f} steps/s  ({row['params']})")
        except Exception as exc:  # one failed run is reported in the summary; the others go on
            row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1]}"
            echo(f"[{len(rows) + 1}/{len(rows) + len(pending) + 1}] {row['config']} seed {row['seed']}: FAILED {row['error']}")
        rows.append(row)
    rows.sort(key=lambda r: (int(r["config"][1:]), r["seed"]))
    write_summary(rows, out, sweep)
    return rows


def config_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per config: mean, std and min of the final evaluation return over its finished seeds, best first."""
    table = []
    for config in dict.fromkeys(r["config"] for r in rows):
        mine = [r for r in rows if r["config"] == config]
        returns = [r["eval_return"] for r in mine if "error" not in r]
        table.append({
            "config": config,
            "params": mine[0]["params"],
            "runs": f"{len(returns)}/{len(mine)}",
            "mean": float(np.mean(returns)) if returns else math.nan,
            "std": float(np.std(returns)) if returns else math.nan,
            "min": float(np.min(returns)) if returns else math.nan,
            "steps_per_s": float(np.mean([r["steps_per_s"] for r in mine if "error" not in r])) if returns else math.nan,
        })
    return sorted(table, key=lambda t: -t["mean"] if not math.isnan(t["mean"]) else math.inf)


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _markdown(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]


def write_summary(rows: list[dict[str, Any]], out: Path, sweep: Sweep) -> None:
    """summary.csv, summary.md and curves.png (mean +- std over seeds, one line per config)."""
    from policyopt.plotting import plot_runs

    with (out / "summary.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, SUMMARY_FIELDS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    table = config_table(rows)
    lines = [f"# Sweep {sweep.name}: {sweep.algo} on {sweep.env}", "",
             f"{len(rows)} runs; final return = mean of {sweep.eval_episodes} evaluation episodes.", "",
             "## By config (best first)", ""]
    lines += _markdown(["config", "params", "runs", "mean return", "std", "min", "steps/s"],
                       [[t["config"], t["params"], t["runs"], t["mean"], t["std"], t["min"], t["steps_per_s"]] for t in table])
    lines += ["", "## Runs", ""]
    lines += _markdown(["config", "seed", "eval return", "steps/s", "run dir"],
                       [[r["config"], r["seed"], r.get("eval_return", r.get("error")), r.get("steps_per_s", ""),
                         Path(r["run_dir"]).relative_to(out)] for r in rows])
    finished = [r for r in rows if "error" not in r]
    if finished:
        plot_runs([r["run_dir"] for r in finished], out / "curves.png",
                  labels=[f"{r['config']}: {r['params']}" for r in finished])
        lines += ["", "![learning curves](curves.png)"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
