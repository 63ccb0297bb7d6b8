"""The tabular algorithms as agents: dynamic programming and model-free control.

Dynamic programming (``dp.py``) needs the model, read from the env (``mdp.from_env``):

- ``ValueIteration`` (``value-iteration``), ``PolicyIteration`` (``policy-iteration``; exact
  evaluation, or modified policy iteration with ``eval_sweeps``). ``learn(total_steps)`` caps
  the number of iterations (sweeps of value iteration, improvement steps of policy
  iteration); they stop earlier once converged (``theta``).

Model-free control (``model_free.py``) learns ``q [S, A]`` by stepping the env with an
epsilon-greedy behavior policy; ``learn(total_steps)`` counts env steps:

- ``MCControl`` (``mc-control``): on-policy first-visit (or every-visit) Monte Carlo control,
  S&B section 5.4, with the incremental mean (``lr_schedule=visits``) or a constant step size.
- ``SARSA`` (``sarsa``), ``QLearning`` (``q-learning``), ``ExpectedSARSA`` (``expected-sarsa``):
  one-step TD control, S&B sections 6.4-6.6.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from policyopt.agent import Agent
from policyopt.algos.tabular import dp, model_free
from policyopt.algos.tabular.base import TabularAgent, TabularConfig, TabularRunner
from policyopt.algos.tabular.mdp import from_env
from policyopt.config import ConfigError
from policyopt.envs.vector import EnvError
from policyopt.logging import Logger


# --- dynamic programming ------------------------------------------------------------------
@dataclass
class ValueIterationConfig(TabularConfig):
    theta: float = 1e-10  # stop when a sweep changes no value by theta or more


@dataclass
class PolicyIterationConfig(TabularConfig):
    theta: float = 1e-10  # with eval_sweeps: also wait until an iteration changes no value by theta
    eval_sweeps: int | None = None  # None: exact evaluation (linear solve); k: k sweeps (1 = value iteration)

    def check(self) -> list[str]:
        if self.eval_sweeps is not None and self.eval_sweeps < 1:
            return [f"eval_sweeps must be >= 1 or none, got {self.eval_sweeps}"]
        return []


class DPAgent(TabularAgent):
    """Shared by the dynamic-programming agents: the model, V, the greedy policy, the solve loop."""

    solves_to_convergence: ClassVar[bool] = True  # learn() needs no budget; total_steps caps the iterations

    def build(self, env: gym.Env) -> None:
        try:
            self.mdp = from_env(env, self.config.gamma)
        except ValueError as exc:
            raise EnvError(f"{self.name} needs the env's model: {exc}") from None
        self.values = np.zeros(self.n_states)
        self.policy = np.zeros(self.n_states, dtype=np.int64)
        self.converged = False

    def iterates(self):
        raise NotImplementedError

    def state_values(self) -> np.ndarray:
        return self.values

    def greedy_policy(self) -> np.ndarray:
        return self.policy

    def terminal_states(self) -> np.ndarray:
        return self.mdp.terminal

    def act(self, state: int, deterministic: bool = True) -> int:
        """The greedy policy; DP policies are deterministic, so ``deterministic`` changes nothing."""
        return int(self.policy[state])

    def tables(self) -> dict[str, np.ndarray]:
        return {"values": self.values, "policy": self.policy}

    def load_tables(self, tables: dict[str, np.ndarray]) -> None:
        self.values, self.policy = tables["values"], tables["policy"]

    def extra_state(self) -> dict[str, Any]:
        return {"converged": self.converged}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.converged = bool(state["converged"])

    def learn(
        self,
        total_steps: int | None = None,
        *,
        run_dir: str | Path | None = None,
        progress: bool = True,
        checkpoint_every: int | None = None,
        callback: Any = None,
    ) -> DPAgent:
        """Iterate until converged or ``total_steps`` iterations (default: until converged).

        Each iteration logs ``diag/delta`` (largest value change), ``diag/policy_changes`` and
        ``diag/start_value`` (expected value of the first state). DP writes no checkpoints
        (``checkpoint_every`` is ignored) and shows no progress bar (``progress`` is ignored).
        ``callback(agent, metrics)`` returning False stops early.
        """
        from policyopt.loops import write_run_info

        cap = int(total_steps) if total_steps is not None else dp.MAX_ITERATIONS
        if cap <= 0:
            raise ConfigError(f"total_steps must be > 0, got {cap}")
        run_dir = Path(run_dir) if run_dir is not None else None
        self.schedule = (self.global_step, self.global_step + cap)
        logger = Logger(run_dir, stdout=progress)

        def log(iterate: dp.Iterate) -> bool:
            self.values, self.global_step = iterate.values, self.global_step + 1
            metrics = {
                "diag/delta": iterate.delta,
                "diag/policy_changes": iterate.changed,
                "diag/start_value": float(self.mdp.initial @ iterate.values),
            }
            logger.log(self.global_step, metrics)
            return callback is None or callback(self, metrics) is not False

        try:
            result = dp.run_until_converged(self.iterates(), self.mdp, self.config.theta, cap, log)
        except dp.ImproperPolicyError as exc:
            raise ConfigError(f"{self.name}: {exc}") from None
        finally:
            logger.close()
        self.num_updates += result.iterations
        self.values, self.policy, self.converged = result.values, result.policy, result.converged
        if run_dir is not None:
            write_run_info(self, run_dir)
            self.save(run_dir / "model.pt")
            self.save_artifacts(run_dir)
        return self


class ValueIteration(DPAgent):
    """Value iteration (S&B section 4.4) on an env that exposes its model."""

    name = "value-iteration"
    Config = ValueIterationConfig

    def iterates(self):
        return dp.value_iteration_steps(self.mdp, self.values)


class PolicyIteration(DPAgent):
    """Policy iteration (S&B section 4.3), or modified policy iteration with ``eval_sweeps``."""

    name = "policy-iteration"
    Config = PolicyIterationConfig

    def iterates(self):
        return dp.policy_iteration_steps(self.mdp, self.config.eval_sweeps, self.values)


# --- model-free control ---------------------------------------------------------------------
@dataclass
class ModelFreeConfig(TabularConfig):
    learning_rate: float = 0.1  # alpha, the step size
    lr_schedule: str = field(default="constant", metadata={"choices": model_free.LR_SCHEDULES})
    start_e: float = 0.1  # epsilon of the behavior policy at the start of learn()
    end_e: float = 0.1
    exploration_fraction: float = 1.0  # fraction of learn() over which epsilon goes from start_e to end_e
    q_init: float = 0.0  # initial action values (optimistic when above the returns, S&B section 2.6)
    log_interval: int = 1000  # env steps between rows of metrics.csv

    def check(self) -> list[str]:
        if self.learning_rate > 1.0:
            return [f"learning_rate (the step size alpha) must be <= 1, got {self.learning_rate}"]
        return []


@dataclass
class MCControlConfig(ModelFreeConfig):
    lr_schedule: str = field(default="visits", metadata={"choices": model_free.LR_SCHEDULES})
    first_visit: bool = True  # update only the first occurrence of each (s, a) in an episode


class ModelFreeAgent(TabularAgent):
    """Shared by the model-free agents: the q table, visit counts, epsilon-greedy exploration,
    step sizes, and training through ``loops.train`` with ``TabularRunner``."""

    def build(self, env: gym.Env) -> None:
        self.q = np.full((self.n_states, self.n_actions), self.config.q_init, dtype=np.float64)
        self.visits = np.zeros((self.n_states, self.n_actions), dtype=np.int64)
        self.next_action: int | None = None  # SARSA's A', chosen before its update

    progress = Agent.progress  # fraction of the current learn() call done, for the schedules

    @property
    def epsilon(self) -> float:
        cfg = self.config
        return model_free.linear_schedule(cfg.start_e, cfg.end_e, cfg.exploration_fraction, self.progress)

    def explore(self, state: int) -> int:
        return model_free.epsilon_greedy_action(self.q[state], self.epsilon, self.np_rng)

    def behavior_action(self, state: int) -> int:
        action, self.next_action = self.next_action, None
        return self.explore(state) if action is None else action

    def act(self, state: int, deterministic: bool = True) -> int:
        """Greedy (first best action on ties), or epsilon-greedy with the current epsilon."""
        return int(self.q[state].argmax()) if deterministic else self.explore(state)

    def update(self, state: int, action: int, target: float) -> dict[str, float]:
        """q[s, a] += alpha * (target - q[s, a]), S&B eq. 2.4 / 6.2."""
        self.visits[state, action] += 1
        alpha = model_free.step_size(self.config.lr_schedule, self.config.learning_rate, self.visits[state, action], self.progress)
        error = target - self.q[state, action]
        self.q[state, action] += alpha * error
        return {"diag/abs_error": abs(error), "diag/learning_rate": alpha}

    def observe(self, state: int, action: int, reward: float, next_state: int, terminated: bool, truncated: bool) -> dict[str, float] | None:
        """Learn from one transition; returns metrics of the update (None if it made none)."""
        return self.update(state, action, self.td_target(reward, terminated, truncated, next_state))

    def td_target(self, reward: float, terminated: bool, truncated: bool, next_state: int) -> float:
        raise NotImplementedError

    def make_runner(self) -> TabularRunner:
        """The runner ``loops.train`` and ``loops.resume`` drive: one env step and update per iteration."""
        return TabularRunner(self)

    def state_values(self) -> np.ndarray:
        return self.q.max(axis=1)

    def greedy_policy(self) -> np.ndarray:
        return self.q.argmax(axis=1)

    def tables(self) -> dict[str, np.ndarray]:
        return {"q": self.q, "visits": self.visits}

    def load_tables(self, tables: dict[str, np.ndarray]) -> None:
        self.q, self.visits = tables["q"], tables["visits"]

    def extra_state(self) -> dict[str, Any]:
        return {"next_action": self.next_action}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.next_action = state["next_action"]


class SARSA(ModelFreeAgent):
    """SARSA: on-policy TD control (Rummery & Niranjan 1994; S&B section 6.4)."""

    name = "sarsa"
    Config = ModelFreeConfig

    def td_target(self, reward: float, terminated: bool, truncated: bool, next_state: int) -> float:
        if terminated:
            return reward
        next_action = self.explore(next_state)
        if not truncated:  # after a time limit the next episode starts elsewhere; A' only bootstraps
            self.next_action = next_action
        return model_free.sarsa_target(reward, terminated, self.q[next_state, next_action], self.config.gamma)


class QLearning(ModelFreeAgent):
    """Q-learning: off-policy TD control (Watkins 1989; S&B section 6.5)."""

    name = "q-learning"
    Config = ModelFreeConfig

    def td_target(self, reward: float, terminated: bool, truncated: bool, next_state: int) -> float:
        return model_free.q_learning_target(reward, terminated, self.q[next_state], self.config.gamma)


class ExpectedSARSA(ModelFreeAgent):
    """Expected SARSA with the epsilon-greedy policy as target (van Seijen et al. 2009; S&B section 6.6)."""

    name = "expected-sarsa"
    Config = ModelFreeConfig

    def td_target(self, reward: float, terminated: bool, truncated: bool, next_state: int) -> float:
        probs = model_free.epsilon_greedy_probs(self.q[next_state], self.epsilon)
        return model_free.expected_sarsa_target(reward, terminated, self.q[next_state], probs, self.config.gamma)


class MCControl(ModelFreeAgent):
    """On-policy Monte-Carlo control for epsilon-soft policies (S&B section 5.4): after each
    episode, q[s, a] moves toward the return G_t that followed (s_t, a_t)."""

    name = "mc-control"
    Config = MCControlConfig

    def build(self, env: gym.Env) -> None:
        super().build(env)
        self.episode: list[tuple[int, int, float]] = []  # (s_t, a_t, r_{t+1}) of the running episode

    def observe(self, state: int, action: int, reward: float, next_state: int, terminated: bool, truncated: bool) -> dict[str, float] | None:
        self.episode.append((state, action, reward))
        if not (terminated or truncated):
            return None
        # An episode cut by the time limit counts as ended: MC control does not bootstrap.
        states, actions, rewards = (np.array(column) for column in zip(*self.episode, strict=True))
        self.episode = []
        returns = model_free.episode_returns(rewards, self.config.gamma)
        mask = model_free.first_visits(states, actions, self.n_actions) if self.config.first_visit else np.ones(len(states), dtype=bool)
        sums: dict[str, float] = {}
        for t in np.flatnonzero(mask):
            for key, value in self.update(int(states[t]), int(actions[t]), float(returns[t])).items():
                sums[key] = sums.get(key, 0.0) + value
        return {key: value / mask.sum() for key, value in sums.items()}

    def extra_state(self) -> dict[str, Any]:
        return {"next_action": self.next_action, "episode": [list(step) for step in self.episode]}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.next_action = state["next_action"]
        self.episode = [(int(s), int(a), float(r)) for s, a, r in state["episode"]]
