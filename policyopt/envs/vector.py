"""Vectorized environments with same-step autoreset and the real final observation.

``make_vec_env`` builds N copies of an env behind the ``VecEnv`` interface: Gymnasium envs
(``VecEnv``), Gymnasium's NumPy-vectorized versions (``NumpyVecEnv``) or EnvPool's C++ ones
(``EnvPoolVecEnv``), chosen by the ``env_backend`` setting. Each ``step``
returns ``Step(obs, reward, terminated, truncated, final_obs)``: where an episode ended,
``obs`` already holds the first observation of the next episode and ``final_obs`` the last
observation of the one that ended. Algorithms bootstrap a truncated episode from
``final_obs`` (see ``core.returns``), never from the reset observation.

Observations are float32 ``[N, obs_dim]``: Box observations are flattened, Discrete ones
one-hot encoded, Dict/Tuple ones flattened only when asked (``flatten_obs=True``).
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode

EnvLike = str | Callable[[], gym.Env]


class EnvError(ValueError):
    """A problem with the environment the user asked for (unknown id, unsupported spaces)."""


def check_env_id(env_id: str) -> None:
    """Raise ``EnvError`` with close matches when ``env_id`` is not registered."""
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise EnvError(f"unknown environment {env_id!r}{hint}")


class FloatObservation(gym.ObservationWrapper):
    """Box -> float32 flat vector; Discrete -> float32 one-hot vector."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        if isinstance(space, gym.spaces.Discrete):
            self._encode: Callable[[Any], np.ndarray] = self._one_hot
            self.n = int(space.n)
            self.observation_space = gym.spaces.Box(0.0, 1.0, (self.n,), np.float32)
        elif isinstance(space, gym.spaces.Box):
            self._encode = self._flatten
            low = np.asarray(space.low, dtype=np.float32).ravel()
            high = np.asarray(space.high, dtype=np.float32).ravel()
            self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)
        else:
            raise EnvError(
                f"observation space {type(space).__name__} is not supported; "
                "set flatten_obs=true to flatten Dict/Tuple observations"
            )

    def _one_hot(self, obs: Any) -> np.ndarray:
        out = np.zeros(self.n, dtype=np.float32)
        out[int(obs)] = 1.0
        return out

    @staticmethod
    def _flatten(obs: Any) -> np.ndarray:
        return np.asarray(obs, dtype=np.float32).ravel()

    def observation(self, observation: Any) -> np.ndarray:
        return self._encode(observation)


_SNAPSHOT_TYPES = (bool, int, float, str, type(None), np.bool_, np.integer, np.floating)


def _encode_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _is_dynamic(name: str, value: Any) -> bool:
    if name in ("spec", "metadata", "render_mode") or isinstance(value, gym.Space):
        return False
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "biuf"
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, _SNAPSHOT_TYPES) for v in value)
    return isinstance(value, _SNAPSHOT_TYPES)


