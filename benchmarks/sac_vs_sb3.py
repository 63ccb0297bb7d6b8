"""policyopt SAC against stable-baselines3 SAC on the same task, in one process, one after the other.

    python benchmarks/sac_vs_sb3.py [--env Pendulum-v1] [--steps 20000] [--seeds 0] [--threads 1]

Needs the ``bench`` extra (``pip install -e ".[bench]"``); the package never imports SB3.
Both sides get the same hyperparameters (``HYPERPARAMETERS``: networks, learning rate, batch,
buffer, learning_starts, tau, gamma, train frequency, gradient steps, automatic entropy with
target -dim(A) starting from alpha = 1), the same seeds, the same number of env steps and the
same number of torch threads. Each training is timed alone (wall clock, env steps and updates
included); then 20 deterministic evaluation episodes (reset seeds seed + 10000 + i on both
sides). Prints a markdown table: library | steps/s | final eval return, and the steps/s ratio.

Known differences that remain: SB3 clamps the actor's log-std to [-20, 2], policyopt squashes
it smoothly into [-5, 2] (CleanRL's choice); SB3 uses its own replay buffer and env wrappers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policyopt.algos.sac import SAC  # noqa: E402

HYPERPARAMETERS = dict(
    learning_rate=1e-3,
    buffer_size=1_000_000,
    learning_starts=1000,
    batch_size=256,
    tau=0.005,
    gamma=0.99,
    train_frequency=1,
    gradient_steps=1,
    hidden_sizes=(256, 256),
)


def evaluate(predict, env_id: str, seed: int, episodes: int) -> float:
    """Mean undiscounted return of ``episodes`` deterministic episodes, reset seeds seed + 10000 + i."""
    env = gym.make(env_id)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + 10_000 + i)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(predict(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def run_policyopt(env_id: str, seed: int, steps: int, episodes: int) -> tuple[float, float]:
    agent = SAC(env_id, seed=seed, preset=False, autotune=True, alpha=1.0, **HYPERPARAMETERS)
    t0 = time.perf_counter()
    agent.learn(steps, progress=False)
    sps = steps / (time.perf_counter() - t0)
    return sps, evaluate(lambda obs: agent.predict(obs, deterministic=True), env_id, seed, episodes)


def run_sb3(env_id: str, seed: int, steps: int, episodes: int) -> tuple[float, float]:
    from stable_baselines3 import SAC as SB3SAC

    hp = HYPERPARAMETERS
    model = SB3SAC(
        "MlpPolicy",
        env_id,
        learning_rate=hp["learning_rate"],
        buffer_size=hp["buffer_size"],
        learning_starts=hp["learning_starts"],
        batch_size=hp["batch_size"],
        tau=hp["tau"],
        gamma=hp["gamma"],
        train_freq=hp["train_frequency"],
        gradient_steps=hp["gradient_steps"],
        ent_coef="auto_1.0",
        target_entropy="auto",
        policy_kwargs=dict(net_arch=list(hp["hidden_sizes"])),
        seed=seed,
        device="cpu",
        verbose=0,
    )
    t0 = time.perf_counter()
    model.learn(steps)
    sps = steps / (time.perf_counter() - t0)
    return sps, evaluate(lambda obs: model.predict(obs, deterministic=True)[0], env_id, seed, episodes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both libraries")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {"policyopt": [], "stable-baselines3": []}
    for seed in args.seeds:
        rows["policyopt"].append(run_policyopt(args.env, seed, args.steps, args.eval_episodes))
        rows["stable-baselines3"].append(run_sb3(args.env, seed, args.steps, args.eval_episodes))
    print(f"SAC on {args.env}, {args.steps} steps, seeds {args.seeds}, {args.threads} thread(s), torch {torch.__version__}")
    print(f"| library | steps/s | final eval return ({args.eval_episodes} episodes) |")
    print("| --- | --- | --- |")
    for library, results in rows.items():
        sps, returns = zip(*results)
        print(f"| {library} | {np.mean(sps):.1f} | {' / '.join(f'{r:.1f}' for r in returns)} |")
    ratio = np.mean([r[0] for r in rows["policyopt"]]) / np.mean([r[0] for r in rows["stable-baselines3"]])
    print(f"steps/s ratio policyopt / stable-baselines3: {ratio:.2f}")


if __name__ == "__main__":
    main()
