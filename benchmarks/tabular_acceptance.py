"""Acceptance numbers of the tabular algorithms (issue 5), printed as markdown.

    python benchmarks/tabular_acceptance.py [--seeds 0 1 2] [--episodes 1000]
        [--parts dp cliff frozenlake] [--save]

1. Dynamic programming: value and policy iteration on slippery FrozenLake 4x4 and 8x8 and
   Taxi (gamma 0.99): how far each one's values are from the exact value (I - gamma P_pi)^-1 R_pi
   of its own final policy, and from each other's.
2. CliffWalking (S&B Example 6.6, the presets: epsilon 0.1, alpha 0.1, gamma 1, 20000 steps):
   per seed, the greedy policy's return and path, the exact expected return of running it
   epsilon-greedily (``FiniteMDP.epsilon_soft``), and the online return of the behavior over
   the second half of training, for SARSA, Expected SARSA and Q-learning; next to the optimal
   policy and the best epsilon-greedy one.
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


def literal_value(mdp, policy: np.ndarray) -> np.ndarray:
    """(I - gamma P_pi)^-1 R_pi on all states, as the issue writes it (gamma < 1)."""
    P_pi, R_pi = dp.policy_model(mdp, policy)
    return np.linalg.solve(np.eye(mdp.n_states) - mdp.gamma * P_pi, R_pi)


def dp_agreement(gamma: float = 0.99) -> list[str]:
    lines = ["| env | VI: max abs(V - V_exact(pi_VI)) | PI: max abs(V - V_exact(pi_PI)) | max abs(V_VI - V_PI) | "
             "states where the policies differ | VI sweeps | PI iterations |", "|---|---|---|---|---|---|---|"]
    for label, env_id in DP_ENVS.items():
        mdp = from_env(gym.make(env_id), gamma)
        vi = get_algorithm("value-iteration")(env_id, gamma=gamma).learn(progress=False)
        pi = get_algorithm("policy-iteration")(env_id, gamma=gamma).learn(progress=False)
        vi_err = np.abs(vi.values - literal_value(mdp, vi.policy)).max()
        pi_err = np.abs(pi.values - literal_value(mdp, pi.policy)).max()
        gap = np.abs(vi.values - pi.values).max()
        differ = np.flatnonzero(vi.policy != pi.policy)
        q, rows = dp.action_values(mdp, pi.values)[differ], np.arange(len(differ))
        tied = np.allclose(q[rows, vi.policy[differ]], q[rows, pi.policy[differ]], rtol=0, atol=1e-8)
        lines.append(f"| {label} | {vi_err:.1e} | {pi_err:.1e} | {gap:.1e} | {len(differ)}{'' if not len(differ) else ' (all tied)' if tied else ' (NOT tied)'} | "
                     f"{vi.num_updates} | {pi.num_updates} |")
    return lines


def greedy_path(policy: np.ndarray, mdp) -> tuple[float, str]:
    """Return and row of the greedy path from the start of the (deterministic) cliff world."""
    state, rows, total = CLIFF_START, set(), 0.0
    for _ in range(100):
        action = policy[state]
        total += mdp.R[state, action]
        state = int(mdp.P[state, action].argmax())
        rows.add(state // CLIFF_COLS)
        if mdp.terminal[state]:
            return total, f"row {min(rows)}"
    return total, "loops"


def train_on_the_cliff(algo: str, seed: int) -> tuple[np.ndarray, float]:
    """(greedy policy, online return over the second half of training) with the preset."""
    agent = get_algorithm(algo)("CliffWalking-v1", seed=seed, log_interval=500)
    half = agent.suggested_steps // 2
    totals: list[tuple[float, int]] = []

    def record(agent, metrics):
        if "rollout/episodes" in metrics and agent.global_step > half:
            totals.append((metrics["rollout/ep_return"] * metrics["rollout/episodes"], metrics["rollout/episodes"]))

    agent.learn(progress=False, callback=record)
    return agent.greedy_policy(), sum(t for t, _ in totals) / sum(n for _, n in totals)


def cliff_walking(seeds: list[int], epsilon: float = 0.1) -> list[str]:
    mdp = from_env(gym.make("CliffWalking-v1"), 1.0)
    soft = mdp.epsilon_soft(epsilon)

    def describe(policy: np.ndarray) -> tuple[float, str, float]:
        """Greedy return, greedy path, and the exact return of the policy run epsilon-greedily."""
        return (*greedy_path(policy, mdp), dp.evaluate_policy_exact(soft, policy)[CLIFF_START])

    lines = ["| algorithm | greedy return per seed | greedy path (row 0 = top, row 2 = edge of the cliff) | "
             "exact return of its epsilon-greedy policy, per seed | online return, 2nd half of training, per seed | online mean |",
             "|---|---|---|---|---|---|"]
    for algo in ("sarsa", "expected-sarsa", "q-learning"):
        runs = [train_on_the_cliff(algo, seed) for seed in seeds]
        described = [describe(policy) for policy, _ in runs]
        lines.append(f"| {algo} | {', '.join(f'{g:.0f}' for g, _, _ in described)} | "
                     f"{', '.join(sorted({path for _, path, _ in described}))} | "
                     f"{', '.join(f'{e:.1f}' for _, _, e in described)} | {', '.join(f'{o:.1f}' for _, o in runs)} | "
                     f"{np.mean([o for _, o in runs]):.1f} |")
    for label, policy in (("optimal (value iteration)", dp.value_iteration(mdp).policy),
                          ("best epsilon-greedy (value iteration, epsilon-soft MDP)", dp.value_iteration(soft).policy)):
        greedy, path, epsilon_greedy = describe(policy)
        lines.append(f"| {label} | {greedy:.0f} | {path} | {epsilon_greedy:.1f} | | |")
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
    parser.add_argument("--parts", nargs="+", choices=("dp", "cliff", "frozenlake"), default=["dp", "cliff", "frozenlake"])
    parser.add_argument("--save", action="store_true", help="append to benchmarks/results/acceptance/tabular.md")
    args = parser.parse_args()
    parts = {
        "dp": ("VI and PI against the exact solution of their final policy (gamma 0.99)", dp_agreement),
        "cliff": ("CliffWalking-v1: SARSA vs Q-learning (epsilon 0.1 unless stated)", lambda: cliff_walking(args.seeds)),
        "frozenlake": (f"FrozenLake-v1 (slippery 4x4): Q-learning greedy success over {args.episodes} episodes",
                       lambda: frozen_lake_q_learning(args.seeds, args.episodes)),
    }
    sections = [(parts[name][0], parts[name][1]()) for name in args.parts]
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
