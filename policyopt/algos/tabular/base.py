"""``TabularAgent``: what the tabular algorithms share with their users, none of the learning.

The deep algorithms' ``Agent`` is built around networks, optimizers and vector envs; a tabular
agent holds NumPy tables indexed by integer states. This class gives it the same protocol,
so ``policyopt train/eval/list`` and the Python API drive both alike: config resolution
(defaults <- preset <- config <- keyword overrides, validated), ``learn``, ``predict``,
``evaluate``, ``save``/``load``/``from_state``, and the run-directory artifacts
(``values.json`` and, for grid-shaped envs, ``values.png``).

Model-free agents train through ``loops.train`` with ``TabularRunner`` (one env step and one
update per iteration), so they get metrics.csv, TensorBoard, the progress bar, checkpoints
and ``--resume`` like the deep algorithms. Dynamic-programming agents need no env steps;
they write the same run directory from their own short loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch

from policyopt import checkpoint, loops
from policyopt.agent import AgentBase, resolve_config, rng_state, seed_everything, set_rng_state
from policyopt.algos.tabular.mdp import from_env
from policyopt.algos.tabular.plot import grid_layout, plot_values
from policyopt.config import ConfigError, build_config, preset, to_json
from policyopt.envs.vector import EnvError, EnvLike, Snapshot

DEFAULT_TIME_LIMIT = 1000  # for envs without a time limit of their own (CliffWalking)


@dataclass
class TabularConfig:
    """Settings every tabular algorithm shares. Unlike ``config.EnvConfig`` there are no vector
    env settings: tabular methods step one env and update after every step."""

    gamma: float = 0.99
    max_episode_steps: int | None = None  # None: the env's own limit, or DEFAULT_TIME_LIMIT if it has none

    def check(self) -> list[str]:
        return []


def _has_time_limit(env: gym.Env) -> bool:
    while isinstance(env, gym.Wrapper):
        if isinstance(env, gym.wrappers.TimeLimit):
            return True
        env = env.env
    return False


class TabularAgent(AgentBase):
    """Base of the tabular algorithms; subclasses fill in ``build``, the tables and ``learn``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type]
    loop: ClassVar[str] = "tabular"

    def __init__(
        self,
        env: EnvLike = "FrozenLake-v1",
        *,
        config: Any = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        preset: bool = True,
        **overrides: Any,
    ):
        config, self.suggested_steps = resolve_config(type(self), env, config, preset, overrides)
        self._setup(env, config, seed)

    @classmethod
    def preset_for(cls, env_id: str | None) -> dict[str, Any]:
        return preset(cls.name, env_id) if env_id else {}

    def _setup(self, env: EnvLike, config: Any, seed: int) -> None:
        self.env = env
        self.env_id = env if isinstance(env, str) else None
        self.config = config
        self.seed = int(seed)
        self.device = torch.device("cpu")  # NumPy tables; the attribute keeps the run info uniform
        seed_everything(self.seed)
        self.np_rng = np.random.default_rng(self.seed)
        self.global_step = 0
        self.num_updates = 0
        self.schedule = (0, 0)
        self.runner = None
        self.best = None  # best periodic evaluation (model-free agents' learn(eval_every=...))
        probe = self.make_env()
        try:
            obs_space, action_space = probe.observation_space, probe.action_space
            if not (isinstance(obs_space, gym.spaces.Discrete) and isinstance(action_space, gym.spaces.Discrete)):
                raise EnvError(f"{self.name} needs Discrete observation and action spaces; this env has {obs_space} and {action_space}")
            self.n_states, self.n_actions = int(obs_space.n), int(action_space.n)
            self.layout = grid_layout(probe)
            self.build(probe)
        finally:
            probe.close()

    # --- what subclasses implement ---------------------------------------------------------
    def build(self, env: gym.Env) -> None:
        """Create the tables; ``env`` is a throwaway instance (e.g. to read its model)."""
        raise NotImplementedError

    def state_values(self) -> np.ndarray:
        """V(s) of the current solution, ``[S]``."""
        raise NotImplementedError

    def greedy_policy(self) -> np.ndarray:
        """The deterministic policy of the current solution, ``[S]`` actions."""
        raise NotImplementedError

    def act(self, state: int, deterministic: bool = True) -> int:
        """The action in ``state``: greedy, or the algorithm's behavior policy."""
        raise NotImplementedError

    def tables(self) -> dict[str, np.ndarray]:
        """The learned arrays, saved in checkpoints as tensors."""
        raise NotImplementedError

    def load_tables(self, tables: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # --- envs -------------------------------------------------------------------------------
    def make_env(self, render_mode: str | None = None) -> gym.Env:
        """A fresh env with integer observations, time-limited (see ``TabularConfig``)."""
        limit = self.config.max_episode_steps
        if isinstance(self.env, str):
            kwargs = {"render_mode": render_mode} if render_mode is not None else {}
            env = gym.make(self.env, max_episode_steps=limit, **kwargs)
        else:
            env = self.env()
            if limit is not None:
                env = gym.wrappers.TimeLimit(env, limit)
        if not _has_time_limit(env):
            env = gym.wrappers.TimeLimit(env, DEFAULT_TIME_LIMIT)
        return env

    def make_eval_env(self, render_mode: str | None = None) -> gym.Env:
        return self.make_env(render_mode)

    # --- user API ---------------------------------------------------------------------------
    def predict(self, obs: Any, deterministic: bool = True) -> np.ndarray:
        """Action(s) for integer state(s): one state in, one action out; a batch in, a batch out."""
        states = np.asarray(obs, dtype=np.int64)
        actions = np.array([self.act(int(s), deterministic) for s in states.ravel()], dtype=np.int64)
        return actions[0] if states.ndim == 0 else actions.reshape(states.shape)

    def evaluate(
        self, episodes: int = 10, *, seed: int | None = None, deterministic: bool = True, video_dir: str | Path | None = None
    ) -> list[float]:
        """Undiscounted returns of ``episodes`` episodes on a fresh env (seeded ``seed + 10_000`` by default)."""
        from policyopt.evaluation import run_episodes

        return run_episodes(self, lambda obs: self.act(int(obs), deterministic), episodes, seed=seed, video_dir=video_dir)

    def save_artifacts(self, run_dir: str | Path) -> None:
        """``values.json`` (V and the greedy policy) and, for grid-shaped envs, ``values.png``."""
        run_dir = Path(run_dir)
        values, policy = self.state_values(), self.greedy_policy()
        (run_dir / "values.json").write_text(json.dumps({"values": values.tolist(), "policy": policy.tolist()}))
        if self.layout is not None:
            title = f"{self.name} on {self.env_id or 'custom env'}: V(s) and greedy policy"
            plot_values(values, policy, self.terminal_states(), self.layout, run_dir / "values.png", title)

    def terminal_states(self) -> np.ndarray:
        """Bool ``[S]``, for the picture only (no arrow is drawn on a terminal cell): read from
        the env's model where it exposes one (toy text, ``MDPEnv``), none otherwise. Model-free
        agents never learn from it."""
        env = self.make_env()
        try:
            return from_env(env, 1.0).terminal
        except ValueError:
            return np.zeros(self.n_states, dtype=bool)
        finally:
            env.close()

    # --- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "algo": self.name,
            "env_id": self.env_id,
            "config": to_json(self.config),
            "seed": self.seed,
            "tables": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in self.tables().items()},
            "counters": {"global_step": self.global_step, "num_updates": self.num_updates, "schedule": list(self.schedule)},
            "rng": rng_state(self.np_rng),
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any], *, restore_rng: bool = True) -> None:
        self.load_tables({k: v.numpy().copy() for k, v in state["tables"].items()})
        counters = state["counters"]
        self.global_step = int(counters["global_step"])
        self.num_updates = int(counters["num_updates"])
        self.schedule = tuple(counters["schedule"])
        if restore_rng:
            set_rng_state(self.np_rng, state["rng"])
        self.load_extra_state(state["extra"])

    @classmethod
    def from_state(cls, state: dict[str, Any], *, env: EnvLike | None = None, device: str | torch.device = "cpu") -> TabularAgent:
        if state.get("algo") != cls.name:
            raise checkpoint.CheckpointError(f"checkpoint holds a {state.get('algo')!r} agent, not {cls.name!r}")
        env = env or state["env_id"]
        if env is None:
            raise ConfigError("this agent was trained on an env without a registered id; pass env=")
        agent = cls.__new__(cls)
        agent.suggested_steps = None
        agent._setup(env, build_config(cls.Config, json.loads(state["config"])), state["seed"])
        agent.load_state_dict(state)
        return agent

    @classmethod
    def load(cls, path: str | Path, *, env: EnvLike | None = None, device: str | torch.device = "cpu") -> TabularAgent:
        """Rebuild a saved agent; ``env`` is needed only when it was not a registered id."""
        return cls.from_state(checkpoint.load(path)["agent"], env=env)


