"""Finite MDPs and dynamic programming: against explicit matrices, brute force and S&B's numbers."""

import itertools

import gymnasium as gym
import numpy as np
import pytest

from policyopt.algos.tabular import dp
from policyopt.algos.tabular.mdp import FiniteMDP, MDPEnv, from_env, grid_world


def random_mdp(seed, n_states=5, n_actions=3, gamma=0.9, n_terminal=1):
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.ones(n_states), size=(n_states, n_actions))
    R = rng.normal(size=(n_states, n_actions))
    return FiniteMDP.from_arrays(P, R, gamma, terminal=list(range(n_terminal)))


def literal_value(mdp, policy):
    """(I - gamma P_pi)^-1 R_pi on all states, written out."""
    pi = np.eye(mdp.n_actions)[policy]
    P_pi = np.einsum("sa,sat->st", pi, mdp.P)
    R_pi = (pi * mdp.R).sum(axis=1)
    return np.linalg.inv(np.eye(mdp.n_states) - mdp.gamma * P_pi) @ R_pi


TOY_TEXT = {
    "FrozenLake4x4": lambda: gym.make("FrozenLake-v1"),
    "FrozenLake8x8": lambda: gym.make("FrozenLake-v1", map_name="8x8"),
    "Taxi": lambda: gym.make("Taxi-v4"),
}


# --- the FiniteMDP type ------------------------------------------------------------------------
def test_from_arrays_makes_terminal_states_absorbing_and_validates():
    mdp = random_mdp(0, n_terminal=2)
    assert (mdp.P[:2, :, :2] == np.eye(2)[:, None, :]).all() and (mdp.R[:2] == 0).all()
    assert np.allclose(mdp.initial, [0, 0, 1 / 3, 1 / 3, 1 / 3])
    with pytest.raises(ValueError, match="probability distribution"):
        FiniteMDP.from_arrays(np.ones((2, 1, 2)), np.zeros((2, 1)), 0.9)
    with pytest.raises(ValueError, match="gamma"):
        FiniteMDP.from_arrays(np.full((2, 1, 2), 0.5), np.zeros((2, 1)), 1.5)
    with pytest.raises(ValueError, match=r"\[S, A, S\]"):
        FiniteMDP.from_arrays(np.full((2, 1, 3), 1 / 3), np.zeros((2, 1)), 0.9)


def test_from_env_reads_toy_text_models():
    lake = from_env(gym.make("FrozenLake-v1"), 0.99)
    assert lake.P.shape == (16, 4, 16)
    assert np.flatnonzero(lake.terminal).tolist() == [5, 7, 11, 12, 15]  # holes and the goal
    assert lake.initial[0] == 1.0
    assert np.isclose(lake.P[0, 0, 4], 1 / 3)  # slippery: LEFT from the start slides down a third of the time
    assert np.isclose(lake.R[14, 2], 1 / 3)  # RIGHT next to the goal reaches it a third of the time

    cliff = from_env(gym.make("CliffWalking-v1"), 1.0)
    assert np.flatnonzero(cliff.terminal).tolist() == [47]
    assert cliff.R[36, 1] == -100 and cliff.P[36, 1, 36] == 1.0  # stepping into the cliff: back to the start

    taxi = from_env(gym.make("Taxi-v4"), 0.99)
    assert taxi.P.shape == (500, 6, 500) and taxi.terminal.sum() == 4  # delivered at each destination
    assert np.isclose(taxi.initial.sum(), 1.0)


def test_mdp_env_round_trip_and_sampling():
    mdp = random_mdp(1)
    env = MDPEnv(mdp)
    back = from_env(env, mdp.gamma)
    np.testing.assert_allclose(back.P, mdp.P)
    np.testing.assert_allclose(back.R, mdp.R)
    assert (back.terminal == mdp.terminal).all()
    state, _ = env.reset(seed=0)
    counts = np.zeros(mdp.n_states)
    for _ in range(4000):
        env.s = 2
        counts[env.step(1)[0]] += 1
    np.testing.assert_allclose(counts / 4000, mdp.P[2, 1], atol=0.03)


def test_from_env_rejects_envs_that_are_not_finite():
    with pytest.raises(ValueError, match="Discrete observation and action spaces"):
        from_env(gym.make("CartPole-v1"), 0.9)


