"""policyopt: the policy-optimization family tree of reinforcement learning.

    from policyopt import PPO
    agent = PPO("CartPole-v1", seed=0)
    agent.learn(100_000)
    agent.save("ppo_cartpole.pt")
    action = PPO.load("ppo_cartpole.pt").predict(obs)
"""

from __future__ import annotations

import importlib
from typing import Any

from policyopt import mkl_dispatch

mkl_dispatch.enable()  # before anything imports torch; see policyopt/mkl_dispatch.py

from policyopt import envs as _envs  # noqa: E402, F401  (registers the policyopt/* test envs)

mkl_dispatch.resolve_vml()  # before torch's threads first call MKL's vector math; see resolve_vml

__version__ = "0.1.0"

_EXPORTS = {
    "ValueIteration": "policyopt.algos.tabular.agents",
    "PolicyIteration": "policyopt.algos.tabular.agents",
    "MCControl": "policyopt.algos.tabular.agents",
    "SARSA": "policyopt.algos.tabular.agents",
    "ExpectedSARSA": "policyopt.algos.tabular.agents",
    "QLearning": "policyopt.algos.tabular.agents",
    "FiniteMDP": "policyopt.algos.tabular.mdp",
    "MDPEnv": "policyopt.algos.tabular.mdp",
    "REINFORCE": "policyopt.algos.reinforce",
    "A2C": "policyopt.algos.a2c",
    "NPG": "policyopt.algos.npg",
    "TRPO": "policyopt.algos.trpo",
    "ACKTR": "policyopt.algos.acktr",
    "PPO": "policyopt.algos.ppo",
    "PPG": "policyopt.algos.ppg",
    "DQN": "policyopt.algos.dqn",
    "DDPG": "policyopt.algos.ddpg",
    "TD3": "policyopt.algos.td3",
    "SAC": "policyopt.algos.sac",
    "IMPALA": "policyopt.algos.impala",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'policyopt' has no attribute {name!r}")


__all__ = list(_EXPORTS)
