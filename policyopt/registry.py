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
    # on-policy
    "ppo": ("policyopt.algos.ppo", "PPO", "Proximal Policy Optimization (clip, adaptive/fixed KL, none)"),
    # off-policy
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
