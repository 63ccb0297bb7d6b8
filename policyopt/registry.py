"""Algorithm names -> classes, imported lazily so ``policyopt list`` stays fast."""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from policyopt.config import ConfigError

# name -> (module, class, one-line description)
# The order is the order of `policyopt list`: tabular, on-policy, off-policy, distributed.
ALGORITHMS: dict[str, tuple[str, str, str]] = {
    # tabular
    "value-iteration": ("policyopt.algos.tabular.agents", "ValueIteration", "Value iteration on a known finite MDP (tabular DP)"),
    "policy-iteration": ("policyopt.algos.tabular.agents", "PolicyIteration", "Policy iteration, exact or modified (tabular DP)"),
    "mc-control": ("policyopt.algos.tabular.agents", "MCControl", "On-policy Monte-Carlo control, epsilon-greedy (tabular)"),
    "sarsa": ("policyopt.algos.tabular.agents", "SARSA", "SARSA, on-policy TD control (tabular)"),
    "expected-sarsa": ("policyopt.algos.tabular.agents", "ExpectedSARSA", "Expected SARSA, TD control (tabular)"),
    "q-learning": ("policyopt.algos.tabular.agents", "QLearning", "Q-learning, off-policy TD control (tabular)"),
    # on-policy
    "reinforce": ("policyopt.algos.reinforce", "REINFORCE", "Monte-Carlo policy gradient (reward-to-go, none/mean/value/optimal baseline)"),
    "a2c": ("policyopt.algos.a2c", "A2C", "Synchronous advantage actor-critic (n-step or GAE)"),
    "npg": ("policyopt.algos.npg", "NPG", "Natural Policy Gradient (conjugate gradient, fixed KL step)"),
    "trpo": ("policyopt.algos.trpo", "TRPO", "Trust Region Policy Optimization (natural gradient + KL line search)"),
    "acktr": ("policyopt.algos.acktr", "ACKTR", "Actor-Critic with Kronecker-Factored Trust Region (K-FAC A2C)"),
    "ppo": ("policyopt.algos.ppo", "PPO", "Proximal Policy Optimization (clip, adaptive/fixed KL, none)"),
    "ppg": ("policyopt.algos.ppg", "PPG", "Phasic Policy Gradient (PPO policy phase + auxiliary value/distillation phase)"),
    # off-policy
    "dqn": ("policyopt.algos.dqn", "DQN", "Deep Q-Network; Double DQN with --set double_q=true"),
    "ddpg": ("policyopt.algos.ddpg", "DDPG", "Deep Deterministic Policy Gradient"),
    "td3": ("policyopt.algos.td3", "TD3", "Twin Delayed DDPG (clipped double-Q, delayed updates, target smoothing)"),
    "sac": ("policyopt.algos.sac", "SAC", "Soft Actor-Critic (Box: squashed Gaussian; Discrete: Christodoulou 2019)"),
    # distributed
    "impala": ("policyopt.algos.impala", "IMPALA", "IMPALA: asynchronous actors on Ray, V-trace off-policy correction"),
}


class UnknownAlgorithm(ConfigError):
    pass


def names() -> list[str]:
    return list(ALGORITHMS)


def get_algorithm(name: str) -> Any:
    key = name.lower()
    if key not in ALGORITHMS:
        close = difflib.get_close_matches(key, names(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownAlgorithm(f"unknown algorithm {name!r}{hint} (see `policyopt list`)")
    module, cls, _ = ALGORITHMS[key]
    return getattr(importlib.import_module(module), cls)


def describe(name: str) -> str:
    return ALGORITHMS[name][2]