class Snapshot(gym.Wrapper):
    """Gives an env a ``snapshot`` property: its exact state, as tensors and Python values.

    Resuming training bit-for-bit needs the environments where they were. The snapshot holds
    the RNG of the env, the step counter of ``TimeLimit``, and the simulator state:
    MuJoCo's full integration state, or, for pure-Python envs (classic control, toy text),
    every numeric attribute of the unwrapped env. Box2D worlds cannot be captured; their
    snapshot is ``None`` and a resumed run starts fresh episodes there.
    """

    @property
    def snapshot(self) -> dict | None:
        base = self.env.unwrapped
        state: dict[str, Any] = {"wrappers": self._wrapper_state()}
        state["rng"] = base.np_random.bit_generator.state if base._np_random is not None else None
        if hasattr(base, "model") and hasattr(base, "data"):
            import mujoco

            kind = mujoco.mjtState.mjSTATE_INTEGRATION
            sim = np.empty(mujoco.mj_stateSize(base.model, kind))
            mujoco.mj_getState(base.model, base.data, sim, kind)
            state["mujoco"] = torch.from_numpy(sim)
        elif "world" in vars(base):
            return None
        state["attrs"] = {k: _encode_value(v) for k, v in vars(base).items() if _is_dynamic(k, v)}
        return state

    @snapshot.setter
    def snapshot(self, state: dict | None) -> None:
        if state is None:
            return
        base = self.env.unwrapped
        self._set_wrapper_state(state["wrappers"])
        if state["rng"] is not None:
            base.np_random.bit_generator.state = state["rng"]
        if "mujoco" in state:
            import mujoco

            mujoco.mj_setState(base.model, base.data, state["mujoco"].numpy(), mujoco.mjtState.mjSTATE_INTEGRATION)
            mujoco.mj_forward(base.model, base.data)
        for name, value in state["attrs"].items():
            current = getattr(base, name, None)
            if isinstance(value, torch.Tensor):
                value = value.numpy().copy()
                if isinstance(current, np.ndarray):
                    value = value.astype(current.dtype)
            setattr(base, name, value)

    def _wrappers(self) -> list[gym.Env]:
        chain, env = [], self.env
        while isinstance(env, gym.Wrapper):
            chain.append(env)
            env = env.env
        return chain

    def _wrapper_state(self) -> list[dict]:
        keys = ("_elapsed_steps", "_has_reset")
        return [{k: getattr(w, k) for k in keys if hasattr(w, k)} for w in self._wrappers()]

    def _set_wrapper_state(self, states: list[dict]) -> None:
        for wrapper, values in zip(self._wrappers(), states, strict=True):
            for k, v in values.items():
                setattr(wrapper, k, v)


def make_env(env: EnvLike, *, flatten_obs: bool = False, render_mode: str | None = None, **kwargs: Any) -> gym.Env:
    """One env from an id or a factory, wrapped so observations are flat float32 vectors."""
    if isinstance(env, str):
        check_env_id(env)
        if render_mode is not None:
            kwargs["render_mode"] = render_mode
        instance = gym.make(env, **kwargs)
    else:
        instance = env()
    if flatten_obs and isinstance(instance.observation_space, (gym.spaces.Dict, gym.spaces.Tuple)):
        instance = gym.wrappers.FlattenObservation(instance)
    return Snapshot(FloatObservation(instance))


@dataclass(frozen=True)
class EnvSpaces:
    """What an agent needs to know of an env: the spaces it sees, and how raw observations look."""

    obs: gym.spaces.Box  # flat float32, after FloatObservation
    action: gym.Space
    raw_obs_shape: tuple[int, ...]  # () for Discrete observations
    discrete_obs: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "obs": space_to_dict(self.obs),
            "action": space_to_dict(self.action),
            "raw_obs_shape": list(self.raw_obs_shape),
            "discrete_obs": self.discrete_obs,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnvSpaces:
        return cls(space_from_dict(data["obs"]), space_from_dict(data["action"]), tuple(data["raw_obs_shape"]), data["discrete_obs"])


def space_to_dict(space: gym.Space) -> dict[str, Any]:
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n)}
    if isinstance(space, gym.spaces.Box):
        return {"type": "Box", "low": space.low.tolist(), "high": space.high.tolist(), "dtype": str(space.dtype)}
    raise EnvError(f"unsupported space {space}")


def space_from_dict(data: dict[str, Any]) -> gym.Space:
    if data["type"] == "Discrete":
        return gym.spaces.Discrete(data["n"])
    dtype = np.dtype(data["dtype"])
    return gym.spaces.Box(np.array(data["low"], dtype=dtype), np.array(data["high"], dtype=dtype), dtype=dtype)


def env_spaces(env: EnvLike, *, flatten_obs: bool = False) -> EnvSpaces:
    """The spaces of ``env`` as the agent sees them, read off a throwaway instance."""
    probe = make_env(env, flatten_obs=flatten_obs)
    try:
        raw = probe.env.env.observation_space  # inside Snapshot(FloatObservation(.))
        discrete = isinstance(raw, gym.spaces.Discrete)
        return EnvSpaces(probe.observation_space, probe.action_space, () if discrete else tuple(raw.shape), discrete)
    finally:
        probe.close()


