"""Acceptance numbers of the tabular algorithms (issue 5), printed as markdown.

    python benchmarks/tabular_acceptance.py [--seeds 0 1 2] [--episodes 1000] [--save]

1. Dynamic programming: value and policy iteration on slippery FrozenLake 4x4 and 8x8 and
   Taxi (gamma 0.99): how far each one's values are from the exact value (I - gamma P_pi)^-1 R_pi
   of its own final policy, and from each other's.
2. CliffWalking (S&B Example 6.6, the presets: epsilon 0.1, alpha 0.1, gamma 1): per seed, the
   greedy policy's return and path, and the online return of the epsilon-greedy behavior over
   the second half of training, for SARSA, Expected SARSA and Q-learning; and SARSA with
   epsilon annealed to 0 (``end_e=0``), which is no longer bound to epsilon-soft policies.
3. Q-learning on slippery FrozenLake 4x4 (preset): greedy success rate over ``--episodes``
   episodes per seed, next to that of the optimal policy (value iteration) on the same episodes.

With ``--save`` the output is appended, with the date and command, to
``benchmarks/results/acceptance/tabular.md``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policyopt.algos.tabular import dp  # noqa: E402
from policyopt.algos.tabular.mdp import from_env  # noqa: E402
from policyopt.registry import get_algorithm  # noqa: E402

DP_ENVS = {"FrozenLake 4x4": "FrozenLake-v1", "FrozenLake 8x8": "FrozenLake8x8-v1", "Taxi": "Taxi-v4"}
CLIFF_COLS = 12
CLIFF_START = 36


def dp_agreement(gamma: float = 0.99) -> list[str]:
    lines = ["| env | VI: max abs(V - V_exact(pi_VI)) | PI: max abs(V - V_exact(pi_PI)) | max abs(V_VI - V_PI) | "
             "same policy | VI sweeps | PI iterations |", "|---|---|---|---|---|---|---|"]
    for label, env_id in DP_ENVS.items():
        mdp = from_env(gym.make(env_id), gamma)
        vi = get_algorithm("value-iteration")(env_id, gamma=gamma).learn(progress=False)
        pi = get_algorithm("policy-iteration")(env_id, gamma=gamma).learn(progress=False)
        vi_err = np.abs(vi.values - dp.evaluate_policy_exact(mdp, vi.policy)).max()
        pi_err = np.abs(pi.values - dp.evaluate_policy_exact(mdp, pi.policy)).max()
        gap = np.abs(vi.values - pi.values).max()
        same = bool((vi.policy == pi.policy).all())
        lines.append(f"| {label} | {vi_err:.1e} | {pi_err:.1e} | {gap:.1e} | {same} | {vi.num_updates} | {pi.num_updates} |")
    return lines


def greedy_path(policy: np.ndarray, mdp) -> tuple[int, str]:
    """Steps and the rows used by the greedy path from the start of the (deterministic) cliff world."""
    state, rows = CLIFF_START, set()
    for steps in range(1, 101):
        state = int(mdp.P[state, policy[state]].argmax())
        rows.add(state // CLIFF_COLS)
        if mdp.terminal[state]:
            return steps, f"rows {min(rows)}-{max(rows)}"
    return steps, "loops"


def online_and_greedy(algo: str, seed: int, overrides: dict) -> tuple[float, float, str]:
    agent = get_algorithm(algo)("CliffWalking-v1", seed=seed, **overrides)
    half = agent.suggested_steps // 2
    totals: list[tuple[float, int]] = []

    def record(agent, metrics):
        if "rollout/episodes" in metrics and agent.global_step > half:
            totals.append((metrics["rollout/ep_return"] * metrics["rollout/episodes"], metrics["rollout/episodes"]))

    agent.learn(progress=False, callback=record)
    online = sum(t for t, _ in totals) / sum(n for _, n in totals)
    mdp = from_env(gym.make("CliffWalking-v1"), 1.0)
    _, path = greedy_path(agent.greedy_policy(), mdp)
    return agent.evaluate(1)[0], online, path


def cliff_walking(seeds: list[int]) -> list[str]:
    lines = ["| algorithm | settings | greedy return per seed | greedy path (rows; the cliff is next to row 2) | "
             "online return, 2nd half, per seed | online mean |", "|---|---|---|---|---|---|"]
    runs = [("sarsa", {}), ("expected-sarsa", {}), ("q-learning", {}), ("sarsa", {"end_e": 0.0})]
    for algo, overrides in runs:
        results = [online_and_greedy(algo, seed, {"log_interval": 500, **overrides}) for seed in seeds]
        settings = "preset" + "".join(f", {k}={v}" for k, v in overrides.items())
        greedy = ", ".join(f"{g:.0f}" for g, _, _ in results)
        paths = ", ".join(sorted({p for _, _, p in results}))
        online = ", ".join(f"{o:.1f}" for _, o, _ in results)
        mean = np.mean([o for _, o, _ in results])
        lines.append(f"| {algo} | {settings} | {greedy} | {paths} | {online} | {mean:.1f} |")
    return lines


def frozen_lake_q_learning(seeds: list[int], episodes: int) -> list[str]:
    optimal = get_algorithm("value-iteration")("FrozenLake-v1").learn(progress=False)
    reference = [float(np.mean(optimal.evaluate(episodes, seed=10_000 + seed))) for seed in seeds]
    rates = []
    for seed in seeds:
        agent = get_algorithm("q-learning")("FrozenLake-v1", seed=seed, log_interval=10_000)
        agent.learn(progress=False)
        rates.append(float(np.mean(agent.evaluate(episodes))))
    per_seed = ", ".join(f"{r:.3f}" for r in rates)
    budget = agent.schedule[1]
    return [
        "| algorithm | env steps | seeds | success per seed | mean | min | optimal policy, same episodes |",
        "|---|---|---|---|---|---|---|",
        f"| q-learning | {budget} | {seeds} | {per_seed} | {np.mean(rates):.3f} | {min(rates):.3f} | "
        f"{', '.join(f'{r:.3f}' for r in reference)} |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=1000, help="greedy evaluation episodes on FrozenLake")
    parser.add_argument("--save", action="store_true", help="append to benchmarks/results/acceptance/tabular.md")
    args = parser.parse_args()
    sections = [
        ("VI and PI against the exact solution of their final policy (gamma 0.99)", dp_agreement()),
        ("CliffWalking-v1: SARSA vs Q-learning (epsilon 0.1 unless stated)", cliff_walking(args.seeds)),
        (f"FrozenLake-v1 (slippery 4x4): Q-learning greedy success over {args.episodes} episodes", frozen_lake_q_learning(args.seeds, args.episodes)),
    ]
    text = "\n\n".join(f"### {title}\n\n" + "\n".join(lines) for title, lines in sections)
    print(text)
    if args.save:
        out = Path(__file__).resolve().parent / "results" / "acceptance" / "tabular.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        with out.open("a") as f:
            f.write(f"## {stamp}\n\n`python {' '.join(sys.argv)}`\n\n{text}\n\n")


if __name__ == "__main__":
    main()
