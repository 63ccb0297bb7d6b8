"""Evaluation episodes on a fresh environment, optionally recorded to video, and the
overestimation diagnostic of off-policy critics."""

from __future__ import annotations

import math
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


def discounted_soft_returns(rewards: np.ndarray, bonuses: np.ndarray, gamma: float) -> np.ndarray:
    """Return-to-go of one episode, counting the bonus of every action after the first.

        G_t = r_t + gamma * (bonus_{t+1} + G_{t+1}),   G_{T-1} = r_{T-1}

    With ``bonus = -alpha * log pi(a|s)`` this is the soft action value of SAC (Haarnoja et
    al. 2018b, eq. 3); with ``bonus = 0`` the ordinary discounted return. ``[T] -> [T]``.
    """
    out = np.empty(len(rewards), dtype=np.float64)
    future = 0.0
    for t in reversed(range(len(rewards))):
        out[t] = rewards[t] + gamma * future
        future = bonuses[t] + out[t]
    return out


def _untruncated_env(agent: Any, extra_steps: int) -> gym.Env:
    """An eval env whose time limit (if it is a registered id with one) is ``extra_steps`` longer."""
    limit = gym.spec(agent.env_id).max_episode_steps if agent.env_id is not None else None
    if limit is None:
        return agent.make_eval_env()
    return agent.make_eval_env(max_episode_steps=limit + extra_steps)


@torch.no_grad()
def critic_bias(agent: Any, episodes: int, *, seed: int, tail_tolerance: float = 0.01) -> dict[str, float]:
    """The critic's overestimation bias, measured as in the TD3 paper.

    Fujimoto et al., "Addressing Function Approximation Error in Actor-Critic Methods"
    (ICML 2018), section 4.1, Fig. 1: run the current policy and compare the critic's estimate
    of every visited (s_t, a_t) with the true discounted return from there,

        q_bias = mean_t [ Q(s_t, a_t) - G_t ],   G_t from ``discounted_soft_returns``

    ``agent.critic_probe`` supplies the actions (of the policy the critic evaluates), the
    estimates and the entropy bonus of soft critics. Episodes ``i = 0 .. episodes - 1`` start
    from fresh states (reset seed ``seed + i``) and run in lockstep. The critic bootstraps
    through time limits, so it estimates the untruncated return: episodes of registered envs
    run ``ceil(log(tail_tolerance) / log(gamma))`` steps past the time limit, and only states
    whose episode terminated, or whose unobserved tail weighs at most ``tail_tolerance``,
    enter the means. Returns ``diag/q_estimate``, ``diag/q_true``, ``diag/q_bias`` (and
    ``diag/q1_estimate`` for twin critics); NaN where no state qualifies.
    """
    gamma = float(agent.config.gamma)
    extra = math.ceil(math.log(tail_tolerance) / math.log(gamma)) if gamma < 1.0 else 0
    envs = [_untruncated_env(agent, extra) for _ in range(episodes)]
    try:
        obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]).astype(np.float32)
        trace: list[dict[str, list]] = [{"reward": [], "bonus": [], "estimates": []} for _ in envs]
        terminated = np.zeros(episodes, dtype=bool)
        active = list(range(episodes))
        while active:
            obs_t = agent.normalize(torch.as_tensor(obs[active], device=agent.device))
            action, estimates, bonus = agent.critic_probe(obs_t)
            env_action = agent.to_env(action)
            columns = {k: v.cpu().numpy() for k, v in estimates.items()}
            bonus = bonus.cpu().numpy()
            still_active = []
            for j, i in enumerate(active):
                next_obs, reward, term, trunc, _ = envs[i].step(env_action[j])
                trace[i]["reward"].append(float(reward))
                trace[i]["bonus"].append(float(bonus[j]))
                trace[i]["estimates"].append({k: float(v[j]) for k, v in columns.items()})
                obs[i] = next_obs
                terminated[i] = term
                if not (term or trunc):
                    still_active.append(i)
            active = still_active
    finally:
        for env in envs:
            env.close()
    return _bias_summary(trace, terminated, gamma, tail_tolerance)


def _bias_summary(trace: list[dict[str, list]], terminated: np.ndarray, gamma: float, tail_tolerance: float) -> dict[str, float]:
    true_values: list[float] = []
    estimates: dict[str, list[float]] = {}
    for episode, ended in zip(trace, terminated):
        returns = discounted_soft_returns(np.array(episode["reward"]), np.array(episode["bonus"]), gamma)
        length = len(returns)
        for t in range(length):
            if ended or gamma ** (length - t) <= tail_tolerance:
                true_values.append(float(returns[t]))
                for key, value in episode["estimates"][t].items():
                    estimates.setdefault(key, []).append(value)
    if not true_values:
        return {"diag/q_estimate": math.nan, "diag/q_true": math.nan, "diag/q_bias": math.nan}
    q_true = float(np.mean(true_values))
    out = {f"diag/{key}": float(np.mean(values)) for key, values in estimates.items()}
    out["diag/q_true"] = q_true
    out["diag/q_bias"] = out["diag/q_estimate"] - q_true
    return out