class StateCollector:
    """The env of a tabular training run: its current (integer) state and episode statistics."""

    def __init__(self, agent: TabularAgent):
        self.env = Snapshot(agent.make_env())
        self.state = int(self.env.reset(seed=agent.seed)[0])
        self.stats = loops.EpisodeStats(1)

    def step(self, action: int) -> tuple[int, float, bool, bool]:
        """Step the env; returns ``(next_state, reward, terminated, truncated)``. After an episode
        ends, ``self.state`` is the first state of the next one."""
        next_state, reward, terminated, truncated, _ = self.env.step(action)
        if not np.isfinite(reward):
            raise loops.NonFiniteError(f"non-finite reward {reward} from the env")
        done = terminated or truncated
        self.stats.record(np.array([reward], dtype=np.float64), np.array([done]))
        self.state = int(self.env.reset()[0]) if done else int(next_state)
        return int(next_state), float(reward), bool(terminated), bool(truncated)

    def state_dict(self) -> dict[str, Any]:
        return {"env": self.env.snapshot, "state": self.state, "stats": self.stats.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.env.snapshot = state["env"]
        self.state = int(state["state"])
        self.stats.load_state_dict(state["stats"])

    def close(self) -> None:
        self.env.close()


class TabularRunner:
    """Online tabular control (S&B chapters 5-6): each iteration takes one action of the
    behavior policy, steps the env and hands the transition to ``agent.observe``. Metrics are
    averaged over ``log_interval`` steps."""

    def __init__(self, agent: Any):
        self.agent = agent
        self.collector = StateCollector(agent)
        self.window = loops.MetricWindow()

    def iterate(self) -> dict[str, float] | None:
        agent = self.agent
        state = self.collector.state
        action = agent.behavior_action(state)
        next_state, reward, terminated, truncated = self.collector.step(action)
        metrics = agent.observe(state, action, reward, next_state, terminated, truncated)
        agent.global_step += 1
        if metrics:
            self.window.add(metrics)
            agent.num_updates += 1
        if agent.global_step % agent.config.log_interval:
            return None
        return {**self.window.pop(), "diag/epsilon": agent.epsilon}

    def state_dict(self) -> dict[str, Any]:
        return {"collector": self.collector.state_dict(), "window": self.window.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.collector.load_state_dict(state["collector"])
        self.window.load_state_dict(state["window"])

    def close(self) -> None:
        self.collector.close()
