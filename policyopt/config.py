"""Typed configs: dataclasses, ``--set key=value`` parsing, validation, presets.

Every algorithm declares a ``Config`` dataclass whose field names follow the vocabulary of
CleanRL and stable-baselines3 (num_envs, num_steps, gamma, gae_lambda, clip_coef, ...).
Values arrive from Python keyword arguments, YAML files and ``--set`` strings; all pass
through ``build_config``, which rejects unknown keys (suggesting close matches), coerces
strings to the declared types, and checks ranges before any env is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config value or key that cannot be used; the message is one line, for the user."""


@dataclass
class EnvConfig:
    """Settings every algorithm shares: how its environments are built."""

    num_envs: int = 1
    async_envs: bool = False  # step envs in subprocesses (gymnasium AsyncVectorEnv)
    flatten_obs: bool = False  # flatten Dict/Tuple observation spaces
    normalize_obs: bool = False  # running mean/std observation normalization
    # gymnasium: Gymnasium envs stepped on the host; numpy: Gymnasium's NumPy-vectorized version
    # (vector_entry_point; CartPole-v1); envpool: EnvPool's C++ version (pip install envpool);
    # torch: the batched PyTorch version of a classic-control env (policyopt.envs.torch_envs)
    # stepped on the agent's device (on-policy)
    env_backend: str = field(default="gymnasium", metadata={"choices": ("gymnasium", "numpy", "envpool", "torch")})
    workers: int = 0  # Ray rollout worker processes; 0 samples in this process (on-policy algorithms)
    ray_address: str | None = None  # Ray instance to join; None starts a local one when workers > 0

    def check(self) -> list[str]:
        """Cross-field constraints of the algorithm; a list of one-line problems."""
        return []

    def env_problems(self) -> list[str]:
        """Constraints between the env settings, the same for every algorithm."""
        if self.async_envs and self.env_backend != "gymnasium":
            return [f"async_envs steps Gymnasium envs in subprocesses; env_backend={self.env_backend} cannot use it"]
        return []


def minibatch_problems(config: Any) -> list[str]:
    """An on-policy minibatch (``batch_size``) must fit in one rollout of ``num_envs * num_steps``."""
    rollout = config.num_envs * config.num_steps
    if config.batch_size > rollout:
        return [f"batch_size ({config.batch_size}) must be <= num_envs * num_steps ({rollout})"]
    return []


@dataclass
class OffPolicyConfig(EnvConfig):
    """What ``loops.OffPolicyRunner`` reads, shared by every replay-based algorithm.

    Units: ``buffer_size``, ``learning_starts``, ``log_interval`` and ``bias_eval_interval`` count
    env steps (summed over envs); ``train_frequency`` counts loop iterations (one step of every
    env); ``gradient_steps`` is the number of updates each time training happens.
    """

    buffer_size: int = 1_000_000
    learning_starts: int = 1000  # uniform random actions, no updates, before this many steps
    train_frequency: int = 1
    gradient_steps: int = 1
    batch_size: int = 256
    gamma: float = 0.99
    log_interval: int = 1000  # steps between rows of metrics.csv
    bias_eval_interval: int = 0  # steps between overestimation measurements (diag/q_bias); 0 = off
    bias_eval_episodes: int = 5
    # compute the losses' gradients through graphs recorded by runtime.record (CPU): the same bits as
    # the algorithm's code run op by op, with less overhead per op (SAC Pendulum: ~25% less time per step)
    record_update: bool = True

    def check(self) -> list[str]:
        if self.batch_size > self.buffer_size:
            return [f"batch_size ({self.batch_size}) must be <= buffer_size ({self.buffer_size})"]
        return []


def _between(low: float, high: float, low_open: bool, high_open: bool) -> Callable[[Any], bool]:
    def test(v: Any) -> bool:
        above = v > low if low_open else v >= low
        below = v < high if high_open else v <= high
        return above and below

    return test


