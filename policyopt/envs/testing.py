"""Tiny environments with known solutions, registered as ``policyopt/<Name>-v0``.

- ``Counter``: obs = [t / horizon], reward 1 every step, never terminates, truncated by a
  time limit of ``horizon`` steps. The true value of every state under any policy is
  ``1 / (1 - gamma)``: a learner that treats the time limit as termination learns values
  that shrink towards 1 near the limit instead.
- ``Bandit``: one step, Discrete(2) actions, reward 1 for action 1 and 0 for action 0;
  optimal return 1.
- ``Target``: one step, Box action in [-1, 1]^2, obs uniform in [-0.5, 0.5]^2,
  reward -||action - obs||^2; optimal return 0.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np


class Counter(gym.Env):
    def __init__(self, horizon: int = 10):
        self.horizon = horizon
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.t / self.horizon], dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 1.0, False, False, {}


class Bandit(gym.Env):
    def __init__(self):
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.ones(1, dtype=np.float32), {}

    def step(self, action):
        return np.ones(1, dtype=np.float32), float(action == 1), True, False, {}


class Target(gym.Env):
    def __init__(self):
        self.observation_space = gym.spaces.Box(-0.5, 0.5, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.obs = np.zeros(2, dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.obs = self.np_random.uniform(-0.5, 0.5, 2).astype(np.float32)
        return self.obs.copy(), {}

    def step(self, action):
        reward = -float(np.sum((np.asarray(action) - self.obs) ** 2))
        return self.obs.copy(), reward, True, False, {}


def register() -> None:
    specs = {
        "policyopt/Counter-v0": ("policyopt.envs.testing:Counter", 10),
        "policyopt/Bandit-v0": ("policyopt.envs.testing:Bandit", None),
        "policyopt/Target-v0": ("policyopt.envs.testing:Target", None),
    }
    for env_id, (entry, limit) in specs.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=entry, max_episode_steps=limit)