class SyncEnvs:
    """N envs stepped one after the other in this process: what ``gymnasium.vector.SyncVectorEnv``
    does with ``AutoresetMode.SAME_STEP`` (same calls, same order, so the same episodes and RNG
    draws), minus its per-step info merging and copies, which cost more than a classic-control
    step. ``VecEnv`` uses it for ``asynchronous=False``."""

    def __init__(self, envs: list[gym.Env]):
        self.envs = envs
        self.num_envs = len(envs)
        self.single_observation_space = envs[0].observation_space
        self.single_action_space = envs[0].action_space

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict]:
        seeds = [None if seed is None else seed + i for i in range(self.num_envs)]  # SyncVectorEnv's seeding
        return np.stack([env.reset(seed=s)[0] for env, s in zip(self.envs, seeds)]), {}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        n = self.num_envs
        obs = np.empty((n, *self.single_observation_space.shape), dtype=self.single_observation_space.dtype)
        reward = np.empty(n, dtype=np.float64)
        terminated, truncated = np.empty(n, dtype=bool), np.empty(n, dtype=bool)
        info: dict[str, Any] = {}
        for i, env in enumerate(self.envs):
            obs[i], reward[i], terminated[i], truncated[i], _ = env.step(actions[i])
            if terminated[i] or truncated[i]:
                if not info:
                    info = {"final_obs": [None] * n, "_final_obs": np.zeros(n, dtype=bool)}
                info["final_obs"][i], info["_final_obs"][i] = obs[i].copy(), True
                obs[i] = env.reset()[0]
        return obs, reward, terminated, truncated, info

    def get_attr(self, name: str) -> list[Any]:
        return [getattr(env, name) for env in self.envs]

    def set_attr(self, name: str, values: list[Any]) -> None:
        for env, value in zip(self.envs, values, strict=True):
            setattr(env, name, value)

    def close(self) -> None:
        for env in self.envs:
            env.close()


@dataclass
class Step:
    """One step of N envs: NumPy arrays from ``VecEnv``, tensors on the env's device from
    ``TorchVecEnv``. ``done = terminated | truncated`` (computed here unless given). The host
    envs return ``final_obs`` as the very object ``obs`` at a step where no episode ended, which
    ``ended`` reads without a pass over ``done``."""

    obs: np.ndarray | torch.Tensor
    reward: np.ndarray | torch.Tensor
    terminated: np.ndarray | torch.Tensor
    truncated: np.ndarray | torch.Tensor
    final_obs: np.ndarray | torch.Tensor
    done: np.ndarray | torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.done is None:
            self.done = self.terminated | self.truncated

    @property
    def ended(self) -> bool:
        """False where no episode can have ended at this step; True where one may have."""
        return self.final_obs is not self.obs


class VecEnv:
    """N envs stepped together (in this process, or in subprocesses with ``asynchronous``)."""

    def __init__(
        self,
        env: EnvLike,
        num_envs: int,
        seed: int,
        *,
        asynchronous: bool = False,
        flatten_obs: bool = False,
        **kwargs: Any,
    ):
        def factory() -> gym.Env:
            return make_env(env, flatten_obs=flatten_obs, **kwargs)

        if asynchronous:
            self._wrap(gym.vector.AsyncVectorEnv([factory] * num_envs, autoreset_mode=AutoresetMode.SAME_STEP), seed)
        else:
            self._wrap(SyncEnvs([factory() for _ in range(num_envs)]), seed)

    def _wrap(self, envs: gym.vector.VectorEnv, seed: int) -> None:
        self.envs = envs
        self.num_envs = envs.num_envs
        self.seed = seed
        self.single_observation_space = envs.single_observation_space
        self.single_action_space = envs.single_action_space

    def reset(self, seed: int | None = None) -> np.ndarray:
        obs, _ = self.envs.reset(seed=self.seed if seed is None else seed)
        return obs

    def step(self, actions: np.ndarray) -> Step:
        obs, reward, terminated, truncated, info = self.envs.step(actions)
        final_obs = obs
        done = terminated | truncated
        if done.any():
            final_obs = obs.copy()
            for i in np.flatnonzero(info["_final_obs"]):
                final_obs[i] = info["final_obs"][i]
        return Step(obs, reward.astype(np.float32), terminated, truncated, final_obs, done)

    @property
    def snapshot(self) -> list[dict | None]:
        return list(self.envs.get_attr("snapshot"))

    @snapshot.setter
    def snapshot(self, states: list[dict | None]) -> None:
        if len(states) != self.num_envs:
            raise ValueError(f"snapshot holds {len(states)} envs, this VecEnv has {self.num_envs}")
        self.envs.set_attr("snapshot", list(states))

    def close(self) -> None:
        self.envs.close()


