"""Acceptance runs of any algorithm: train each seed, evaluate 20 deterministic episodes.

    python benchmarks/acceptance.py ALGO ENV [--seeds 0 1 2] [--steps N]
        [--set key=value ...] [--run-root DIR] [--save]

Trains with the algorithm's preset for ENV (``policyopt/presets/<algo>.yaml``) plus the
``--set`` overrides for ``--steps`` env steps (default: the preset's ``total_steps``), one seed
after the other, then prints one markdown row:
algorithm | env | budget | settings | per-seed results | mean | min,
where a seed's result is the mean undiscounted return of ``agent.evaluate(20)``.

With ``--eval-every N`` training also evaluates the greedy policy every N steps on 10 episodes
of their own and keeps the best one (``learn(eval_every=N)``); that best model is then
evaluated on the same 20 episodes as the final one and gets a second row (settings
``best model, eval every N``).

With ``--set bias_eval_interval=N`` it also prints, per seed, the critic's overestimation
(``diag/q_bias``, TD3 paper section 4.1) averaged over all measurements and over the last half.
With ``--run-root`` every seed writes a run directory there (for ``policyopt plot``).
With ``--save`` the per-seed lines and the row are appended, with the date and command, to
``benchmarks/results/acceptance/<algo>.md``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policyopt.config import parse_set  # noqa: E402  (policyopt before torch: policyopt/mkl_dispatch.py)
from policyopt.registry import get_algorithm  # noqa: E402

import torch  # noqa: E402


def train_seed(args: argparse.Namespace, seed: int, overrides: dict[str, str]) -> tuple[float, int, list[float], dict | None]:
    """(mean eval return, budget, q_bias measurements, best model's step and mean eval return or None) of one seed."""
    agent = get_algorithm(args.algo)(args.env, seed=seed, **overrides)
    budget = args.steps or agent.suggested_steps
    biases: list[float] = []

    def record(_agent, metrics):
        if "diag/q_bias" in metrics:
            biases.append(metrics["diag/q_bias"])

    run_dir = Path(args.run_root) / f"{args.env}__{args.algo}__{seed}" if args.run_root else None
    try:
        agent.learn(budget, run_dir=run_dir, progress=False, callback=record, eval_every=args.eval_every)
    finally:
        agent.close()  # stop its envs and, for IMPALA or workers > 0, its Ray actors before the next seed
    final = float(np.mean(agent.evaluate(20)))
    best = None
    if agent.best is not None:
        best = {"step": agent.best["step"], "score": float(np.mean(agent.best_model().evaluate(20)))}
    return final, budget, biases, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("algo")
    parser.add_argument("env")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="env steps (default: the preset's total_steps)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--eval-every", type=int, default=0, metavar="N", help="also report the best of evaluations every N steps")
    parser.add_argument("--run-root", default=None, help="write run directories here")
    parser.add_argument("--save", action="store_true", help="append the result to benchmarks/results/acceptance/ALGO.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = parse_set(args.overrides)
    results, best_results, budget, lines = [], [], args.steps, []
    for seed in args.seeds:
        t0 = time.perf_counter()
        score, budget, biases, best = train_seed(args, seed, overrides)
        results.append(score)
        line = f"# {args.algo} {args.env} seed {seed}: {score:.1f} ({time.perf_counter() - t0:.0f} s)"
        if best is not None:
            best_results.append(best["score"])
            line += f"; best model (step {best['step']}): {best['score']:.1f}"
        if biases:
            half = biases[len(biases) // 2 :]
            line += f"; q_bias mean {np.mean(biases):.2f} over {len(biases)} measurements, last half {np.mean(half):.2f}"
        print(line, flush=True)
        lines.append(line)
    settings = ", ".join(args.overrides) or "preset"
    rows = [table_row(args, budget, settings, results)]
    if best_results:
        rows.append(table_row(args, budget, f"{settings}, best model, eval every {args.eval_every}", best_results))
    print("\n".join(rows))
    if args.save:
        save(args.algo, lines, "\n".join(rows))


def table_row(args: argparse.Namespace, budget: int, settings: str, results: list[float]) -> str:
    per_seed = " / ".join(f"{r:.1f}" for r in results)
    return f"| {args.algo} | {args.env} | {budget} | {settings} | {per_seed} | {np.mean(results):.1f} | {np.min(results):.1f} |"


def save(algo: str, lines: list[str], row: str) -> None:
    path = Path(__file__).resolve().parent / "results" / "acceptance" / f"{algo}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", "benchmarks/acceptance.py", *sys.argv[1:]])
    with path.open("a") as f:
        f.write(f"\n{datetime.date.today()}: `{command}`\n\n" + "\n".join(lines) + f"\n\n{row}\n")


if __name__ == "__main__":
    main()