# Range rules by field name; names are shared across algorithms, so one table serves all.
RANGES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "gamma": ("in (0, 1]", _between(0, 1, True, False)),
    "gae_lambda": ("in [0, 1]", _between(0, 1, False, False)),
    "tau": ("in (0, 1]", _between(0, 1, True, False)),
    "hidden_sizes": ("a list of layer widths >= 1", lambda v: all(width >= 1 for width in v)),
    "learning_rate": ("> 0", lambda v: v > 0),
    "critic_learning_rate": ("> 0", lambda v: v > 0),
    "clip_coef": ("> 0", lambda v: v > 0),
    "adam_eps": ("> 0", lambda v: v > 0),
    "max_grad_norm": ("> 0", lambda v: v > 0),
    "target_kl": ("> 0", lambda v: v > 0),
    "ent_coef": (">= 0", lambda v: v >= 0),
    "vf_coef": (">= 0", lambda v: v >= 0),
    "num_envs": (">= 1", lambda v: v >= 1),
    "workers": (">= 0", lambda v: v >= 0),
    "num_steps": (">= 1", lambda v: v >= 1),
    "batch_size": (">= 1", lambda v: v >= 1),
    "buffer_size": (">= 1", lambda v: v >= 1),
    "update_epochs": (">= 1", lambda v: v >= 1),
    "value_epochs": (">= 1", lambda v: v >= 1),
    "policy_epochs": (">= 1", lambda v: v >= 1),
    "aux_epochs": (">= 1", lambda v: v >= 1),
    "aux_batch_size": (">= 1", lambda v: v >= 1),
    "n_pi": (">= 1", lambda v: v >= 1),
    "beta_clone": (">= 0", lambda v: v >= 0),
    "optimizer_eps": ("> 0", lambda v: v > 0),
    "learning_starts": (">= 0", lambda v: v >= 0),
    "policy_frequency": (">= 1", lambda v: v >= 1),
    "target_network_frequency": (">= 1", lambda v: v >= 1),
    "train_frequency": (">= 1", lambda v: v >= 1),
    "gradient_steps": (">= 1", lambda v: v >= 1),
    "cg_max_steps": (">= 1", lambda v: v >= 1),
    "cg_damping": (">= 0", lambda v: v >= 0),
    "line_search_shrinking_factor": ("in (0, 1)", _between(0, 1, True, True)),
    "line_search_max_iter": (">= 1", lambda v: v >= 1),
    "n_critic_updates": (">= 1", lambda v: v >= 1),
    "kl_clip": ("> 0", lambda v: v > 0),
    "vf_kl_clip": ("> 0", lambda v: v > 0),
    "damping": (">= 0", lambda v: v >= 0),
    "stats_decay": ("in [0, 1)", _between(0, 1, False, True)),
    "momentum": ("in [0, 1)", _between(0, 1, False, True)),
    "vf_fisher_coef": (">= 0", lambda v: v >= 0),
    "log_interval": (">= 1", lambda v: v >= 1),
    "bias_eval_interval": (">= 0", lambda v: v >= 0),
    "bias_eval_episodes": (">= 1", lambda v: v >= 1),
    "exploration_fraction": ("in (0, 1]", _between(0, 1, True, False)),
    "start_e": ("in [0, 1]", _between(0, 1, False, False)),
    "end_e": ("in [0, 1]", _between(0, 1, False, False)),
    "exploration_noise": (">= 0", lambda v: v >= 0),
    "policy_noise": (">= 0", lambda v: v >= 0),
    "noise_clip": (">= 0", lambda v: v >= 0),
    "alpha": ("> 0", lambda v: v > 0),
    "target_entropy_scale": ("in (0, 1]", _between(0, 1, True, False)),
    "theta": ("> 0", lambda v: v > 0),
    "max_episode_steps": (">= 1", lambda v: v >= 1),
}


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _suggest(key: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(choices), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Convert ``value`` (a YAML value or a CLI string) to the annotated field type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if type(None) in options and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        inner = [t for t in options if t is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is tuple:
        if isinstance(value, str):
            text = value.strip().strip("()[]")
            value = [v for v in text.replace(",", " ").split()] if text else []
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} expects a list, got {value!r}")
        item = typing.get_args(annotation)[0]
        return tuple(_coerce(v, item, key) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{key} expects true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} expects an integer, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} expects an integer, got {value!r}") from None
        if not number.is_integer():
            raise ConfigError(f"{key} expects an integer, got {value!r}")
        return int(number)
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} expects a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} expects a number, got {value!r}") from None
    if annotation is str:
        return str(value)
    raise ConfigError(f"{key}: unsupported field type {annotation}")


def validate(config: Any) -> None:
    """Raise ``ConfigError`` naming the first out-of-range field or violated constraint."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name} must be a finite number, got {value!r}")
        rule = RANGES.get(f.name)
        if rule is not None and value is not None and not rule[1](value):
            raise ConfigError(f"{f.name} must be {rule[0]}, got {value!r}")
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{f.name} must be one of {', '.join(map(str, choices))}, got {value!r}{_suggest(str(value), choices)}")
    problems = [*(config.env_problems() if isinstance(config, EnvConfig) else []), *config.check()]
    if problems:
        raise ConfigError(problems[0])


def build_config(cls: type, *layers: Mapping[str, Any] | None) -> Any:
    """``cls`` defaults, then each mapping of overrides in order, coerced and validated."""
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if key not in hints:
                raise ConfigError(f"unknown config key {key!r} for {cls.__name__}{_suggest(key, hints)}")
            values[key] = _coerce(value, hints[key], key)
    config = cls(**values)
    validate(config)
    return config


def parse_set(pairs: Iterable[str]) -> dict[str, str]:
    """``["gamma=0.9", "hidden_sizes=64,64"]`` -> ``{"gamma": "0.9", ...}`` (coerced later)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of key: value")
    return data


def to_dict(config: Any) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def to_json(config: Any) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True)


@cache
def presets(algo: str) -> dict[str, dict[str, Any]]:
    """All tuned presets of ``algo``: env id -> config overrides."""
    try:
        text = resources.files("policyopt.presets").joinpath(f"{algo}.yaml").read_text()
    except FileNotFoundError:
        return {}
    return yaml.safe_load(text) or {}


def preset(algo: str, env_id: str) -> dict[str, Any]:
    """Tuned hyperparameters for ``algo`` on ``env_id`` (``policyopt/presets/<algo>.yaml``).

    The special key ``total_steps`` is the suggested training budget, not a config field.
    """
    return dict(presets(algo).get(env_id, {}))
