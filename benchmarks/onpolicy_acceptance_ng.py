"""Acceptance runs for NPG, TRPO and ACKTR: train each seed with its preset, evaluate 20 episodes.

    python benchmarks/onpolicy_acceptance_ng.py trpo CartPole-v1 --seeds 0 1 2 [--steps N] [--set key=value ...]

Prints one markdown table row: algorithm | env | budget | settings | per-seed mean returns | mean | min.
The budget defaults to the preset's ``total_steps``.
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("algo")
    parser.add_argument("env")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(1)
    cls = get_algorithm(args.algo)
    overrides = parse_set(args.overrides)
    results = []
    budget = args.steps
    for seed in args.seeds:
        t0 = time.time()
        agent = cls(args.env, seed=seed, **overrides)
        budget = args.steps or agent.suggested_steps
        agent.learn(budget, progress=False, callback=lambda a, m: None)
        score = float(np.mean(agent.evaluate(20)))
        results.append(score)
        print(f"# seed {seed}: {score:.1f} ({time.time() - t0:.0f} s)", flush=True)
    settings = ", ".join(args.overrides) or "preset"
    seeds = " / ".join(f"{r:.1f}" for r in results)
    print(f"| {args.algo} | {args.env} | {budget} | {settings} | {seeds} | {np.mean(results):.1f} | {np.min(results):.1f} |")


if __name__ == "__main__":
    main()
