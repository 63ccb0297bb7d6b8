"""Scale-out on Ray: rollout worker actors, a pool that replaces dead ones, distributed runners.

Ray is an optional extra (``pip install 'policyopt[ray]'``). Nothing in policyopt imports it
at package import time or on the single-machine path: the functions here import it when
called, and say how to install it when it is missing.

- ``worker.RolloutWorker``: a Ray actor process with its own ``VecEnv`` and a copy of the
  learner's agent; it returns whole rollouts with the behaviour policy's log-probs.
- ``pool.WorkerPool``: starts the actors, sends them the weights (in each request, or once with
  ``ray.put`` when large), collects rollouts as they arrive (``ray.wait``) and replaces an
  actor that died.
- ``runners.DistributedOnPolicyRunner`` (PPO/A2C/TRPO/... with ``workers > 0``) and
  ``runners.ImpalaRunner`` (the asynchronous IMPALA learner), both driven by ``loops.train``.
"""

from __future__ import annotations

import os
from typing import Any

from policyopt.config import ConfigError

INSTALL_HINT = "pip install 'policyopt[ray]'"


def require_ray() -> Any:
    """The ``ray`` module, or a one-line ``ConfigError`` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"distributed training needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def connect(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Join the Ray instance at ``address``, or start a local one; nothing to do if Ray already runs here.

    A local instance declares at least ``num_cpus`` CPUs so that one actor per worker can be
    scheduled even when there are more workers than cores (the OS shares the cores).
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, num_cpus or 0), include_dashboard=False)
    return ray
