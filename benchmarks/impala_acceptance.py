"""IMPALA acceptance on CartPole-v1: train each seed on Ray, evaluate 20 deterministic episodes.

    python benchmarks/impala_acceptance.py [--env CartPole-v1] [--workers 2] [--seeds 0 1 2]
                                           [--steps N] [--set key=value ...]

Uses the IMPALA preset for the env (``policyopt/presets/impala.yaml``) plus the overrides,
for ``--steps`` env steps (default: the preset's ``total_steps``). Prints one line per seed
(eval return of ``agent.evaluate(20)``, wall time, worker restarts), then one markdown row:
env | workers | budget | settings | per-seed returns | mean | min | wall s per seed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policyopt.algos.impala import IMPALA  # noqa: E402
from policyopt.config import parse_set  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="env steps (default: the preset's total_steps)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = {**parse_set(args.overrides), "workers": args.workers}
    returns, walls, budget = [], [], args.steps
    for seed in args.seeds:
        agent = IMPALA(args.env, seed=seed, config=overrides)
        budget = args.steps or agent.suggested_steps
        t0 = time.perf_counter()
        try:
            agent.learn(budget, progress=False)
            restarts = agent.runner.pool.total_restarts
        finally:
            agent.close()
        walls.append(time.perf_counter() - t0)
        returns.append(float(np.mean(agent.evaluate(20))))
        print(f"# impala {args.env} seed {seed}: {returns[-1]:.1f} in {walls[-1]:.0f} s, {restarts} worker restarts", flush=True)
    settings = ", ".join(args.overrides) or "preset"
    per_seed = " / ".join(f"{r:.1f}" for r in returns)
    print(f"| {args.env} | {args.workers} | {budget} | {settings} | {per_seed} | {np.mean(returns):.1f} | "
          f"{np.min(returns):.1f} | {np.mean(walls):.0f} |")


if __name__ == "__main__":
    main()
