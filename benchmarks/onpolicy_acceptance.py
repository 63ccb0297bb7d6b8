"""Acceptance runs of the on-policy family: train each seed, evaluate 20 deterministic episodes.

    python benchmarks/onpolicy_acceptance.py ALGO ENV [--seeds 0 1 2] [--steps N] [--set key=value ...]

Trains with the algorithm's preset for ENV (``policyopt/presets/<algo>.yaml``) plus the
``--set`` overrides, for ``--steps`` env steps (default: the preset's ``total_steps``), then
prints one markdown row: algorithm | env | budget | settings | per-seed results | mean | min,
where a seed's result is the mean undiscounted return of ``agent.evaluate(20)``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policyopt.config import parse_set  # noqa: E402
from policyopt.registry import get_algorithm  # noqa: E402


def run_seed(algo: str, env: str, seed: int, steps: int | None, overrides: dict[str, str]) -> tuple[float, int]:
    agent = get_algorithm(algo)(env, seed=seed, **overrides)
    budget = steps or agent.suggested_steps
    agent.learn(budget, progress=False)
    return float(np.mean(agent.evaluate(20))), budget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("algo")
    parser.add_argument("env")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="env steps (default: the preset's total_steps)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = parse_set(args.overrides)
    results, budget = [], args.steps
    for seed in args.seeds:
        t0 = time.perf_counter()
        score, budget = run_seed(args.algo, args.env, seed, args.steps, overrides)
        results.append(score)
        print(f"# {args.algo} {args.env} seed {seed}: {score:.1f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    settings = ", ".join(args.overrides) or "preset"
    per_seed = " / ".join(f"{r:.1f}" for r in results)
    print(f"| {args.algo} | {args.env} | {budget} | {settings} | {per_seed} | {np.mean(results):.1f} | {np.min(results):.1f} |")


if __name__ == "__main__":
    main()
