"""Model-free tabular control: epsilon-greedy policies, step sizes, TD targets, Monte-Carlo returns.

Sutton & Barto, "Reinforcement Learning: An Introduction" (2nd ed., 2018): Monte-Carlo control
(section 5.4), SARSA (6.4), Q-learning (6.5), Expected SARSA (6.6). Every method moves one
entry of the action-value table ``q`` (``[S, A]``) toward a target,

    q[s, a] <- q[s, a] + alpha * (target - q[s, a])                      (S&B eq. 2.4)

and differs only in the target. Pure NumPy functions of single transitions; the agents in
``agents.py`` drive them from a Gymnasium env.
"""

from __future__ import annotations

import numpy as np

LR_SCHEDULES = ("constant", "linear", "visits")


def greedy_action(q_row: np.ndarray, rng: np.random.Generator) -> int:
    """``argmax_a q_row[a]`` with ties broken uniformly at random (S&B section 2.2). ``[A] -> int``."""
    values = q_row.tolist()  # a few actions: Python lists are faster than NumPy calls here
    best_value = max(values)
    best = [a for a, v in enumerate(values) if v == best_value]
    return best[0] if len(best) == 1 else best[int(rng.random() * len(best))]


def epsilon_greedy_action(q_row: np.ndarray, epsilon: float, rng: np.random.Generator) -> int:
    """A uniformly random action with probability ``epsilon``, else a greedy one (S&B section 2.2)."""
    if rng.random() < epsilon:
        return int(rng.random() * len(q_row))
    return greedy_action(q_row, rng)


def epsilon_greedy_probs(q_row: np.ndarray, epsilon: float) -> np.ndarray:
    """The probabilities ``epsilon_greedy_action`` samples from (S&B section 5.4), ``[A] -> [A]``:

        pi(a|s) = epsilon / A + (1 - epsilon) * [a in argmax q] / |argmax q|
    """
    best = q_row == q_row.max()
    return epsilon / len(q_row) + (1.0 - epsilon) * best / best.sum()


def linear_schedule(start: float, end: float, fraction: float, progress: float) -> float:
    """``start`` moved linearly to ``end`` over the first ``fraction`` of training, then held;
    ``progress`` in [0, 1] is the fraction of training done."""
    return start + (end - start) * min(1.0, progress / fraction)


def step_size(schedule: str, learning_rate: float, visits: int, progress: float) -> float:
    """alpha for an update of a pair visited ``visits`` times, this one included.

    ``constant``: alpha = learning_rate (S&B section 2.5, recency-weighted average)
    ``linear``:   alpha = learning_rate * (1 - progress), annealed to 0 over training
    ``visits``:   alpha = 1 / visits, the incremental sample mean (S&B eq. 2.3); learning_rate unused
    """
    if schedule == "visits":
        return 1.0 / visits
    if schedule == "linear":
        return learning_rate * (1.0 - progress)
    return learning_rate


def sarsa_target(reward: float, terminated: bool, q_next: float, gamma: float) -> float:
    """SARSA, S&B eq. 6.7:  target = r + gamma * Q(s', a'), with a' the action the policy takes
    next; no bootstrap past a terminal state. ``q_next = q[s', a']``."""
    return reward if terminated else reward + gamma * q_next


def q_learning_target(reward: float, terminated: bool, q_next_row: np.ndarray, gamma: float) -> float:
    """Q-learning (Watkins 1989), S&B eq. 6.8:  target = r + gamma * max_a Q(s', a).  ``q_next_row``: ``[A]``."""
    return reward if terminated else reward + gamma * float(q_next_row.max())


def expected_sarsa_target(
    reward: float, terminated: bool, q_next_row: np.ndarray, probs_next: np.ndarray, gamma: float
) -> float:
    """Expected SARSA, S&B eq. 6.9:  target = r + gamma * sum_a pi(a|s') Q(s', a).
    ``q_next_row, probs_next``: ``[A]``."""
    return reward if terminated else reward + gamma * float(probs_next @ q_next_row)


def episode_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """Returns of every step of one episode, S&B eq. 3.9:  G_t = r_{t+1} + gamma * G_{t+1}, G_T = 0.  ``[T] -> [T]``."""
    returns = np.empty(len(rewards))
    future = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        future = rewards[t] + gamma * future
        returns[t] = future
    return returns


def first_visits(states: np.ndarray, actions: np.ndarray, n_actions: int) -> np.ndarray:
    """Bool ``[T]``: where the pair (s_t, a_t) occurs for the first time in the episode
    (first-visit Monte Carlo, S&B section 5.1). ``states, actions``: ``[T]`` ints."""
    pairs = states * n_actions + actions
    _, first = np.unique(pairs, return_index=True)
    mask = np.zeros(len(pairs), dtype=bool)
    mask[first] = True
    return mask
