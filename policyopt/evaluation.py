"""Evaluation episodes on a fresh environment, optionally recorded to video."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch


def evaluate_agent(
    agent: Any, episodes: int, *, seed: int | None = None, deterministic: bool = True, video_dir: str | Path | None = None
) -> list[float]:
    """Run ``episodes`` episodes with ``agent.act`` and return their undiscounted returns (see ``run_episodes``)."""

    @torch.no_grad()
    def policy(obs: Any) -> Any:
        obs_t = agent.normalize(torch.as_tensor(obs, device=agent.device).unsqueeze(0))
        action, _ = agent.act(obs_t, deterministic=deterministic)
        return agent.to_env(action)[0]

    return run_episodes(agent, policy, episodes, seed=seed, video_dir=video_dir)


def run_episodes(
    agent: Any, policy: Callable[[Any], Any], episodes: int, *, seed: int | None = None, video_dir: str | Path | None = None
) -> list[float]:
    """Undiscounted returns of ``episodes`` episodes of ``policy(obs) -> action`` on ``agent.make_eval_env()``.

    Episode ``i`` is seeded ``seed + i`` (``seed`` defaults to the agent's seed + 10_000, so
    evaluation never reuses a training episode's seed).
    """
    base_seed = agent.seed + 10_000 if seed is None else seed
    env = agent.make_eval_env(render_mode="rgb_array" if video_dir is not None else None)
    if video_dir is not None:
        env = gym.wrappers.RecordVideo(env, str(video_dir), episode_trigger=lambda _: True, disable_logger=True)
    returns = []
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=base_seed + i)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(policy(obs))
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return returns


def summarize(returns: list[float]) -> dict[str, float]:
    return {"mean_return": float(np.mean(returns)), "std_return": float(np.std(returns))}
