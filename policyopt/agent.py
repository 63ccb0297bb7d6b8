"""``Agent``: what every deep algorithm shares with its users, none of the learning itself.

An algorithm module (``policyopt/algos/<name>.py``) defines a ``Config`` dataclass, its pure
loss functions, and a subclass of ``Agent`` that fills in four methods:

- ``build()``: create networks (``self.nets``, an ``nn.ModuleDict``) and ``self.optimizers``.
- ``act(obs, deterministic) -> (action, extras)``: actions for a batch of normalized
  observations, with what the update will need later (``logp``, ``value``, ...).
- ``update(data) -> dict[str, float]``: one learning step on a rollout or a replay batch;
  the returned metrics are what gets logged.
- optionally ``value(obs)`` (on-policy bootstrapping) and ``extra_state``/``load_extra_state``
  for state that is not in a module or optimizer (e.g. an adaptive KL coefficient).
- optionally ``make_runner()``, for an algorithm with a training loop of its own (IMPALA's
  asynchronous learner); ``loops.train`` then drives that runner instead of the one ``loop`` names.

This class supplies the rest: config resolution (defaults, presets, overrides, validation),
environment spaces, seeding, ``learn``, ``predict``, ``evaluate``, ``save``/``load``.
Algorithms never subclass each other.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from policyopt import checkpoint
from policyopt.config import ConfigError, EnvConfig, build_config, preset, to_dict, to_json
from policyopt.core.backprop import FunctionalPolicy, NumpyActor, unsupported
from policyopt.core.distributions import Categorical, gumbel_argmax, gumbel_noise
from policyopt.core.nets import ACTIVATIONS, POLICIES, ActorCritic, CategoricalHead
from policyopt.core.normalize import ObsNormalizer
from policyopt.envs.torch_envs import check_torch_env
from policyopt.envs.vector import HOST_BACKENDS, EnvError, EnvLike, EnvSpaces, check_env_id, env_spaces, make_env
from policyopt.runtime import record


def resolve_config(cls: Any, env: EnvLike, config: Any, use_preset: bool, overrides: dict[str, Any]) -> tuple[Any, int | None]:
    """``cls.Config`` from defaults <- preset for ``env`` <- ``config`` <- ``overrides``, validated,
    and the preset's suggested budget (``total_steps``), for every algorithm's constructor."""
    env_id = env if isinstance(env, str) else None
    if env_id is not None:
        check_env_id(env_id)
    tuned = cls.preset_for(env_id) if use_preset else {}
    suggested_steps = tuned.pop("total_steps", None)
    if isinstance(config, cls.Config):
        config = to_dict(config)
    return build_config(cls.Config, tuned, config, overrides), suggested_steps


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(np_rng: np.random.Generator) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np_rng.bit_generator.state, "python": random.getstate()}


def set_rng_state(np_rng: np.random.Generator, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_rng.bit_generator.state = state["numpy"]
    random.setstate(state["python"])


class AgentBase:
    """What deep (``Agent``) and tabular (``TabularAgent``) agents share on top of their own
    ``state_dict``/``from_state``: training by ``loops.train`` (model-free tabular agents as deep
    ones; dynamic programming has a ``learn`` of its own), one-file checkpoints and the best
    model of a periodic evaluation (``learn(eval_every=...)`` keeps ``self.best``: step,
    return and state)."""

    best: dict[str, Any] | None
    suggested_steps: int | None
    global_step: int
    schedule: tuple[int, int]
    runner: Any

    def learn(
        self,
        total_steps: int | None = None,
        *,
        run_dir: str | Path | None = None,
        progress: bool = True,
        checkpoint_every: int | None = None,
        callback: Any = None,
        eval_every: int = 0,
        eval_episodes: int = 10,
    ) -> AgentBase:
        """Train for ``total_steps`` more environment steps (the preset's budget if omitted).

        ``callback(agent, metrics)`` runs after every logged row; returning False stops training.
        ``eval_every > 0`` evaluates the greedy policy on ``eval_episodes`` episodes every that many
        steps and at the end, logs ``eval/return``, and keeps the best policy seen
        (``best_model()``; ``best_model.pt`` in ``run_dir``), as ``loops.PeriodicEval`` describes.
        """
        from policyopt.loops import train

        steps = total_steps if total_steps is not None else self.suggested_steps
        if steps is None:
            raise ConfigError("learn() needs total_steps (this env has no preset budget)")
        if steps <= 0:
            raise ConfigError(f"total_steps must be > 0, got {steps}")
        self.schedule = (self.global_step, self.global_step + int(steps))
        train(
            self, run_dir=run_dir, progress=progress, checkpoint_every=checkpoint_every, callback=callback,
            eval_every=eval_every, eval_episodes=eval_episodes,
        )
        return self

    def close(self) -> None:
        """Release what training holds (envs, Ray rollout workers); a later ``learn`` starts afresh."""
        if self.runner is not None:
            self.runner.close()
            self.runner = None

    def save(self, path: str | Path) -> Path:
        """Write the agent (its ``state_dict``: networks or tables, optimizers, counters, config,
        RNG) to one checkpoint file."""
        path = Path(path)
        checkpoint.save(path, {"agent": self.state_dict()})
        return path

    def best_model(self) -> Any:
        """A new agent restored from the best periodic evaluation of ``learn(eval_every=...)``
        (networks, tables and normalizers as they were then); None if no evaluation has run."""
        if self.best is None:
            return None
        return type(self).from_state(self.best["state"], env=self.env, device=self.device)


class Agent(AgentBase):
    """Base of every deep RL algorithm; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    Config: ClassVar[type]
    loop: ClassVar[str] = "on_policy"  # or "off_policy"; picks the training loop in loops.py
    action_spaces: ClassVar[tuple[type, ...]] = (gym.spaces.Discrete, gym.spaces.Box)

    nets: nn.ModuleDict
    optimizers: dict[str, torch.optim.Optimizer]

    def __init__(
        self,
        env: EnvLike = "CartPole-v1",
        *,
        config: Any = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        preset: bool = True,
        **overrides: Any,
    ):
        cfg, self.suggested_steps = resolve_config(type(self), env, config, preset, overrides)
        self._setup(env, cfg, seed, device, env_spaces(env, flatten_obs=cfg.flatten_obs))

    @classmethod
    def preset_for(cls, env_id: str | None) -> dict[str, Any]:
        return preset(cls.name, env_id) if env_id else {}

    def _setup(self, env: EnvLike, config: Any, seed: int, device: str | torch.device, spaces: EnvSpaces) -> None:
        action_space = spaces.action
        if not isinstance(action_space, self.action_spaces):
            allowed = " or ".join(s.__name__ for s in self.action_spaces)
            raise EnvError(f"{self.name} needs a {allowed} action space; this env's is {action_space}")
        backend = getattr(config, "env_backend", "gymnasium")
        if backend == "torch":
            check_torch_env(env)
        elif backend in HOST_BACKENDS:
            HOST_BACKENDS[backend][0](env)
        self.env = env
        self.env_id = env if isinstance(env, str) else None
        self.config = config
        self.seed = int(seed)
        self.device = torch.device(device)
        self.spaces = spaces
        self.obs_space: gym.spaces.Box = spaces.obs
        self.action_space = action_space
        self.obs_dim = int(np.prod(spaces.obs.shape))
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        seed_everything(self.seed)
        self.np_rng = np.random.default_rng(self.seed)
        self.global_step = 0
        self.num_updates = 0
        self.schedule = (0, 0)  # (first, last) global step of the current learn() call
        self.obs_normalizer = ObsNormalizer(spaces.obs.shape).to(self.device) if config.normalize_obs else None
        self.optimizers = {}
        self.build()
        self.runner = None  # created by learn(); holds the envs and the training state
        self.best: dict[str, Any] | None = None  # best periodic evaluation: step, return, state (learn(eval_every=...))

    # --- what algorithms implement -------------------------------------------------------
    def build(self) -> None:
        raise NotImplementedError

    def act(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    record_exploration: ClassVar[bool] = False  # explore() may go through recorded(): act reads no changing Python value

    def explore(self, obs: Tensor) -> Tensor:
        """``act(obs)``'s action (not deterministic, no gradients), for the off-policy runner's steps.

        Where the algorithm sets ``record_exploration`` (its ``act`` reads only tensors and config
        values, as SAC's, TD3's and DDPG's do, unlike DQN's decaying epsilon), it goes through
        ``recorded`` with the config's ``record_update``: the same draws, the same bits, without
        Python between the actor's ops. SAC's training step on Pendulum was 2.6% faster so (one
        process, blocks of steps alternated)."""
        with torch.no_grad():
            if self.record_exploration and self.config.record_update:
                return self.recorded(self._exploring_action, obs)
            return self.act(obs)[0]

    def _exploring_action(self, obs: Tensor) -> Tensor:
        return self.act(obs)[0]

    def update(self, data: Any) -> dict[str, float]:
        raise NotImplementedError

    def value(self, obs: Tensor) -> Tensor:
        return torch.zeros(obs.shape[0], device=obs.device)

    def begin_rollout(self, num_envs: int) -> None:
        """Called by the on-policy runner before each rollout (gSDE draws its exploration noise here)."""

    def critic_probe(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """What the overestimation diagnostic (``evaluation.critic_bias``) asks a critic.

        Returns the action of the policy the critic evaluates, the critic's estimates of
        Q(s, action) (``q_estimate``: the value the algorithm's targets use; ``q1_estimate``
        too for twin critics), each ``[B]``, and the bonus per step that the value counts
        besides the reward, ``[B]`` (zero, or SAC's entropy bonus ``-alpha * log pi(a|s)``).
        """
        raise NotImplementedError(f"{self.name} has no action-value critic to probe")

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def save_artifacts(self, run_dir: Path) -> None:
        """Extra files a finished training run leaves beside ``model.pt`` (none by default)."""

    # --- shared helpers for algorithms ---------------------------------------------------
    @property
    def progress(self) -> float:
        """Fraction of the current ``learn`` call done, for schedules (LR annealing)."""
        first, last = self.schedule
        return 0.0 if last <= first else min(1.0, (self.global_step - first) / (last - first))

    def recorded(self, fn: Callable[..., Any], *inputs: Tensor) -> Any:
        """``fn(*inputs)``: with the config's ``record_update`` (the off-policy algorithms' loss and
        gradient computations), through ``runtime.record``'s graph of ``fn``: the same bits,
        without Python and autograd between the ops. A record keeps the config values ``fn`` read
        as constants, so it is made anew when the config or the input shapes change."""
        if not self.config.record_update:
            return fn(*inputs)
        records = self.__dict__.setdefault("_records", {})
        # the config's values as they are (numbers, strings, tuples): a cheaper check than their repr
        key = (tuple(vars(self.config).values()), *((t.shape, t.dtype, t.device) for t in inputs))
        if fn.__name__ not in records or records[fn.__name__][0] != key:
            records[fn.__name__] = (key, record(fn, inputs))
        return records[fn.__name__][1](*inputs)

    def normalize(self, obs: Tensor, update: bool = False) -> Tensor:
        if self.obs_normalizer is None:
            return obs
        if update:
            self.obs_normalizer.update(obs)
        return self.obs_normalizer(obs)

    def to_env(self, action: Tensor) -> np.ndarray:
        """Actions as the env takes them: integers, or floats clipped to the Box bounds."""
        out = action.numpy(force=True)  # detached, on the host
        if self.discrete:
            return out.astype(np.int64, copy=False)
        return np.clip(out, self.action_space.low, self.action_space.high).reshape(-1, *self.action_space.shape)

    # --- user API -------------------------------------------------------------------------
    def _obs_tensor(self, obs: Any) -> Tensor:
        arr = np.asarray(obs)
        if self.spaces.discrete_obs:
            arr = np.eye(self.obs_dim, dtype=np.float32)[arr.astype(np.int64)]
        arr = arr.astype(np.float32).reshape(-1, self.obs_dim)
        return self.normalize(torch.as_tensor(arr, device=self.device))

    @torch.no_grad()
    def predict(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        """Action(s) for raw env observation(s): one observation in, one action out; a batch in, a batch out."""
        single = np.shape(obs) == self.spaces.raw_obs_shape
        action, _ = self.act(self._obs_tensor(obs), deterministic=deterministic)
        out = self.to_env(action)
        return out[0] if single else out

    def evaluate(
        self, episodes: int = 10, *, seed: int | None = None, deterministic: bool = True, video_dir: str | Path | None = None
    ) -> list[float]:
        """Undiscounted returns of ``episodes`` episodes on a fresh env (seeded ``seed + 10_000`` by default)."""
        from policyopt.evaluation import evaluate_agent

        return evaluate_agent(self, episodes, seed=seed, deterministic=deterministic, video_dir=video_dir)

    def make_eval_env(self, render_mode: str | None = None, **kwargs: Any) -> gym.Env:
        """A fresh env; ``kwargs`` go to ``gym.make`` (e.g. ``max_episode_steps``) for registered ids."""
        return make_env(self.env, flatten_obs=self.config.flatten_obs, render_mode=render_mode, **kwargs)

    # --- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "algo": self.name,
            "env_id": self.env_id,
            "config": to_json(self.config),
            "spaces": json.dumps(self.spaces.to_dict()),
            "seed": self.seed,
            "nets": self.nets.state_dict(),
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "obs_normalizer": self.obs_normalizer.state_dict() if self.obs_normalizer is not None else None,
            "counters": {"global_step": self.global_step, "num_updates": self.num_updates, "schedule": list(self.schedule)},
            "rng": rng_state(self.np_rng),
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any], *, restore_rng: bool = True) -> None:
        self.nets.load_state_dict(state["nets"])
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
        if self.obs_normalizer is not None:
            self.obs_normalizer.load_state_dict(state["obs_normalizer"])
        counters = state["counters"]
        self.global_step = int(counters["global_step"])
        self.num_updates = int(counters["num_updates"])
        self.schedule = tuple(counters["schedule"])
        if restore_rng:
            set_rng_state(self.np_rng, state["rng"])
        self.load_extra_state(state["extra"])

    @classmethod
    def from_state(cls, state: dict[str, Any], *, env: EnvLike | None = None, device: str | torch.device = "cpu") -> Agent:
        if state.get("algo") != cls.name:
            raise checkpoint.CheckpointError(f"checkpoint holds a {state.get('algo')!r} agent, not {cls.name!r}")
        spaces = EnvSpaces.from_dict(json.loads(state["spaces"]))
        config = build_config(cls.Config, json.loads(state["config"]))
        agent = cls.rebuild(env or state["env_id"], config, spaces, state["seed"], device)
        agent.load_state_dict(state)
        return agent

    @classmethod
    def rebuild(cls, env: EnvLike, config: Any, spaces: EnvSpaces, seed: int, device: str | torch.device = "cpu") -> Agent:
        """A fresh agent from a ``Config`` object taken as is (no preset, no re-validation).

        Used to load checkpoints, and by rollout workers to build their copy of the learner's agent.
        """
        agent = cls.__new__(cls)
        agent.suggested_steps = None
        agent._setup(env, config, seed, device, spaces)
        return agent

    @classmethod
    def load(cls, path: str | Path, *, env: EnvLike | None = None, device: str | torch.device = "cpu") -> Agent:
        """Rebuild a saved agent; ``env`` is needed only when it was not a registered id."""
        payload = checkpoint.load(path, map_location=device)
        return cls.from_state(payload["agent"], env=env, device=device)


@dataclass
class ActorCriticConfig(EnvConfig):
    """The network fields every ``ActorCriticAgent`` config has (read by ``ActorCritic.from_config``)."""

    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = field(default="tanh", metadata={"choices": tuple(ACTIVATIONS)})
    policy: str = field(default="auto", metadata={"choices": POLICIES})
    log_std_init: float = 0.0
    ortho_init: bool = True


class SampleStep:
    """``(a, log pi(a|s), V(s))`` with ``a ~ pi(.|s)``, for ``ActorCriticAgent.act``; without
    ``V(s)`` for ``ActorCriticAgent.sample`` (``rollout=True``), the action drawn from the noise
    given after ``obs`` where there is some (``rollout_noise``), and a Categorical policy's
    logits ``z`` (``Categorical.raw``) in place of ``log pi(a|s)``.

    For the policies ``core.backprop`` covers, the networks run as ``backprop.FunctionalPolicy``:
    the same ops and bits without the modules' calls. (They ran as a ``runtime.trace`` before:
    as fast in a loop of calls alone, ~19 us for 8 CartPole envs here, but a rollout calls this
    between env steps, which evict the interpreter's code from the CPU's caches, and there the
    trace cost ~31 us a step more: a 128-step rollout of CleanRL's PPO config took 22.5 ms
    with it and 18.5 ms without.) A rollout call with NumPy noise (host envs) on a Categorical
    policy computes the logits with NumPy instead (``backprop.NumpyActor``: the same function,
    rounded by NumPy's kernels) and draws the action with ``gumbel_argmax``, as
    ``Categorical.sample`` does.
    """

    def __init__(self, policy: nn.Module, rollout: bool = False):
        self.policy, self.rollout = policy, rollout
        self.net = FunctionalPolicy(policy) if unsupported(policy) is None else None
        self.host = NumpyActor(policy) if rollout and NumpyActor.applies(policy) else None
        self.output = "logits" if isinstance(policy.actor_head, CategoricalHead) else "logp"  # what a rollout call gives second

    def __call__(self, obs: Tensor, *noise: Tensor | np.ndarray) -> tuple[Tensor, ...]:
        if self.host is not None and noise and isinstance(noise[0], np.ndarray):
            z = self.host.logits(obs.numpy())
            return gumbel_argmax(z, noise[0]), torch.from_numpy(z)
        net = self.net or self.policy
        if self.rollout:
            dist = net.dist(obs)
            action = dist.sample(*noise)
            return action, dist.raw if isinstance(dist, Categorical) else dist.log_prob(action)
        dist, value = net.dist_and_value(obs)
        action = dist.sample()
        return action, dist.log_prob(action), value


class ActorCriticAgent(Agent):
    """Base of the on-policy agents whose ``build()`` sets ``self.policy``, a
    ``core.nets.ActorCritic``: acting samples a ~ pi(.|s) (the mode when deterministic) and
    records log pi(a|s) and V(s) for the update (``sample``: without V(s), which a runner may
    evaluate for a whole rollout at once); ``value`` bootstraps from the critic."""

    policy: nn.Module

    def build_policy(self, **kwargs: Any) -> None:
        """``self.policy``, the config's ``ActorCritic`` (``kwargs``: more arguments of
        ``ActorCritic.from_config``) on the agent's device, and ``self.nets`` holding it."""
        self.policy = ActorCritic.from_config(self.obs_dim, self.action_space, self.config, **kwargs).to(self.device)
        self.nets = torch.nn.ModuleDict({"policy": self.policy})

    def act(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        if deterministic:
            dist, value = self.policy.dist_and_value(obs)
            action = dist.mode()
            return action, {"logp": dist.log_prob(action), "value": value}
        action, logp, value = self._sample_step()(obs)
        return action, {"logp": logp, "value": value}

    def sample(self, obs: Tensor, noise: Tensor | np.ndarray | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``act(obs)``'s action (the same draw; with NumPy ``noise`` a Categorical policy's logits
        come from NumPy, see ``SampleStep``) without ``V(s)``, for ``loops.OnPolicyRunner``'s
        rollouts; ``noise``: this step's part of ``rollout_noise``. The extras hold
        ``log pi(a|s)`` as ``logp``, or for a Categorical policy its logits as ``logits`` (the
        runner computes the actions' log-probabilities for the whole rollout at its end, so that
        a step needs no ``log_softmax``; the same numbers)."""
        step = self._sample_step(rollout=True)
        action, out = step(obs) if noise is None else step(obs, noise)
        return action, {step.output: out}

    def rollout_noise(self, num_steps: int, num_envs: int) -> Tensor | None:
        """The Gumbel draws of a rollout's Categorical actions (``Categorical.sample``), made at
        once, ``[num_steps, num_envs, actions]``: the numbers of the same draws made step by step
        (``gumbel_noise``), so a rollout that takes nothing else from the generator between its
        steps samples the same actions. None for other policies and devices (their draws happen
        in ``sample``)."""
        head = self._categorical_head()
        if head is None or self.device.type != "cpu":
            return None
        return gumbel_noise(num_steps, num_envs, head.logits.out_features)

    def _categorical_head(self) -> CategoricalHead | None:
        """The policy's head where it is Categorical (Discrete actions), else None."""
        head = self.policy.actor_head
        return head if isinstance(head, CategoricalHead) else None

    def _sample_step(self, rollout: bool = False) -> SampleStep:
        """``SampleStep`` of this policy."""
        steps = self.__dict__.setdefault("_sample_steps", {})
        if rollout not in steps or steps[rollout].policy is not self.policy:
            steps[rollout] = SampleStep(self.policy, rollout)
        return steps[rollout]

    def value(self, obs: Tensor) -> Tensor:
        return self.policy.value(obs)

    def begin_rollout(self, num_envs: int) -> None:
        self.policy.reset_noise(num_envs)