# --- policy evaluation --------------------------------------------------------------------------
def test_gridworld_random_policy_values_match_sutton_barto_figure_4_1():
    mdp = grid_world()
    uniform = np.full((16, 4), 0.25)
    expected = np.array([0, -14, -20, -22, -14, -18, -20, -20, -20, -20, -18, -14, -22, -20, -14, 0], dtype=float)
    np.testing.assert_allclose(dp.evaluate_policy_exact(mdp, uniform), expected, atol=1e-9)
    np.testing.assert_allclose(dp.evaluate_policy(mdp, uniform, theta=1e-12), expected, atol=1e-8)


def test_exact_evaluation_equals_the_matrix_inverse_and_iterative_evaluation():
    for seed in range(3):
        mdp = random_mdp(seed)
        policy = np.random.default_rng(seed).integers(mdp.n_actions, size=mdp.n_states)
        exact = dp.evaluate_policy_exact(mdp, policy)
        np.testing.assert_allclose(exact, literal_value(mdp, policy), atol=1e-12)
        np.testing.assert_allclose(dp.evaluate_policy(mdp, policy, theta=1e-13), exact, atol=1e-10)
        np.testing.assert_allclose(exact[mdp.terminal], 0.0)


def test_undiscounted_improper_policy_is_an_error():
    mdp = grid_world()
    always_up = np.zeros(16, dtype=np.int64)  # the top row bumps into the wall forever
    with pytest.raises(dp.ImproperPolicyError):
        dp.evaluate_policy_exact(mdp, always_up)


# --- control -----------------------------------------------------------------------------------
def test_value_iteration_finds_the_best_deterministic_policy_by_brute_force():
    for seed in range(3):
        mdp = random_mdp(seed, n_states=4, n_actions=3)
        every_policy = [np.array(p) for p in itertools.product(range(3), repeat=4)]
        best = np.max([dp.evaluate_policy_exact(mdp, p) for p in every_policy], axis=0)
        vi = dp.value_iteration(mdp, theta=1e-13)
        pi = dp.policy_iteration(mdp)
        np.testing.assert_allclose(vi.values, best, atol=1e-10)
        np.testing.assert_allclose(pi.values, best, atol=1e-12)


@pytest.mark.parametrize("name", TOY_TEXT)
def test_vi_and_pi_agree_with_the_exact_value_of_their_policy(name):
    mdp = from_env(TOY_TEXT[name](), 0.99)
    vi = dp.value_iteration(mdp)
    pi = dp.policy_iteration(mdp)
    assert vi.converged and pi.converged
    np.testing.assert_allclose(vi.values, literal_value(mdp, vi.policy), rtol=0, atol=1e-8)
    np.testing.assert_allclose(pi.values, literal_value(mdp, pi.policy), rtol=0, atol=1e-8)
    np.testing.assert_allclose(vi.values, pi.values, rtol=0, atol=1e-8)
    assert pi.iterations < 25  # policy iteration converges in few (exact) steps


def test_value_iteration_is_policy_iteration_with_one_evaluation_sweep():
    mdp = from_env(gym.make("FrozenLake-v1"), 0.99)
    vi_steps = dp.value_iteration_steps(mdp)
    mpi_steps = dp.policy_iteration_steps(mdp, eval_sweeps=1)
    for vi, mpi in itertools.islice(zip(vi_steps, mpi_steps, strict=True), 300):
        np.testing.assert_allclose(vi.values, mpi.values, rtol=0, atol=1e-12)
        assert (vi.policy == mpi.policy).all()
    more_sweeps = dp.policy_iteration(mdp, eval_sweeps=20)
    exact = dp.policy_iteration(mdp)
    assert exact.iterations < more_sweeps.iterations < dp.value_iteration(mdp).iterations
    np.testing.assert_allclose(more_sweeps.values, exact.values, atol=1e-8)


def test_policy_iteration_on_the_gridworld_from_the_random_policy_values():
    mdp = grid_world()  # gamma = 1: policy iteration needs a proper first policy
    start = dp.evaluate_policy_exact(mdp, np.full((16, 4), 0.25))
    result = dp.run_until_converged(dp.policy_iteration_steps(mdp, values=start), mdp, 1e-10, 100)
    distance = np.array([0, 1, 2, 3, 1, 2, 3, 2, 2, 3, 2, 1, 3, 2, 1, 0])  # steps to the nearest corner
    np.testing.assert_allclose(result.values, -distance)
    assert result.iterations <= 2  # S&B Figure 4.1: greedy on v_random is already optimal
