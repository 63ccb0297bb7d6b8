"""Rollout workers: processes that act with a copy of the learner's policy in their own envs.

A worker rebuilds the learner's agent in its own process from an ``AgentSpec`` and runs an
``OnPolicyRunner`` on its own ``VecEnv``. Each ``sample(weights)`` loads the weights it is
sent, collects one rollout of ``num_steps x num_envs`` transitions exactly as the
single-machine runner does (same fields: obs, action, reward, terminated, done, final_value,
next_value and the extras of ``agent.act``, i.e. the behaviour policy's ``logp``), and returns
it with the episodes that finished, the observation statistics it gathered and the state of
its reward scaler (``normalize_reward``), which the pool keeps for checkpoints and
replacements.

``RolloutWorker`` is a plain class; ``pool.WorkerPool`` turns it into a Ray actor.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from policyopt.envs.vector import EnvLike, EnvSpaces
from policyopt.loops import OnPolicyRunner

if TYPE_CHECKING:
    from policyopt.agent import Agent


@dataclass(frozen=True)
class AgentSpec:
    """What a worker needs to rebuild the learner's agent: its class, env, config and spaces."""

    cls: type
    env: EnvLike
    config: Any
    spaces: EnvSpaces

    @classmethod
    def of(cls, agent: Agent, **config_changes: Any) -> AgentSpec:
        return cls(type(agent), agent.env, replace(agent.config, **config_changes), agent.spaces)

    def build(self, seed: int) -> Agent:
        return self.cls.rebuild(self.env, self.config, self.spaces, seed)


def worker_seed(seed: int, generation: int, index: int, restarts: int) -> int:
    """A distinct env/sampling seed for worker ``index`` after ``restarts`` replacements.

    ``generation`` (the global step when the pool started) keeps a resumed run from replaying
    the episodes of its first start.
    """
    return int(np.random.SeedSequence([seed, generation, index, restarts]).generate_state(1)[0])


def map_leaves(tree: Any, fn: Callable[[Any], Any]) -> Any:
    """``tree`` (nested dicts, lists and tuples) with ``fn`` applied to each of its leaves."""
    if isinstance(tree, dict):
        return type(tree)((k, map_leaves(v, fn)) for k, v in tree.items())
    if isinstance(tree, list | tuple):
        return type(tree)(map_leaves(v, fn) for v in tree)
    return fn(tree)


def to_numpy(tree: Any) -> Any:
    """``tree`` with each torch tensor as a NumPy array (on the CPU)."""
    return map_leaves(tree, lambda leaf: leaf.numpy(force=True) if isinstance(leaf, Tensor) else leaf)


def to_torch(tree: Any) -> Any:
    """``to_numpy`` undone. Arrays that Ray deserializes are read-only views of its buffers,
    so each becomes a tensor of its own (a copy)."""
    return map_leaves(tree, lambda leaf: torch.tensor(leaf) if isinstance(leaf, np.ndarray) else leaf)


class PicklesTensorsAsNumpy:
    """Crosses process boundaries with its tensors as NumPy arrays. Ray pickles a NumPy array
    as one raw buffer, but a torch tensor through ``torch.save``'s machinery: a 64x64
    actor-critic's ``state_dict`` took 1.3 ms to put in the object store and 0.8 ms to get back
    here, as arrays 0.7 and 0.1 ms. IMPALA's learner and actors spent a large part of their
    time on it: sending samples and weights as arrays took its CartPole preset from 4,600 to
    5,800 env steps/s on 2 cores (interleaved runs, seed 0)."""

    def __getstate__(self) -> dict[str, Any]:
        return to_numpy(vars(self))

    def __setstate__(self, state: dict[str, Any]) -> None:
        vars(self).update(to_torch(state))


@dataclass
class PolicyWeights(PicklesTensorsAsNumpy):
    """What acting needs from the learner: network parameters and observation statistics."""

    nets: dict[str, Tensor]
    obs_normalizer: dict[str, Tensor] | None

    @classmethod
    def of(cls, agent: Agent) -> PolicyWeights:
        """A copy of the agent's current weights (later updates do not change it)."""
        def copy(module: torch.nn.Module) -> dict[str, Tensor]:
            return {k: v.clone() for k, v in module.state_dict().items()}

        norm = agent.obs_normalizer
        return cls(copy(agent.nets), copy(norm) if norm is not None else None)

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for part in (self.nets, self.obs_normalizer or {}) for v in part.values())


@dataclass
class Sample(PicklesTensorsAsNumpy):
    """One rollout from a worker; ``index`` and ``version`` (the learner update whose weights acted) are set by the pool."""

    data: dict[str, Tensor]  # RolloutBuffer fields, time-major [num_steps, num_envs, ...]
    returns: list[float]
    lengths: list[int]
    obs_moments: tuple[Tensor, Tensor, Tensor] | None  # (mean, var, n) of the observations seen
    reward_scaler: dict[str, Tensor] | None = None  # the worker's RewardScaler state after the rollout
    index: int = -1
    version: int = -1
    num_steps: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_steps = int(self.data["reward"].numel())


class RolloutWorker:
    """A copy of the agent acting in its own vector env; run as a Ray actor by ``WorkerPool``."""

    def __init__(self, spec: AgentSpec, seed: int, store_next_obs: bool = False, reward_scaler: dict | None = None):
        torch.set_num_threads(1)  # one core per worker; the learner has its own
        self.agent = spec.build(seed)
        self.runner = OnPolicyRunner(self.agent, store_next_obs=store_next_obs)
        self.load_reward_scaler(reward_scaler)

    def pid(self) -> int:
        return os.getpid()

    def load_reward_scaler(self, state: dict[str, Tensor] | None) -> None:
        """Continue the reward statistics of the worker this one replaces (or of a checkpoint).
        The running discounted returns restart at 0: this worker's envs start new episodes."""
        scaler = self.runner.reward_scaler
        if state is not None and scaler is not None:
            scaler.load_state_dict(state)
            scaler.ret.zero_()

    @torch.no_grad()
    def sample(self, weights: PolicyWeights) -> Sample:
        agent = self.agent
        agent.nets.load_state_dict(weights.nets)
        if agent.obs_normalizer is not None:
            agent.obs_normalizer.load_state_dict(weights.obs_normalizer)
            before = {k: v.clone() for k, v in agent.obs_normalizer.rms.state_dict().items()}
        buffer = self.runner.collect()
        returns, lengths = self.runner.collector.stats.pop()
        moments = agent.obs_normalizer.rms.added_since(before) if agent.obs_normalizer is not None else None
        scaler = self.runner.reward_scaler
        scaler_state = {k: v.clone() for k, v in scaler.state_dict().items()} if scaler is not None else None
        return Sample(dict(buffer.data), returns, lengths, moments, scaler_state)
