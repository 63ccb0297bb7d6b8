"""Training loops: collect -> update -> log -> checkpoint.

Two runners drive every deep algorithm:

- ``OnPolicyRunner``: fill a ``RolloutBuffer`` of ``num_steps x num_envs`` transitions with
  the current policy, compute ``next_value`` (bootstrapping truncated episodes from their
  real final observation), and hand the buffer to ``agent.update``.
- ``OffPolicyRunner``: step every env once per iteration into a ``ReplayBuffer`` (uniform
  random actions before ``learning_starts``), then run ``gradient_steps`` updates on sampled
  batches every ``train_frequency`` iterations.

With ``workers > 0`` an on-policy agent samples through Ray rollout workers instead
(``policyopt.distributed``); an algorithm with a loop of its own (IMPALA) brings its runner
through ``agent.make_runner()``. ``train`` wraps any runner with the logger, the progress bar,
periodic checkpoints, optional periodic evaluation that keeps the best policy (``PeriodicEval``),
SIGINT/SIGTERM handling (a final checkpoint, then ``TrainingInterrupted``) and non-finite guards.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import platform
import signal
import threading
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from policyopt import checkpoint, mkl_dispatch
from policyopt.agent import set_rng_state
from policyopt.config import ConfigError, to_dict
from policyopt.core.buffers import ReplayBuffer, RolloutBuffer, array_to_tensor
from policyopt.core.distributions import Categorical
from policyopt.core.normalize import RewardScaler
from policyopt.core.returns import next_values_from
from policyopt.envs.vector import Step, VecEnv, make_vec_env
from policyopt.evaluation import critic_bias
from policyopt.graphs import GraphedCall
from policyopt.logging import Logger, ProgressBar
from policyopt.runtime import flush_denormals, tune_malloc

if TYPE_CHECKING:
    from policyopt.agent import Agent


class NonFiniteError(RuntimeError):
    """Training produced or received NaN/Inf; the message names the step and the quantity."""


class TrainingInterrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; a checkpoint was written before this was raised."""

    def __init__(self, signum: int, path: Path | None):
        self.signum = signum
        self.path = path
        where = f"; checkpoint saved to {path}" if path else ""
        super().__init__(f"interrupted by {signal.Signals(signum).name}{where}")


