"""Runners that sample through Ray rollout workers; ``loops.train`` drives them like the others.

- ``DistributedOnPolicyRunner``: synchronous. Every update, the learner publishes its weights,
  each of ``workers`` workers collects ``num_steps x num_envs / workers`` transitions with
  them, and the rollouts are joined along the env axis into the same ``RolloutBuffer`` the
  single-machine ``OnPolicyRunner`` fills. ``agent.update`` is unchanged.
- ``ImpalaRunner``: asynchronous (Espeholt et al., "IMPALA", ICML 2018, section 3). Each of
  ``workers`` actors keeps one rollout of ``num_steps x num_envs`` in flight; the learner
  takes them as they arrive, makes one update on each, and sends fresh weights to the worker
  that delivered. The other actors keep acting with older weights: that policy lag is what
  V-trace corrects, and it is logged as ``diag/policy_lag`` (updates between the weights that
  acted and the ones that learn).

Both expose ``collector.stats`` (the episodes the workers finished) for ``train``'s
``rollout/ep_return``, merge the workers' observation statistics into the learner's
normalizer, and log ``diag/worker_restarts``.

Resume restores everything on the learner (networks, optimizer, normalizer, counters, RNG,
restart counts). It does not restore the workers' env states or the rollouts in flight: the
workers start fresh episodes, so a resumed run continues but not bit-for-bit.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import torch

from policyopt.config import ConfigError
from policyopt.core.buffers import RolloutBuffer
from policyopt.distributed.pool import WorkerPool
from policyopt.distributed.worker import Sample
from policyopt.loops import EpisodeStats, timed_update
from policyopt.runtime import at_most_threads

if TYPE_CHECKING:
    from policyopt.agent import Agent


class RemoteCollector:
    """The learner's view of the workers' envs: the episodes they finished and the observations they saw."""

    def __init__(self, agent: Agent):
        self.agent = agent
        self.stats = EpisodeStats(0)

    def receive(self, sample: Sample) -> None:
        self.stats.extend(sample.returns, sample.lengths)
        if self.agent.obs_normalizer is not None and sample.obs_moments is not None:
            mean, var, n = (m.to(self.agent.device) for m in sample.obs_moments)
            self.agent.obs_normalizer.rms.combine(mean, var, n)

    def state_dict(self) -> dict[str, Any]:
        return self.stats.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.load_state_dict(state)


class WorkerRunner:
    """What both runners share: a ``WorkerPool``, a ``RemoteCollector``, their state, and ``close``."""

    def __init__(self, agent: Agent, envs_per_worker: int, *, store_next_obs: bool = False):
        self.agent = agent
        self.pool = WorkerPool(agent, agent.config.workers, envs_per_worker, store_next_obs=store_next_obs)
        self.collector = RemoteCollector(agent)

    def state_dict(self) -> dict[str, Any]:
        return {"pool": self.pool.state_dict(), "collector": self.collector.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pool.load_state_dict(state["pool"])
        self.collector.load_state_dict(state["collector"])

    def close(self) -> None:
        """Stop the worker processes (they also stop when the runner is garbage-collected)."""
        self.pool.close()


class DistributedOnPolicyRunner(WorkerRunner):
    """On-policy rollouts from ``workers`` Ray actors, then one ``agent.update(buffer)``."""

    def __init__(self, agent: Agent):
        cfg = agent.config
        if cfg.num_envs % cfg.workers:
            raise ConfigError(f"num_envs ({cfg.num_envs}) must be a multiple of workers ({cfg.workers})")
        super().__init__(agent, cfg.num_envs // cfg.workers)
        self.buffer = RolloutBuffer(cfg.num_steps, cfg.num_envs, agent.device)

    def collect(self) -> RolloutBuffer:
        self.pool.publish(self.agent)
        samples = self.pool.gather()
        for name in samples[0].data:
            self.buffer[name] = torch.cat([s.data[name] for s in samples], dim=1).to(self.agent.device)
        self.buffer.step = self.buffer.num_steps
        for sample in samples:
            self.collector.receive(sample)
            self.agent.global_step += sample.num_steps
        return self.buffer

    def iterate(self) -> dict[str, Any]:
        metrics = timed_update(self.agent, self.collect)
        metrics["diag/worker_restarts"] = self.pool.total_restarts
        return metrics


class ImpalaRunner(WorkerRunner):
    """IMPALA's learner: one ``agent.update(trajectory)`` per rollout, in order of arrival."""

    def __init__(self, agent: Agent):
        super().__init__(agent, agent.config.num_envs, store_next_obs=True)
        # The actors go on acting while the learner updates. Where they share its cores (a local
        # Ray instance), torch's intra-op threads in the learner would wait for cores the actors
        # hold: the CartPole preset on 2 cores trained at 7,700 env steps/s with 2 learner
        # threads, 10,600 with 1 (interleaved runs, seed 0).
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        local = agent.config.ray_address is None
        self.learner_threads = max(1, cores - self.pool.num_workers) if local else torch.get_num_threads()

    def iterate(self) -> dict[str, Any]:
        agent, pool = self.agent, self.pool
        if not pool.pending:  # first call: every worker starts acting with the current weights
            pool.pids()  # once all are up, so that one starting late does not leave the first rollouts to the others
            pool.publish(agent)
            for index in range(pool.num_workers):
                pool.submit(index)
        t0 = time.perf_counter()
        sample = pool.next_sample()
        t1 = time.perf_counter()
        self.collector.receive(sample)
        policy_lag = agent.num_updates - sample.version
        with at_most_threads(self.learner_threads):
            metrics = dict(agent.update({k: v.to(agent.device) for k, v in sample.data.items()}))
        agent.num_updates += 1
        agent.global_step += sample.num_steps
        pool.publish(agent)
        pool.submit(sample.index)
        metrics["diag/policy_lag"] = policy_lag
        metrics["diag/worker_restarts"] = pool.total_restarts
        metrics["time/wait_s"] = t1 - t0
        metrics["time/update_s"] = time.perf_counter() - t1
        return metrics
