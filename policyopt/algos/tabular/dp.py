"""Dynamic programming on a ``FiniteMDP``: policy evaluation, value iteration, policy iteration.

Sutton & Barto, "Reinforcement Learning: An Introduction" (2nd ed., 2018), chapter 4, and
Puterman, "Markov Decision Processes" (1994), section 6.5 for modified policy iteration.

Shapes: values ``V`` are ``[S]``, action values ``Q`` are ``[S, A]``; a policy is either
deterministic, ``[S]`` action indices, or stochastic, ``[S, A]`` probabilities.

Value iteration is policy iteration whose evaluation step is a single sweep: with ``m``
evaluation sweeps per improvement (modified policy iteration),

    pi_{k+1} = greedy(V_k),   V_{k+1} = (T^{pi_{k+1}})^m V_k

and for ``m = 1``, ``T^{greedy(V_k)} V_k = max_a [R + gamma P V_k] = T V_k``, the value
iteration update; ``m = inf`` (exact evaluation) is classical policy iteration. The iterators
``value_iteration_steps`` and ``policy_iteration_steps`` yield every iterate, so this can be
checked sweep by sweep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from policyopt.algos.tabular.mdp import FiniteMDP

TIE_TOLERANCE = 1e-12  # relative; action values this close count as tied
MAX_ITERATIONS = 1_000_000


class ImproperPolicyError(ValueError):
    """An undiscounted (gamma = 1) evaluation of a policy that never terminates from some state."""


def action_values(mdp: FiniteMDP, values: np.ndarray) -> np.ndarray:
    """One-step lookahead, S&B eq. 4.6:  Q[s, a] = R[s, a] + gamma * sum_s' P[s, a, s'] * V[s'].  ``[S] -> [S, A]``."""
    return mdp.R + mdp.gamma * (mdp.P @ values)


def greedy(q: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
    """``argmax_a Q[s, a]``, ``[S, A] -> [S]``; where ``previous`` (``[S]``) is among the best
    actions it is kept, so that ties cannot make policy iteration cycle (S&B section 4.3)."""
    best = q.argmax(axis=1)
    if previous is None:
        return best
    q_max = q.max(axis=1)
    tolerance = TIE_TOLERANCE * np.maximum(1.0, np.abs(q_max))
    keep = q[np.arange(len(q)), previous] >= q_max - tolerance
    return np.where(keep, previous, best)


def policy_matrix(policy: np.ndarray, n_actions: int) -> np.ndarray:
    """A deterministic ``[S]`` policy as ``[S, A]`` probabilities; a stochastic one unchanged."""
    policy = np.asarray(policy)
    if policy.ndim == 2:
        return policy.astype(np.float64)
    return np.eye(n_actions)[policy]


def policy_model(mdp: FiniteMDP, policy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The Markov reward process of ``policy``: ``P_pi [S, S]`` and ``R_pi [S]``, S&B eq. 4.4:

        P_pi[s, s'] = sum_a pi(a|s) P[s, a, s'],   R_pi[s] = sum_a pi(a|s) R[s, a]
    """
    pi = policy_matrix(policy, mdp.n_actions)
    return np.einsum("sa,sat->st", pi, mdp.P), (pi * mdp.R).sum(axis=1)


def evaluation_sweep(mdp: FiniteMDP, policy: np.ndarray, values: np.ndarray) -> np.ndarray:
    """One synchronous sweep of iterative policy evaluation, S&B eq. 4.5:

        V'[s] = sum_a pi(a|s) (R[s, a] + gamma * sum_s' P[s, a, s'] V[s'])
    """
    pi = policy_matrix(policy, mdp.n_actions)
    return (pi * action_values(mdp, values)).sum(axis=1)


def evaluate_policy(
    mdp: FiniteMDP, policy: np.ndarray, theta: float = 1e-10, max_sweeps: int = 1_000_000, values: np.ndarray | None = None
) -> np.ndarray:
    """Iterative policy evaluation (S&B section 4.1): sweeps until the largest change is below ``theta``."""
    values = np.zeros(mdp.n_states) if values is None else np.array(values, dtype=np.float64)
    for _ in range(max_sweeps):
        new = evaluation_sweep(mdp, policy, values)
        delta = np.abs(new - values).max()
        values = new
        if delta < theta:
            break
    return values


def evaluate_policy_exact(mdp: FiniteMDP, policy: np.ndarray) -> np.ndarray:
    """The Bellman equation of ``policy`` solved as a linear system (S&B eq. 4.4 in matrix form):

        V = R_pi + gamma * P_pi V   =>   V_N = (I - gamma * P_pi[N, N])^-1 R_pi[N]

    over the non-terminal states ``N``, and ``V = 0`` on terminal states. For ``gamma < 1`` this
    equals ``(I - gamma P_pi)^-1 R_pi`` on all states. For ``gamma = 1`` the system is singular
    unless the policy reaches a terminal state from everywhere: ``ImproperPolicyError``.
    """
    P_pi, R_pi = policy_model(mdp, policy)
    live = ~mdp.terminal
    if mdp.gamma == 1.0 and not _reaches_terminal(P_pi, mdp.terminal).all():
        raise ImproperPolicyError("the policy never reaches a terminal state from some states, so their "
                                  "undiscounted value is unbounded or undefined; use gamma < 1")
    values = np.zeros(mdp.n_states)
    system = np.eye(int(live.sum())) - mdp.gamma * P_pi[np.ix_(live, live)]
    values[live] = np.linalg.solve(system, R_pi[live])
    return values


def _reaches_terminal(P_pi: np.ndarray, terminal: np.ndarray) -> np.ndarray:
    """Bool ``[S]``: states from which the Markov chain ``P_pi`` reaches a terminal state."""
    edges = P_pi > 0
    reached = terminal.copy()
    while True:
        grown = reached | edges[:, reached].any(axis=1)
        if (grown == reached).all():
            return reached
        reached = grown


@dataclass
class Iterate:
    """One iteration of value or policy iteration."""

    values: np.ndarray  # V_{k+1}  [S]
    policy: np.ndarray  # pi_{k+1} = greedy(V_k)  [S]
    delta: float  # max_s |V_{k+1}(s) - V_k(s)|
    changed: int  # states where pi_{k+1} differs from pi_k


def value_iteration_steps(mdp: FiniteMDP, values: np.ndarray | None = None) -> Iterator[Iterate]:
    """Value iteration (S&B section 4.4, eq. 4.10), one sweep per iterate, without end:

        V_{k+1}[s] = max_a (R[s, a] + gamma * sum_s' P[s, a, s'] V_k[s'])
    """
    values = np.zeros(mdp.n_states) if values is None else np.array(values, dtype=np.float64)
    policy = None
    while True:
        q = action_values(mdp, values)
        new_policy = greedy(q, policy)
        new_values = q.max(axis=1)
        yield _iterate(values, new_values, policy, new_policy)
        values, policy = new_values, new_policy


def policy_iteration_steps(
    mdp: FiniteMDP, eval_sweeps: int | None = None, values: np.ndarray | None = None
) -> Iterator[Iterate]:
    """Policy iteration (S&B section 4.3), one improvement + evaluation per iterate, without end:

        pi_{k+1} = greedy(V_k)
        V_{k+1}  = V^{pi_{k+1}}                        (eval_sweeps=None: exact, evaluate_policy_exact)
        V_{k+1}  = (T^{pi_{k+1}})^eval_sweeps V_k       (modified policy iteration, Puterman 6.5)

    ``values`` is V_0 (zeros by default), which only serves to pick pi_1.
    """
    values = np.zeros(mdp.n_states) if values is None else np.array(values, dtype=np.float64)
    policy = None
    while True:
        new_policy = greedy(action_values(mdp, values), policy)
        if eval_sweeps is None:
            new_values = evaluate_policy_exact(mdp, new_policy)
        else:
            new_values = values
            for _ in range(eval_sweeps):
                new_values = evaluation_sweep(mdp, new_policy, new_values)
        yield _iterate(values, new_values, policy, new_policy)
        values, policy = new_values, new_policy


def _iterate(values: np.ndarray, new_values: np.ndarray, policy: np.ndarray | None, new_policy: np.ndarray) -> Iterate:
    changed = len(new_policy) if policy is None else int((new_policy != policy).sum())
    return Iterate(new_values, new_policy, float(np.abs(new_values - values).max()), changed)


@dataclass
class DPResult:
    values: np.ndarray  # [S]
    policy: np.ndarray  # [S], greedy with respect to ``values``
    iterations: int
    converged: bool


def run_until_converged(
    steps: Iterator[Iterate],
    mdp: FiniteMDP,
    theta: float,
    max_iterations: int,
    on_iterate: Callable[[Iterate], bool | None] | None = None,
) -> DPResult:
    """Iterate until ``delta < theta`` with an unchanged greedy policy, ``max_iterations``
    iterates, or ``on_iterate(iterate)`` returning False; the returned policy is greedy with
    respect to the final values."""
    converged = False
    for iterations, last in enumerate(steps, start=1):
        converged = last.delta < theta and last.changed == 0
        stop = on_iterate is not None and on_iterate(last) is False
        if converged or stop or iterations >= max_iterations:
            break
    policy = greedy(action_values(mdp, last.values), last.policy)
    return DPResult(last.values, policy, iterations, converged)


def value_iteration(mdp: FiniteMDP, theta: float = 1e-10, max_iterations: int = MAX_ITERATIONS) -> DPResult:
    """Value iteration until the largest change of a sweep is below ``theta`` (S&B section 4.4)."""
    return run_until_converged(value_iteration_steps(mdp), mdp, theta, max_iterations)


def policy_iteration(
    mdp: FiniteMDP, eval_sweeps: int | None = None, theta: float = 1e-10, max_iterations: int = MAX_ITERATIONS
) -> DPResult:
    """Policy iteration until the policy is stable (S&B section 4.3); with ``eval_sweeps``,
    modified policy iteration, which also waits for the values to settle within ``theta``."""
    return run_until_converged(policy_iteration_steps(mdp, eval_sweeps), mdp, theta, max_iterations)