class EpisodeStats:
    """Undiscounted return and length of the running episode of each env.

    ``record`` keeps each step's arrays and ``flush`` (``pop``, ``state_dict``) adds them up:
    the same sums in the same order, but in one loop instead of between env steps, where the
    NumPy calls ran with the interpreter's code evicted from the CPU's caches (CleanRL's PPO
    config: ~9 us a step then, ~1.1 ms of a 128-step rollout)."""

    def __init__(self, num_envs: int):
        self.ret = np.zeros(num_envs, dtype=np.float64)
        self.len = np.zeros(num_envs, dtype=np.int64)
        self.finished_returns: list[float] = []
        self.finished_lengths: list[int] = []
        self.pending: list[tuple[Any, Any]] = []  # (reward, done) per step, not yet added up

    def record(self, reward: np.ndarray, done: np.ndarray | None) -> None:
        """One step's rewards; ``done=None``: no episode ended at this step. The arrays are kept
        until ``flush``: the caller must not write to them."""
        self.pending.append((reward, done))

    def flush(self) -> None:
        """Add the recorded steps to the running episodes; the ones that ended to the lists."""
        ret, length = self.ret, self.len
        for reward, done in self.pending:
            ret += reward
            length += 1
            if done is not None and done.any():
                self.finished_returns += ret[done].tolist()
                self.finished_lengths += length[done].tolist()
                ret[done] = 0.0
                length[done] = 0
        self.pending = []

    def extend(self, returns: list[float], lengths: list[int]) -> None:
        """Add episodes that finished elsewhere (in a rollout worker)."""
        self.finished_returns += returns
        self.finished_lengths += lengths

    def pop(self) -> tuple[list[float], list[int]]:
        self.flush()
        out = (self.finished_returns, self.finished_lengths)
        self.finished_returns, self.finished_lengths = [], []
        return out

    def state_dict(self) -> dict[str, Any]:
        self.flush()
        return {"ret": self.ret.tolist(), "len": self.len.tolist(), "finished": [self.finished_returns, self.finished_lengths]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ret = np.array(state["ret"], dtype=np.float64)
        self.len = np.array(state["len"], dtype=np.int64)
        self.finished_returns, self.finished_lengths = (list(x) for x in state["finished"])
        self.pending = []


class TorchEpisodeStats(EpisodeStats):
    """``EpisodeStats`` for a ``TorchVecEnv``: running sums stay on the env's device and the
    finished episodes are read out once per ``pop`` (one host sync per rollout, not per step)."""

    def __init__(self, num_envs: int, device: torch.device):
        super().__init__(num_envs)
        self.ret = torch.zeros(num_envs, dtype=torch.float64, device=device)
        self.len = torch.zeros(num_envs, dtype=torch.int64, device=device)
        self.pending: list[tuple[Tensor, Tensor, Tensor]] = []  # (done, return, length) per step

    def record(self, reward: Tensor, done: Tensor) -> None:
        self.ret, self.len = self.ret + reward, self.len + 1  # new tensors: kept in pending as they are
        self.pending.append((done, self.ret, self.len))
        self.ret, self.len = self.ret.masked_fill(done, 0.0), self.len.masked_fill(done, 0)

    def flush(self) -> None:
        """The episodes recorded in ``pending`` that finished, read into the lists (one host sync)."""
        if self.pending:
            done, ret, length = (torch.stack(x) for x in zip(*self.pending))
            self.finished_returns += ret[done].tolist()
            self.finished_lengths += length[done].tolist()
            self.pending = []

    def load_state_dict(self, state: dict[str, Any]) -> None:
        device = self.ret.device
        super().load_state_dict(state)
        self.ret = torch.tensor(state["ret"], dtype=torch.float64, device=device)
        self.len = torch.tensor(state["len"], dtype=torch.int64, device=device)


class Collector:
    """Owns the vector env of a training run: the current observation and episode statistics.

    ``acting()``: the mode of a rollout's steps. ``torch.inference_mode``, where ops skip
    autograd's dispatch entirely (no_grad still passes through it): ~0.8 ms less of a 128-step
    rollout of CleanRL's PPO config here, the policy's ops and the envs' Python alike. The
    tensors made there may not be saved for backward nor written outside the mode: the
    runner stacks each step's tensors into the buffer after the loop (new, ordinary tensors).
    """

    acting = torch.inference_mode

    def __init__(self, agent: Agent):
        self.agent = agent
        self.envs = self.make_envs()
        self.raw_obs = self.envs.reset()
        self.stats = self.make_stats()
        self.tensor = array_to_tensor(agent.device)  # the envs' NumPy arrays as tensors on the agent's device

    def make_envs(self) -> VecEnv:
        cfg, agent = self.agent.config, self.agent
        return make_vec_env(
            agent.env, cfg.num_envs, agent.seed, backend=cfg.env_backend, asynchronous=cfg.async_envs, flatten_obs=cfg.flatten_obs
        )

    def make_stats(self) -> EpisodeStats:
        return EpisodeStats(self.agent.config.num_envs)

    def env_action(self, action: Tensor) -> np.ndarray:
        """The policy's action as the envs take it (``Agent.to_env``)."""
        return self.agent.to_env(action)

    def step(self, env_action: np.ndarray) -> Step:
        """One step of every env; non-finite observations or rewards stop training."""
        step = self.envs.step(env_action)
        if not (_finite(step.obs) and (not step.ended or _finite(step.final_obs))):
            raise NonFiniteError(f"non-finite observation from the env at step {self.agent.global_step}")
        if not _finite(step.reward):
            raise NonFiniteError(f"non-finite reward from the env at step {self.agent.global_step}")
        self.stats.record(step.reward, step.done if step.ended else None)
        self.raw_obs = step.obs
        return step

    def state_dict(self) -> dict[str, Any]:
        return {"envs": self.envs.snapshot, "obs": torch.from_numpy(self.raw_obs.copy()), "stats": self.stats.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.load_state_dict(state["stats"])
        if any(s is None for s in state["envs"]):
            warnings.warn(
                "this env's state cannot be saved (e.g. Box2D); the resumed run starts fresh episodes, "
                "so it continues from the checkpoint but not bit-for-bit",
                stacklevel=2,
            )
            self.raw_obs = self.envs.reset(seed=self.agent.seed + self.agent.global_step)
            self.stats = EpisodeStats(self.envs.num_envs)
            return
        self.envs.snapshot = state["envs"]
        self.raw_obs = state["obs"].numpy().copy()

    def close(self) -> None:
        self.envs.close()


class TorchCollector(Collector):
    """``Collector`` over a batched ``TorchVecEnv`` on the agent's device (``env_backend=torch``):
    actions, observations and rewards stay tensors there, no step goes through the host."""

    # no inference mode: the envs' state tensors, made in a rollout, are written in place outside
    # one (CUDA graph replays, snapshots), which inference tensors do not allow
    acting = contextlib.nullcontext

    def __init__(self, agent: Agent):
        super().__init__(agent)
        self.tensor = torch.as_tensor  # the envs' arrays are tensors on the device already
        if not agent.discrete:
            space = agent.action_space
            self.low = torch.as_tensor(space.low, device=agent.device)
            self.high = torch.as_tensor(space.high, device=agent.device)

    def make_envs(self) -> Any:
        from policyopt.envs.torch_envs import make_torch_vec_env

        agent = self.agent
        return make_torch_vec_env(agent.env_id, agent.config.num_envs, agent.seed, device=agent.device)

    def make_stats(self) -> TorchEpisodeStats:
        return TorchEpisodeStats(self.agent.config.num_envs, self.agent.device)

    def env_action(self, action: Tensor) -> Tensor:
        """Integers, or floats clipped to the Box bounds, as tensors on the device."""
        return action if self.agent.discrete else torch.clamp(action, self.low, self.high)

    def step(self, env_action: Tensor) -> Step:
        """No finiteness check per step (it would sync the device): the dynamics are ours."""
        step = self.envs.step(env_action)
        self.stats.record(step.reward, step.done)
        self.raw_obs = step.obs
        return step

    def state_dict(self) -> dict[str, Any]:
        return {"envs": self.envs.snapshot, "obs": self.raw_obs.cpu(), "stats": self.stats.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.load_state_dict(state["stats"])
        self.envs.snapshot = state["envs"]
        self.raw_obs = state["obs"].to(self.agent.device)


def _finite(x: np.ndarray) -> bool:
    """``np.isfinite(x).all()``, by a sum first: a NaN or infinity makes it non-finite, so a finite
    sum settles it in one reduction (a sum that overflows is checked element by element)."""
    return math.isfinite(np.add.reduce(x, None)) or bool(np.isfinite(x).all())


def make_collector(agent: Agent) -> Collector:
    if agent.config.env_backend == "torch":
        return TorchCollector(agent)
    return Collector(agent)


def timed_update(agent: Agent, collect: Any) -> dict[str, Any]:
    """``collect()`` a rollout buffer, then one ``agent.update`` on it; the metrics with both timings."""
    t0 = time.perf_counter()
    buffer = collect()
    t1 = time.perf_counter()
    metrics = dict(agent.update(buffer))
    agent.num_updates += 1
    metrics["time/rollout_s"] = t1 - t0
    metrics["time/update_s"] = time.perf_counter() - t1
    return metrics


class OnPolicyRunner:
    """Rollout of ``num_steps`` per env, then one ``agent.update(buffer)``.

    ``store_next_obs`` adds the field ``next_obs``: the real ``s_{t+1}`` of every step (the final
    observation where an episode ended), for a learner that recomputes values with newer
    parameters than the ones that acted (IMPALA).
    """

    def __init__(self, agent: Agent, *, store_next_obs: bool = False):
        cfg = agent.config
        self.agent = agent
        self.store_next_obs = store_next_obs
        self.collector = make_collector(agent)
        self.buffer = RolloutBuffer(cfg.num_steps, cfg.num_envs, agent.device)
        self.reward_scaler = (
            RewardScaler(cfg.num_envs, cfg.gamma).to(agent.device) if getattr(cfg, "normalize_reward", False) else None
        )
        self.obs: Tensor | None = None  # normalized current observation, set by the first collect()
        self._zeros: Tensor | None = None  # the final values of a step where no episode was truncated
        # V(s_t) of a rollout in one batch at its end (``batch_values``), where the agent can act
        # without it (``sample``) and the batch gives the critic's per-step values bit for bit:
        # None until the first rollout has told (kernels round by shape, not by value)
        self.can_sample = callable(getattr(agent, "sample", None))
        self.batch_values: bool | None = None if self.can_sample else False

    @torch.no_grad()
    def collect(self) -> RolloutBuffer:
        agent, buf, tensor = self.agent, self.buffer, self.collector.tensor
        buf.reset()
        agent.begin_rollout(buf.num_envs)
        if self.obs is None:  # first rollout: the reset observation enters the normalizer once
            self.obs = agent.normalize(tensor(self.collector.raw_obs), update=True)
        obs = self.obs
        # the loop's calls looked up once (each lookup and call costs more between env steps,
        # whose Python evicts the interpreter's caches, than in a loop of its own)
        collector, scaler, add = self.collector, self.reward_scaler, buf.add
        env_action, env_step = collector.env_action, collector.step
        normalize = agent.normalize if agent.obs_normalizer is not None else None
        device_envs = isinstance(collector, TorchCollector)  # their final values at the rollout's end
        # the agent acts by ``sample`` where the values come in one batch, and on host envs wherever
        # it draws the rollout's noise at once (a Categorical policy: ``SampleStep`` computes its
        # logits with NumPy there), then with V(s_t) per step; by ``act`` elsewhere
        noise = None
        if self.batch_values or (self.can_sample and not device_envs):
            noise = agent.rollout_noise(buf.num_steps, buf.num_envs)
        if noise is not None:  # a step's draws: NumPy rows for host envs (``Categorical.sample``), tensors to record
            noise = noise.unbind(0) if device_envs else list(noise.numpy())
        sampling = self.batch_values or noise is not None
        act = agent.sample if sampling else agent.act
        step_values = agent.value if sampling and not self.batch_values else None
        with collector.acting():
            for t in range(buf.num_steps):
                action, extras = act(obs) if noise is None else act(obs, noise[t])
                if step_values is not None:
                    extras["value"] = step_values(obs)
                step = env_step(env_action(action))
                reward, done = step.reward, step.done  # NumPy arrays (tensors from device envs), stacked by buf
                if scaler is not None:
                    reward = scaler(tensor(reward), tensor(done))
                if device_envs:
                    extras["final_obs"], extras["truncated"] = agent.normalize(step.final_obs), step.truncated
                else:
                    extras["final_value"] = self.truncation_values(step)
                next_obs = tensor(step.obs) if normalize is None else normalize(tensor(step.obs), update=True)
                if self.store_next_obs:
                    extras["next_obs"] = agent.normalize(tensor(step.final_obs))
                add(obs=obs, action=action, reward=reward, terminated=step.terminated, done=done, **extras)
                obs = next_obs
        self.obs = obs
        agent.global_step += buf.num_steps * buf.num_envs
        if "logits" in buf:  # a Categorical ``sample``'s logits of every step: log pi(a_t|s_t) at once
            buf["logp"] = Categorical(buf["logits"]).log_prob(buf["action"])
        if "final_obs" in buf:
            values = self.batch_value(buf, "final_obs")
            buf["final_value"] = torch.where(buf["truncated"], values, torch.zeros_like(values))
        last_value = self.rollout_values(buf, obs)
        buf["next_value"] = next_values_from(buf["value"], last_value, buf["done"], buf["final_value"])
        return buf

    def rollout_values(self, buf: RolloutBuffer, obs: Tensor) -> Tensor:
        """V(s_T) of the observation after the rollout; with ``batch_values``, also V(s_t) of every
        step, into ``buf["value"]``, from one batch. A rollout that recorded its values per step
        while ``batch_values`` is undecided decides it: True where the batch gave those values
        bit for bit (8 CartPole envs here; not 2)."""
        last_value = self.agent.value(obs)
        if self.batch_values is False:
            return last_value
        values = self.batch_value(buf, "obs")
        if self.batch_values:
            buf["value"] = values
        else:
            self.batch_values = "value" in buf and torch.equal(values, buf["value"])
        return last_value

    def batch_value(self, buf: RolloutBuffer, field: str) -> Tensor:
        """V of every step's observation in ``buf[field]`` (``[T, N, ...]``), as one batch: ``[T, N]``."""
        return self.agent.value(buf[field].flatten(0, 1)).view(buf.num_steps, buf.num_envs)

    def truncation_values(self, step: Step) -> Tensor:
        """V(final_obs) where the time limit cut an episode (bootstrapped there), 0 elsewhere, for
        a step of host envs. (Device envs keep each step's final observations and evaluate them
        all, without a sync, at the rollout's end: one batch instead of ~10 ops a step.)"""
        agent = self.agent
        if not (step.ended and step.truncated.any()):
            if self._zeros is None or self._zeros.shape[0] != len(step.reward):  # (Tensor.__len__ is slower)
                self._zeros = torch.zeros(len(step.reward), device=agent.device)
            return self._zeros  # read only: the buffer copies it when it stacks the rollout
        final_value = torch.zeros(len(step.reward), device=agent.device)
        idx = np.flatnonzero(step.truncated)
        final_value[idx] = agent.value(agent.normalize(self.collector.tensor(step.final_obs[idx])))
        return final_value

    def iterate(self) -> dict[str, Any]:
        return timed_update(self.agent, self.collect)

    def close(self) -> None:
        self.collector.close()

    def state_dict(self) -> dict[str, Any]:
        scaler = self.reward_scaler.state_dict() if self.reward_scaler is not None else None
        return {"collector": self.collector.state_dict(), "reward_scaler": scaler}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.collector.load_state_dict(state["collector"])
        if self.reward_scaler is not None:
            self.reward_scaler.load_state_dict(state["reward_scaler"])
        self.obs = self.agent.normalize(self.collector.tensor(self.collector.raw_obs))


class GraphedOnPolicyRunner(OnPolicyRunner):
    """``OnPolicyRunner`` for PPO on device envs (``env_backend=torch``, ``cuda_graph=true``): the
    whole iteration, the rollout and the update, is recorded once after two eager ones and
    replayed from then on (``graphs.GraphedCall``: a CUDA graph on a GPU, without Python between its
    kernels). Per iteration the host sets the update's learning rate and clip range before the
    replay (``PPO.prepare_update``) and reads the metrics and the finished episodes after it.
    """

    def __init__(self, agent: Agent):
        super().__init__(agent)
        self.graph = self._new_graph()

    def _new_graph(self) -> GraphedCall:
        """A ``GraphedCall`` of ``_iteration``, carrying the tensors that a rollout replaces."""
        collector = self.collector
        envs, stats = collector.envs, collector.stats
        carry = [(envs, "state"), (envs, "elapsed_steps"), (collector, "raw_obs"), (self, "obs"), (stats, "ret"), (stats, "len")]
        head = self.agent.policy.actor_head
        if hasattr(head, "weights"):  # gSDE's exploration matrices, drawn anew each rollout
            carry.append((head, "weights"))
        return GraphedCall(self._iteration, self.agent.device, carry, generators=[envs.generator])

    def _iteration(self) -> tuple[dict[str, Tensor | int], list[tuple[Tensor, Tensor, Tensor]]]:
        """What is recorded: a rollout and the update on it; returns the update's metrics and the
        rollout's episode records (``TorchEpisodeStats.pending``)."""
        buf = self.collect()
        stats = self.collector.stats
        pending, stats.pending = stats.pending, []
        return self.agent.update_tensors(buf), pending

    def iterate(self) -> dict[str, Any]:
        agent = self.agent
        start, t0 = agent.global_step, time.perf_counter()
        lr, clip = agent.prepare_update(start)
        out, pending = self.graph()
        agent.global_step = start + self.buffer.num_steps * self.buffer.num_envs  # collect() counts in Python: not in a replay
        agent.num_updates += 1
        self.collector.stats.pending = pending
        self.collector.stats.flush()  # read before the next replay writes over them
        metrics = agent.finish_update(out, lr, clip)
        metrics["time/iteration_s"] = time.perf_counter() - t0
        return metrics

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.graph = self._new_graph()  # the loaded state is in new tensors: record anew


class MetricWindow:
    """Means of metrics over the updates since the last log line (kept in checkpoints).

    An update's metrics are kept as they come, 0-d tensors as tensors (so updates never wait on a
    device), and summed ``FOLD`` at a time (one ``torch.stack`` and sum per metric) instead of
    with one tensor addition per metric per update: SAC's update has seven metrics, whose
    additions took about 40 us of its ~5 ms training step on Pendulum here, 18 us with this.
    ``FOLD`` stays small: 256 small tensors per metric, held across updates, pinned the heap
    between the update's freed activations, and SAC's peak RSS grew by 40 MB.
    """

    FOLD = 16

    def __init__(self):
        self.values: dict[str, list[Any]] = defaultdict(list)  # per metric: a partial sum, then the values since
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, metrics: dict[str, Any]) -> None:
        for k, v in metrics.items():
            values = self.values[k]
            values.append(v.detach() if isinstance(v, Tensor) and v.requires_grad else v)
            self.counts[k] += 1
            if len(values) > self.FOLD:
                values[:] = [_total(values)]

    def pop(self) -> dict[str, float]:
        out = {k: float(_total(values)) / self.counts[k] for k, values in self.values.items()}
        self.values.clear()
        self.counts.clear()
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"sums": {k: float(_total(values)) for k, values in self.values.items()}, "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.values = defaultdict(list, {k: [v] for k, v in state["sums"].items()})
        self.counts = defaultdict(int, state["counts"])


def _total(values: list[Any]) -> Any:
    """The sum of numbers and 0-d tensors: a tensor where any is one, else a float."""
    tensors = [v for v in values if isinstance(v, Tensor)]
    numbers = sum(float(v) for v in values if not isinstance(v, Tensor))
    return torch.stack(tensors).sum() + numbers if tensors else numbers


class OffPolicyRunner:
    """One step of every env per iteration, into replay; updates on sampled batches.

    Every ``bias_eval_interval`` steps (config, 0 = never) after ``learning_starts`` it also
    measures the critic's overestimation (``evaluation.critic_bias``); the result joins the
    next logged row of metrics.
    """

    def __init__(self, agent: Agent):
        cfg = agent.config
        self.agent = agent
        self.collector = Collector(agent)
        self.replay = ReplayBuffer(cfg.buffer_size, agent.device, seed=agent.seed)
        self.window = MetricWindow()
        self.iteration = 0
        self.log_every = max(1, getattr(cfg, "log_interval", 1000) // cfg.num_envs)
        self.update_s = 0.0
        self.bias_eval_interval = getattr(cfg, "bias_eval_interval", 0)
        self.pending: dict[str, float] = {}  # diagnostics waiting for the next log row

    def random_action(self) -> np.ndarray:
        space, n, rng = self.agent.action_space, self.agent.config.num_envs, self.agent.np_rng
        if self.agent.discrete:
            return rng.integers(0, space.n, size=n)
        return rng.uniform(space.low, space.high, size=(n, *space.shape)).astype(np.float32)

    def iterate(self) -> dict[str, Any] | None:
        agent, cfg = self.agent, self.agent.config
        raw_obs = self.collector.raw_obs
        obs = agent.normalize(self.collector.tensor(raw_obs), update=True)
        if agent.global_step < cfg.learning_starts:
            env_action = self.random_action()
        else:
            env_action = agent.to_env(agent.explore(obs))
        step = self.collector.step(env_action)
        self.replay.add(raw_obs, env_action, step.reward, step.final_obs, step.terminated, step.truncated)
        agent.global_step += cfg.num_envs
        self.iteration += 1
        if agent.global_step >= cfg.learning_starts and self.iteration % cfg.train_frequency == 0:
            t0 = time.perf_counter()
            for _ in range(cfg.gradient_steps):
                self.window.add(agent.update(self.replay.sample(cfg.batch_size)))
                agent.num_updates += 1
            self.update_s += time.perf_counter() - t0
        if self.bias_eval_due():
            seed = agent.seed + 20_000 + agent.global_step
            self.pending.update(critic_bias(agent, cfg.bias_eval_episodes, seed=seed))
        if self.iteration % self.log_every:
            return None
        metrics = self.window.pop()
        metrics.update(self.pending)
        self.pending = {}
        metrics["time/update_s"] = self.update_s
        self.update_s = 0.0
        return metrics

    def bias_eval_due(self) -> bool:
        """True on the iteration whose steps cross a multiple of ``bias_eval_interval``."""
        every, step = self.bias_eval_interval, self.agent.global_step
        if not every or step < self.agent.config.learning_starts:
            return False
        return step // every != (step - self.agent.config.num_envs) // every

    def close(self) -> None:
        self.collector.close()

    def state_dict(self) -> dict[str, Any]:
        return {
            "collector": self.collector.state_dict(),
            "replay": self.replay.state_dict(),
            "window": self.window.state_dict(),
            "iteration": self.iteration,
            "pending": dict(self.pending),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.collector.load_state_dict(state["collector"])
        self.replay.load_state_dict(state["replay"])
        self.window.load_state_dict(state["window"])
        self.iteration = int(state["iteration"])
        self.pending = dict(state["pending"])


RUNNERS = {"on_policy": OnPolicyRunner, "off_policy": OffPolicyRunner}


def make_runner(agent: Agent):
    """The agent's own runner if it has one, else Ray rollout workers when ``workers > 0``, else
    ``GraphedOnPolicyRunner`` for ``cuda_graph``, else ``RUNNERS[agent.loop]``."""
    own = getattr(agent, "make_runner", None)
    if own is not None:
        return own()
    if getattr(agent.config, "cuda_graph", False):
        return GraphedOnPolicyRunner(agent)
    if agent.config.env_backend == "torch" and agent.loop != "on_policy":
        raise ConfigError(f"{agent.name} cannot use env_backend=torch yet; only on-policy algorithms can")
    workers = getattr(agent.config, "workers", 0)
    if workers:
        if agent.loop != "on_policy":
            raise ConfigError(f"{agent.name} cannot sample through rollout workers (workers={workers}); only on-policy algorithms can")
        from policyopt.distributed.runners import DistributedOnPolicyRunner

        return DistributedOnPolicyRunner(agent)
    return RUNNERS[agent.loop](agent)


class PeriodicEval:
    """Greedy evaluation every ``every`` env steps, and at the end of the schedule, that keeps
    the best policy seen (what stable-baselines3's ``EvalCallback`` with ``best_model_save_path`` does).

    Every evaluation plays ``episodes`` deterministic episodes from the same start states (reset
    seeds ``agent.seed + 30_000 + i``: no training episode's and none of ``evaluate()``'s default
    ones), so successive means compare like with like; they are logged as ``eval/return`` and
    ``eval/return_std``. When the mean equals or beats the best so far, a copy of the agent's state
    becomes ``agent.best`` (``Agent.best_model()`` rebuilds it) and, with a run directory, is
    written to ``best_model.pt``. Among equal means the latest policy wins, which has trained on
    the most data, and the best model is the final one unless an earlier one did strictly better.
    Choosing the best of several evaluations biases its ``eval/return`` upward:
    report the best model by evaluating it again on other episodes (``evaluate()``'s default).
    """

    SEED_OFFSET = 30_000

    def __init__(self, agent: Agent, every: int, episodes: int, run_dir: Path | None):
        if every <= 0 or episodes <= 0:
            raise ConfigError(f"eval_every and eval_episodes must be > 0, got {every} and {episodes}")
        self.agent, self.every, self.episodes = agent, every, episodes
        self.path = run_dir / "best_model.pt" if run_dir is not None else None
        self.last_step: int | None = None
        self._schedule_next()

    def _schedule_next(self) -> None:
        self.next_step = (self.agent.global_step // self.every + 1) * self.every

    def due(self) -> bool:
        return self.agent.global_step >= self.next_step

    def run(self) -> dict[str, float]:
        agent = self.agent
        returns = agent.evaluate(self.episodes, seed=agent.seed + self.SEED_OFFSET)
        mean = float(np.mean(returns))
        self.last_step = agent.global_step
        self._schedule_next()
        if agent.best is None or mean >= agent.best["return"]:
            agent.best = {"step": agent.global_step, "return": mean, "state": copy.deepcopy(agent.state_dict())}
            if self.path is not None:
                checkpoint.save(self.path, {"agent": agent.best["state"], "best": {"step": agent.global_step, "return": mean}})
        return {"eval/return": mean, "eval/return_std": float(np.std(returns)), "eval/best_return": agent.best["return"]}

    def settings(self) -> dict[str, int]:
        """``train``'s keyword arguments that continue this evaluation (kept in checkpoints)."""
        return {"eval_every": self.every, "eval_episodes": self.episodes}

    @staticmethod
    def restore_best(agent: Agent, run_dir: Path) -> None:
        """On resume: ``agent.best`` read back from the run's ``best_model.pt``, if it has one."""
        path = run_dir / "best_model.pt"
        if path.exists():
            payload = checkpoint.load(path)
            agent.best = {**payload["best"], "state": payload["agent"]}


def training_payload(agent: Agent, evaluator: PeriodicEval | None = None) -> dict[str, Any]:
    """Everything needed to resume: the agent, its runner (envs, buffers, statistics) and the
    periodic evaluation's settings."""
    payload = {"agent": agent.state_dict(), "runner": agent.runner.state_dict()}
    if evaluator is not None:
        payload["eval"] = evaluator.settings()
    return payload


def check_finite(metrics: dict[str, Any], step: int) -> None:
    """Stop on a non-finite loss or gradient norm (other diagnostics may be NaN when undefined)."""
    for key, value in metrics.items():
        guarded = key.startswith("loss/") or key == "diag/grad_norm"
        if guarded and not math.isfinite(float(value)):
            raise NonFiniteError(f"non-finite {key} ({float(value)}) at step {step}; the last good checkpoint is kept")


class _SignalCatcher:
    """Turns SIGINT/SIGTERM into a flag the loop checks between iterations."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _SignalCatcher:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def write_run_info(agent: Agent, run_dir: Path) -> None:
    info = {
        "algo": agent.name,
        "env_id": agent.env_id,
        "seed": agent.seed,
        "total_steps": agent.schedule[1],
        "device": str(agent.device),
        "config": to_dict(agent.config),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        # the kernels set the float rounding of CPU runs (policyopt/mkl_dispatch.py)
        "mkl": {"kernels": mkl_dispatch.code_path(), "vendor_check_bypass": mkl_dispatch.STATUS},
    }
    (run_dir / "config.json").write_text(json.dumps(info, indent=2))


def train(
    agent: Agent,
    *,
    run_dir: str | Path | None = None,
    progress: bool = True,
    checkpoint_every: int | None = None,
    callback: Any = None,
    logger: Logger | None = None,
    eval_every: int = 0,
    eval_episodes: int = 10,
) -> None:
    """Run ``agent`` until ``agent.global_step`` reaches the end of ``agent.schedule``
    (``eval_every`` and ``eval_episodes``: ``PeriodicEval``; 0 = no periodic evaluation)."""
    tune_malloc()
    run_dir = Path(run_dir) if run_dir is not None else None
    if agent.runner is None:
        agent.runner = make_runner(agent)
    logger = logger or Logger(run_dir)
    ckpts = checkpoint.CheckpointDir(run_dir) if run_dir is not None else None
    if run_dir is not None:
        write_run_info(agent, run_dir)
    first, last = agent.schedule
    if checkpoint_every is None:
        checkpoint_every = max(1, (last - first) // 10)
    next_ckpt = agent.global_step + checkpoint_every
    evaluator = PeriodicEval(agent, eval_every, eval_episodes, run_dir) if eval_every else None
    bar = ProgressBar(last, start=agent.global_step, enabled=progress, description=f"{agent.name} {agent.env_id or ''}")
    t_start, step_start = time.perf_counter(), agent.global_step
    try:
        with _SignalCatcher() as signals, flush_denormals():
            while agent.global_step < last:
                if signals.signum is not None:
                    path = ckpts.save(agent.global_step, training_payload(agent, evaluator)) if ckpts else None
                    raise TrainingInterrupted(signals.signum, path)
                metrics = agent.runner.iterate()
                if metrics is None:
                    continue
                check_finite(metrics, agent.global_step)
                returns, lengths = agent.runner.collector.stats.pop()
                if returns:
                    metrics["rollout/ep_return"] = float(np.mean(returns))
                    metrics["rollout/ep_length"] = float(np.mean(lengths))
                    metrics["rollout/episodes"] = len(returns)
                metrics["time/sps"] = (agent.global_step - step_start) / max(time.perf_counter() - t_start, 1e-9)
                if evaluator is not None and evaluator.due():
                    metrics.update(evaluator.run())
                logger.log(agent.global_step, metrics)
                bar.update(agent.global_step, returns)
                if ckpts is not None and agent.global_step >= next_ckpt:
                    ckpts.save(agent.global_step, training_payload(agent, evaluator))
                    next_ckpt = agent.global_step + checkpoint_every
                if callback is not None and callback(agent, metrics) is False:
                    break
        if evaluator is not None and agent.global_step >= last and evaluator.last_step != agent.global_step:
            logger.log(agent.global_step, evaluator.run())  # the final policy competes too (not after a callback's stop)
        if ckpts is not None:
            ckpts.save(agent.global_step, training_payload(agent, evaluator))
            agent.save(run_dir / "model.pt")
            agent.save_artifacts(run_dir)
    finally:
        bar.close()
        logger.close()


def resume(run_dir: str | Path, total_steps: int | None = None, *, progress: bool = True, device: str = "cpu", env: Any = None) -> Agent:
    """Continue the run in ``run_dir`` from its newest checkpoint, exactly where it stopped.

    ``total_steps`` extends (or shortens) the run's end; by default the original end is kept.
    """
    from policyopt.registry import get_algorithm

    run_dir = Path(run_dir)
    latest = checkpoint.CheckpointDir(run_dir).latest()
    if latest is None:
        raise checkpoint.CheckpointError(f"no checkpoint found in {run_dir / 'checkpoints'}")
    payload = checkpoint.load(latest, map_location=device)
    cls = get_algorithm(payload["agent"]["algo"])
    agent = cls.from_state(payload["agent"], env=env, device=device)
    agent.runner = make_runner(agent)
    agent.runner.load_state_dict(payload["runner"])
    set_rng_state(agent.np_rng, payload["agent"]["rng"])  # building the runner's envs must not shift the RNGs
    if total_steps is not None:
        agent.schedule = (agent.schedule[0], int(total_steps))
    evaluation = payload.get("eval", {})
    if evaluation:
        PeriodicEval.restore_best(agent, run_dir)
    logger = Logger(run_dir)
    logger.resume(agent.global_step)
    try:
        train(agent, run_dir=run_dir, progress=progress, logger=logger, **evaluation)
    except BaseException:
        agent.close()  # the caller never gets this agent: release its envs and Ray workers here
        raise
    return agent
