"""Finite MDPs with a known model: the ``FiniteMDP`` type, builders, and an env that samples one.

A finite MDP (Sutton & Barto, "Reinforcement Learning: An Introduction", 2nd ed., section 3.1)
is held as dense arrays:

    P[s, a, s'] = Pr(S_{t+1} = s' | S_t = s, A_t = a)        [S, A, S]
    R[s, a]     = E[R_{t+1} | S_t = s, A_t = a]               [S, A]
    gamma       discount in (0, 1]
    terminal[s] True where the episode ends                   [S]
    initial[s]  distribution of the first state               [S]

Terminal states are absorbing with zero reward (``P[t, a, t] = 1``, ``R[t, a] = 0``), so every
value function is zero there. Builders: ``from_arrays`` (user-given arrays), ``from_env``
(Gymnasium toy-text envs that expose their model as ``env.unwrapped.P``: FrozenLake,
CliffWalking, Taxi) and ``grid_world`` (the 4x4 gridworld of S&B Example 4.1). ``MDPEnv``
turns any ``FiniteMDP`` back into a Gymnasium env, so model-free agents can learn on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

# Toy-text model format: P[s][a] = [(probability, next_state, reward, terminated), ...]
ToyTextModel = dict[int, dict[int, list[tuple[float, int, float, bool]]]]

# (row, col) steps of the actions of grid_world and CliffWalking: up, right, down, left.
GRID_MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))


@dataclass(frozen=True, eq=False)
class FiniteMDP:
    """A finite MDP as dense arrays; see the module docstring. Build it with ``from_arrays``."""

    P: np.ndarray
    R: np.ndarray
    gamma: float
    terminal: np.ndarray
    initial: np.ndarray

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ValueError(problems[0])

    @property
    def n_states(self) -> int:
        return self.P.shape[0]

    @property
    def n_actions(self) -> int:
        return self.P.shape[1]

    def epsilon_soft(self, epsilon: float) -> FiniteMDP:
        """This MDP with epsilon-greedy execution moved inside it (S&B section 5.4): action ``a``
        is taken with probability ``1 - epsilon``, a uniformly random one otherwise,

            P'[s, a] = (1 - epsilon) * P[s, a] + epsilon * mean_b P[s, b]   (same for R)

        The optimal policies of this MDP, run epsilon-greedily in the original, are the best
        epsilon-soft policies there: what SARSA with a constant epsilon converges to.
        """
        P = (1.0 - epsilon) * self.P + epsilon * self.P.mean(axis=1, keepdims=True)
        R = (1.0 - epsilon) * self.R + epsilon * self.R.mean(axis=1, keepdims=True)
        return FiniteMDP(P, R, self.gamma, self.terminal, self.initial)

    @classmethod
    def from_arrays(
        cls,
        P: Any,
        R: Any,
        gamma: float,
        terminal: Any = None,
        initial: Any = None,
    ) -> FiniteMDP:
        """A ``FiniteMDP`` from array-likes; the rows of ``terminal`` states are made absorbing.

        ``terminal`` (bool ``[S]`` or a list of state indices) defaults to none; ``initial``
        defaults to uniform over the non-terminal states. Raises ``ValueError`` on bad input.
        """
        P = np.array(P, dtype=np.float64)
        R = np.array(R, dtype=np.float64)
        if P.ndim != 3 or P.shape[0] != P.shape[2] or R.shape != P.shape[:2]:
            raise ValueError(f"P must be [S, A, S] and R [S, A]; got P {P.shape}, R {R.shape}")
        n_states = P.shape[0]
        terminal = _state_mask(terminal, n_states)
        P[terminal] = 0.0
        P[terminal, :, np.flatnonzero(terminal)] = 1.0
        R[terminal] = 0.0
        if initial is None:
            if terminal.all():
                raise ValueError("every state is terminal")
            initial = (~terminal) / (~terminal).sum()
        return cls(P, R, float(gamma), terminal, np.array(initial, dtype=np.float64))


def _state_mask(states: Any, n_states: int) -> np.ndarray:
    if states is None:
        return np.zeros(n_states, dtype=bool)
    arr = np.asarray(states)
    if arr.dtype == bool:
        if arr.shape != (n_states,):
            raise ValueError(f"terminal mask must have shape ({n_states},), got {arr.shape}")
        return arr.copy()
    mask = np.zeros(n_states, dtype=bool)
    mask[arr.astype(np.int64)] = True
    return mask


def _problems(mdp: FiniteMDP) -> list[str]:
    P, R, n = mdp.P, mdp.R, mdp.P.shape[0]
    if P.ndim != 3 or P.shape[2] != n or R.shape != P.shape[:2]:
        return [f"P must be [S, A, S] and R [S, A]; got P {P.shape}, R {R.shape}"]
    if mdp.terminal.shape != (n,) or mdp.initial.shape != (n,):
        return [f"terminal and initial must have shape ({n},)"]
    if not 0.0 < mdp.gamma <= 1.0:
        return [f"gamma must be in (0, 1], got {mdp.gamma}"]
    if not (np.isfinite(P).all() and np.isfinite(R).all()):
        return ["P and R must be finite"]
    if (P < 0).any() or not np.allclose(P.sum(axis=2), 1.0, atol=1e-9):
        return ["every P[s, a, :] must be a probability distribution"]
    if (mdp.initial < 0).any() or not np.isclose(mdp.initial.sum(), 1.0, atol=1e-9):
        return ["initial must be a probability distribution"]
    term = np.flatnonzero(mdp.terminal)
    if (R[term] != 0).any() or not (P[term, :, term] == 1.0).all():
        return ["terminal states must be absorbing with zero reward (use FiniteMDP.from_arrays)"]
    return []


def from_model(model: ToyTextModel, n_states: int, n_actions: int, gamma: float, initial: np.ndarray) -> FiniteMDP:
    """A ``FiniteMDP`` from a toy-text model ``P[s][a] = [(p, s', r, terminated), ...]``.

    Toy-text envs flag termination on transitions; a ``FiniteMDP`` puts it on states. The
    terminal states are the targets of terminated transitions. That is faithful when no
    transition from a state reachable from ``initial`` enters a terminal state without
    terminating (checked; ``ValueError`` otherwise). Transitions out of terminal states are
    replaced by an absorbing self-loop with zero reward.
    """
    P = np.zeros((n_states, n_actions, n_states))
    R = np.zeros((n_states, n_actions))
    ends_in = np.zeros(n_states, dtype=bool)
    enters_without_ending = np.zeros((n_states, n_states), dtype=bool)  # [from, to]
    for s, by_action in model.items():
        for a, outcomes in by_action.items():
            for p, s_next, r, terminated in outcomes:
                P[s, a, s_next] += p
                R[s, a] += p * r
                if terminated:
                    ends_in[s_next] = True
                elif p > 0:
                    enters_without_ending[s, s_next] = True
    reachable = reachable_states(P, initial, ends_in)
    bad = enters_without_ending[np.ix_(reachable & ~ends_in, ends_in)]
    if bad.any():
        raise ValueError("this env ends episodes on some transitions into a state but not on others; "
                         "a FiniteMDP needs terminal states")
    return FiniteMDP.from_arrays(P, R, gamma, terminal=ends_in, initial=initial)


def reachable_states(P: np.ndarray, initial: np.ndarray, terminal: np.ndarray) -> np.ndarray:
    """Bool ``[S]``: states reachable from the support of ``initial`` under some actions,
    never leaving a terminal state."""
    moves = (P > 0).any(axis=1) & ~terminal[:, None]  # [S, S]: s -> s' possible
    reached = initial > 0
    while True:
        grown = reached | moves[reached].any(axis=0)
        if (grown == reached).all():
            return reached
        reached = grown


def from_env(env: gym.Env, gamma: float) -> FiniteMDP:
    """The model of a Gymnasium env that exposes it as ``env.unwrapped.P`` (toy text, ``MDPEnv``)."""
    base = env.unwrapped
    obs_space, action_space = env.observation_space, env.action_space
    if not (isinstance(obs_space, gym.spaces.Discrete) and isinstance(action_space, gym.spaces.Discrete)):
        raise ValueError(f"a finite MDP needs Discrete observation and action spaces; this env has {obs_space}, {action_space}")
    model = getattr(base, "P", None)
    if not isinstance(model, dict):
        raise ValueError(f"{type(base).__name__} does not expose its model as env.unwrapped.P")
    n_states = int(obs_space.n)
    initial = getattr(base, "initial_state_distrib", None)
    if initial is None:
        initial = np.full(n_states, 1.0 / n_states)
    return from_model(model, n_states, int(action_space.n), gamma, np.asarray(initial, dtype=np.float64))


def grid_world(rows: int = 4, cols: int = 4, terminals: Any = None, step_reward: float = -1.0, gamma: float = 1.0) -> FiniteMDP:
    """The gridworld of S&B Example 4.1: deterministic moves up/right/down/left (``GRID_MOVES``),
    a move off the grid leaves the state unchanged, ``step_reward`` on every transition, and
    terminal cells (default: the top-left and bottom-right corners). State = ``row * cols + col``;
    episodes start uniformly in a non-terminal cell.
    """
    n_states = rows * cols
    terminals = [(0, 0), (rows - 1, cols - 1)] if terminals is None else terminals
    P = np.zeros((n_states, len(GRID_MOVES), n_states))
    for row in range(rows):
        for col in range(cols):
            for a, (d_row, d_col) in enumerate(GRID_MOVES):
                r, c = row + d_row, col + d_col
                if not (0 <= r < rows and 0 <= c < cols):
                    r, c = row, col
                P[row * cols + col, a, r * cols + c] = 1.0
    R = np.full((n_states, len(GRID_MOVES)), float(step_reward))
    return FiniteMDP.from_arrays(P, R, gamma, terminal=[r * cols + c for r, c in terminals])


class MDPEnv(gym.Env):
    """A Gymnasium env that samples a ``FiniteMDP``: reward ``R[s, a]``, next state from
    ``P[s, a]``, ``terminated`` on entering a terminal state. It exposes its model in the
    toy-text format (``P``, ``initial_state_distrib``), so ``from_env`` recovers the MDP.

    ``grid_shape`` (rows, cols) and ``moves`` (a (row, col) step per action) let the tabular
    agents draw values and policies on a grid; ``grid_world`` MDPs use ``GRID_MOVES``.
    """

    metadata = {"render_modes": []}

    def __init__(self, mdp: FiniteMDP, grid_shape: tuple[int, int] | None = None, moves: tuple = GRID_MOVES):
        self.mdp = mdp
        self.grid_shape = grid_shape
        self.moves = moves
        self.observation_space = gym.spaces.Discrete(mdp.n_states)
        self.action_space = gym.spaces.Discrete(mdp.n_actions)
        self.initial_state_distrib = mdp.initial
        self.P = self._toy_text_model()
        self.s = 0

    def _toy_text_model(self) -> ToyTextModel:
        mdp = self.mdp
        model: ToyTextModel = {}
        for s in range(mdp.n_states):
            model[s] = {}
            for a in range(mdp.n_actions):
                nxt = np.flatnonzero(mdp.P[s, a])
                reward = float(mdp.R[s, a])
                model[s][a] = [(float(mdp.P[s, a, n]), int(n), reward, bool(mdp.terminal[n])) for n in nxt]
        return model

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[int, dict]:
        super().reset(seed=seed)
        self.s = int(self.np_random.choice(self.mdp.n_states, p=self.mdp.initial))
        return self.s, {}

    def step(self, action: int) -> tuple[int, float, bool, bool, dict]:
        reward = float(self.mdp.R[self.s, action])
        self.s = int(self.np_random.choice(self.mdp.n_states, p=self.mdp.P[self.s, action]))
        return self.s, reward, bool(self.mdp.terminal[self.s]), False, {}