def _reset_cartpole_rows(env: Any, rows: np.ndarray) -> np.ndarray:
    """Start new episodes in ``rows`` of a ``CartPoleVectorEnv`` now, as its own autoreset would
    at the next step (same distribution, same RNG); returns their first observations."""
    env.state[:, rows] = env.np_random.uniform(low=env.low, high=env.high, size=(4, rows.size))
    env.steps[rows] = 0
    env.prev_done[rows] = False
    return env.state[:, rows].T.astype(np.float32)


# Gymnasium envs with a NumPy-vectorized implementation (``vector_entry_point``) that
# ``NumpyVecEnv`` can drive: how to reset some rows, and the arrays that hold the state.
NUMPY_VECTOR_ENVS: dict[str, tuple[Callable[[Any, np.ndarray], np.ndarray], tuple[str, ...]]] = {
    "CartPole-v1": (_reset_cartpole_rows, ("state", "steps", "prev_done")),
}


def _reset_ended(
    obs: np.ndarray, reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
    reset_rows: Callable[[np.ndarray], np.ndarray],
) -> Step:
    """The ``Step`` of an env that resets an ended episode at the *next* step: the ended rows
    start their new episodes now (``reset_rows(rows)`` returns their first observations), and
    their last observations go to ``final_obs``."""
    final_obs = obs
    done = terminated | truncated
    if done.any():
        final_obs = obs.copy()
        rows = np.flatnonzero(done)
        obs[rows] = reset_rows(rows)
    return Step(obs, reward.astype(np.float32), terminated, truncated, final_obs, done)


def check_numpy_vector_env(env: EnvLike) -> None:
    if env not in NUMPY_VECTOR_ENVS:
        raise EnvError(f"env_backend=numpy supports {', '.join(NUMPY_VECTOR_ENVS)}; not {env!r}")


