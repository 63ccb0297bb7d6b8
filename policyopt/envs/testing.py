"""Tiny environments with known solutions, registered as ``policyopt/<Name>-v0``.

- ``Counter``: obs = [t / horizon], reward 1 every step, never terminates, truncated by a
  time limit of ``horizon`` steps. The true value of every state under any policy is
  ``1 / (1 - gamma)``: a learner that treats the time limit as termination learns values
  that shrink towards 1 near the limit instead.
- ``Bandit``: one step, Discrete(2) actions, reward 1 for action 1 and 0 for action 0;
  optimal return 1.
- ``Target``: one step, Box action in [-1, 1]^2, obs uniform in [-0.5, 0.5]^2,
  reward -||action - obs||^2; optimal return 0.
- ``DictBandit``: ``Bandit`` with a Dict observation space (needs ``flatten_obs=true``).
- ``NaNObservation``, ``NaNReward``, ``HugeReward``: 20-step episodes, Discrete(2) actions, that
  turn faulty after ``at`` steps (counted across episodes): a NaN in the observation, a NaN
  reward, or a reward of 1e30 (finite, but its square overflows float32 in any value loss).
  They exercise the non-finite guards.
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


class DictBandit(Bandit):
    def __init__(self):
        super().__init__()
        self.observation_space = gym.spaces.Dict({"x": gym.spaces.Box(0.0, 1.0, (1,), np.float32)})

    def reset(self, *, seed=None, options=None):
        obs, info = super().reset(seed=seed)
        return {"x": obs}, info

    def step(self, action):
        obs, *rest = super().step(action)
        return {"x": obs}, *rest


class Faulty(gym.Env):
    def __init__(self, fault: str, at: int = 300):
        self.fault, self.at = fault, at
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.steps = 0  # over the env's lifetime, not per episode
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 2).astype(np.float32), {}

    def step(self, action):
        self.steps += 1
        self.t += 1
        obs = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        reward = 1.0
        if self.steps >= self.at:
            if self.fault == "observation":
                obs[0] = np.nan
            elif self.fault == "reward":
                reward = float("nan")
            else:
                reward = 1e30
        return obs, reward, self.t >= 20, False, {}


def register() -> None:
    specs = {
        "policyopt/Counter-v0": ("Counter", 10, {}),
        "policyopt/Bandit-v0": ("Bandit", None, {}),
        "policyopt/DictBandit-v0": ("DictBandit", None, {}),
        "policyopt/Target-v0": ("Target", None, {}),
        "policyopt/NaNObservation-v0": ("Faulty", None, {"fault": "observation"}),
        "policyopt/NaNReward-v0": ("Faulty", None, {"fault": "reward"}),
        "policyopt/HugeReward-v0": ("Faulty", None, {"fault": "huge_reward"}),
    }
    for env_id, (name, limit, kwargs) in specs.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=f"policyopt.envs.testing:{name}", max_episode_steps=limit, kwargs=kwargs)