class NumpyVecEnv(VecEnv):
    """Gymnasium's NumPy-vectorized version of an env (``gymnasium.make_vec(...,
    vectorization_mode="vector_entry_point")``: one array operation steps all N envs) behind
    the ``VecEnv`` interface (``env_backend=numpy``).

    Those envs reset a finished episode at the *next* step (``AutoresetMode.NEXT_STEP``) and
    have no partial reset; the loops expect the reset in the same step, with the last
    observation in ``final_obs``. So after each step the rows that ended are reset here, with
    the env's own reset distribution and RNG (``NUMPY_VECTOR_ENVS``).
    """

    def __init__(self, env_id: str, num_envs: int, seed: int):
        check_numpy_vector_env(env_id)
        self._wrap(gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point"), seed)
        self.reset_rows, self.state_arrays = NUMPY_VECTOR_ENVS[env_id]

    def reset(self, seed: int | None = None) -> np.ndarray:
        return np.ascontiguousarray(super().reset(seed))

    def step(self, actions: np.ndarray) -> Step:
        obs, reward, terminated, truncated, _ = self.envs.step(actions)
        # the env returns its state transposed (column-major); a row-major copy makes the policy's
        # input the same array layout as a checkpoint's, so a resumed run rounds identically
        return _reset_ended(np.ascontiguousarray(obs), reward, terminated, truncated, self._reset_rows)

    def _reset_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.reset_rows(self.envs.unwrapped, rows)

    @property
    def snapshot(self) -> list[dict]:
        """The whole vector env as one entry: its state arrays and its RNG."""
        env = self.envs.unwrapped
        state = {name: torch.from_numpy(np.array(getattr(env, name))) for name in self.state_arrays}
        return [{"arrays": state, "rng": env.np_random.bit_generator.state}]

    @snapshot.setter
    def snapshot(self, states: list[dict]) -> None:
        env = self.envs.unwrapped
        (state,) = states
        for name, value in state["arrays"].items():
            setattr(env, name, value.numpy().copy())
        env.np_random.bit_generator.state = state["rng"]


def check_envpool_env(env: EnvLike) -> None:
    """``env_backend=envpool`` needs the package, and an id that both EnvPool and Gymnasium know
    (the agent reads the spaces off the Gymnasium env)."""
    try:
        import envpool
    except ImportError as err:
        raise EnvError("env_backend=envpool needs the envpool package: pip install 'policyopt[envpool]'") from err
    if not isinstance(env, str) or env not in gym.registry or env not in envpool.list_all_envs():
        raise EnvError(f"env_backend=envpool needs an id that EnvPool and Gymnasium both register; not {env!r}")


class EnvPoolVecEnv(VecEnv):
    """EnvPool's C++ version of an env (``env_backend=envpool``), stepped by its thread pool.

    Like ``NumpyVecEnv``: EnvPool resets a finished episode at the next step, so the rows that
    ended are reset here in the same step (EnvPool's partial ``reset(env_id=...)``). EnvPool
    cannot save an env's state: a checkpoint holds no env state, and a resumed run starts
    fresh episodes (as with Box2D envs). ``reset(seed)`` builds a new pool with that seed;
    ``reset()`` starts new episodes in the same pool.
    """

    def __init__(self, env_id: str, num_envs: int, seed: int):
        check_envpool_env(env_id)
        self.env_id = env_id
        self.num_envs = num_envs
        self._build(seed)
        expected = env_spaces(env_id).obs.shape
        if self.single_observation_space.shape != expected:
            raise EnvError(
                f"EnvPool's {env_id} observes {self.single_observation_space.shape}, Gymnasium's {expected}; "
                "use env_backend=gymnasium"
            )

    def _build(self, seed: int) -> None:
        """A new pool of envs seeded with ``seed``."""
        import envpool

        with warnings.catch_warnings():  # EnvPool builds float32 Boxes from float64 bounds
            warnings.filterwarnings("ignore", message=".*precision lowered", category=UserWarning)
            self.envs = envpool.make(self.env_id, env_type="gymnasium", num_envs=self.num_envs, seed=seed)
            self.single_observation_space = self.envs.observation_space
            self.single_action_space = self.envs.action_space
        self.seed = seed

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:  # EnvPool seeds a pool once, when it is built
            self.envs.close()
            self._build(seed)
        obs, _ = self.envs.reset()
        return obs.astype(np.float32, copy=False)

    def step(self, actions: np.ndarray) -> Step:
        obs, reward, terminated, truncated, _ = self.envs.step(actions)
        return _reset_ended(obs.astype(np.float32, copy=False), reward, terminated, truncated, self._reset_rows)

    def _reset_rows(self, rows: np.ndarray) -> np.ndarray:
        return self.envs.reset(env_id=rows)[0]  # EnvPool's partial reset

    @property
    def snapshot(self) -> list[None]:
        return [None] * self.num_envs

    @snapshot.setter
    def snapshot(self, states: list[dict | None]) -> None:
        raise EnvError("EnvPool envs cannot restore a saved state")


HOST_BACKENDS: dict[str, tuple[Callable[[EnvLike], None], type[VecEnv]]] = {
    "numpy": (check_numpy_vector_env, NumpyVecEnv),
    "envpool": (check_envpool_env, EnvPoolVecEnv),
}


def make_vec_env(
    env: EnvLike, num_envs: int, seed: int, *, backend: str = "gymnasium", asynchronous: bool = False, flatten_obs: bool = False
) -> VecEnv:
    """N copies of ``env`` stepped on the host by ``backend``: gymnasium, numpy or envpool."""
    if backend in HOST_BACKENDS:
        return HOST_BACKENDS[backend][1](env, num_envs, seed)
    return VecEnv(env, num_envs, seed, asynchronous=asynchronous, flatten_obs=flatten_obs)
