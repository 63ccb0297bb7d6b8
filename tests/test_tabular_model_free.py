"""Model-free tabular control: the pure functions against brute force, the agents on real envs."""

import shutil

import gymnasium as gym
import numpy as np
import pytest

from policyopt import loops
from policyopt.algos.tabular import dp
from policyopt.algos.tabular import model_free as mf
from policyopt.algos.tabular.agents import SARSA, ExpectedSARSA, MCControl, QLearning
from policyopt.algos.tabular.mdp import MDPEnv, from_env, grid_world

MODEL_FREE = [MCControl, SARSA, QLearning, ExpectedSARSA]


# --- pure functions ----------------------------------------------------------------------------
def test_epsilon_greedy_samples_follow_its_probabilities():
    q_row = np.array([1.0, 3.0, 3.0, -2.0])
    probs = mf.epsilon_greedy_probs(q_row, 0.2)
    np.testing.assert_allclose(probs, [0.05, 0.45, 0.45, 0.05])
    rng = np.random.default_rng(0)
    counts = np.bincount([mf.epsilon_greedy_action(q_row, 0.2, rng) for _ in range(20_000)], minlength=4)
    np.testing.assert_allclose(counts / 20_000, probs, atol=0.015)
    assert mf.greedy_action(np.array([0.0, 1.0]), rng) == 1


def test_td_targets():
    q_next = np.array([1.0, 4.0, 2.0])
    probs = np.array([0.25, 0.5, 0.25])
    assert mf.sarsa_target(-1.0, False, 2.0, 0.5) == 0.0
    assert mf.q_learning_target(-1.0, False, q_next, 0.5) == 1.0
    assert mf.expected_sarsa_target(-1.0, False, q_next, probs, 0.5) == -1.0 + 0.5 * 2.75
    for target in (mf.sarsa_target(3.0, True, 2.0, 0.5), mf.q_learning_target(3.0, True, q_next, 0.5),
                   mf.expected_sarsa_target(3.0, True, q_next, probs, 0.5)):
        assert target == 3.0  # no bootstrap past a terminal state


def test_episode_returns_and_first_visits_against_brute_force():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=12)
    returns = mf.episode_returns(rewards, 0.9)
    brute = [sum(0.9**k * r for k, r in enumerate(rewards[t:])) for t in range(12)]
    np.testing.assert_allclose(returns, brute)
    states, actions = rng.integers(3, size=12), rng.integers(2, size=12)
    seen, expected = set(), []
    for pair in zip(states.tolist(), actions.tolist(), strict=True):
        expected.append(pair not in seen)
        seen.add(pair)
    assert mf.first_visits(states, actions, 2).tolist() == expected


def test_visit_count_step_size_is_the_incremental_sample_mean():
    samples = np.random.default_rng(0).normal(size=50)
    estimate = 0.0
    for n, g in enumerate(samples, start=1):
        estimate += mf.step_size("visits", 0.1, n, 0.0) * (g - estimate)
    assert np.isclose(estimate, samples.mean())
    assert mf.step_size("linear", 0.4, 7, 0.75) == pytest.approx(0.1)
    assert mf.linear_schedule(1.0, 0.1, 0.5, 0.25) == pytest.approx(0.55)
    assert mf.linear_schedule(1.0, 0.1, 0.5, 0.9) == pytest.approx(0.1)


# --- agents --------------------------------------------------------------------------------------
def gridworld_env():
    return MDPEnv(grid_world(), grid_shape=(4, 4))


GRIDWORLD_RUNS = [
    pytest.param(SARSA, {}, 4000, id="sarsa"),
    pytest.param(QLearning, {}, 4000, id="q-learning"),
    pytest.param(ExpectedSARSA, {}, 4000, id="expected-sarsa"),
    # The incremental sample mean weighs the returns of the early, near-random policies as much
    # as the recent ones, so it needs more episodes than a constant step size.
    pytest.param(MCControl, {"lr_schedule": "visits"}, 20_000, id="mc-control-sample-mean"),
    pytest.param(MCControl, {"lr_schedule": "constant"}, 4000, id="mc-control-constant-alpha"),
]


@pytest.mark.parametrize("cls,overrides,steps", GRIDWORLD_RUNS)
def test_learns_the_optimal_policy_of_the_gridworld(cls, overrides, steps):
    """Every state's greedy action is optimal (S&B Example 4.1, undiscounted shortest paths)."""
    config = {"gamma": 1.0, "start_e": 0.3, "end_e": 0.3, **overrides}
    agent = cls(gridworld_env, seed=0, config=config).learn(steps, progress=False)
    mdp = grid_world()
    optimal = dp.value_iteration(mdp).values
    np.testing.assert_allclose(dp.evaluate_policy_exact(mdp, agent.greedy_policy()), optimal)
    assert agent.global_step == steps and agent.num_updates > 0


@pytest.mark.parametrize("cls", MODEL_FREE, ids=lambda c: c.name)
def test_smoke_frozen_lake_predict_save_load(cls, tmp_path):
    agent = cls("FrozenLake-v1", seed=1, config={"log_interval": 100}).learn(300, progress=False)
    assert agent.predict(0) in range(4)
    assert agent.predict(np.array([[0, 5], [14, 15]])).shape == (2, 2)
    path = agent.save(tmp_path / "agent.pt")
    loaded = cls.load(path)
    np.testing.assert_array_equal(loaded.q, agent.q)
    assert loaded.evaluate(5, seed=3) == agent.evaluate(5, seed=3)


def test_same_seed_same_table_and_resume_equals_uninterrupted(tmp_path):
    run = tmp_path / "run"
    full = SARSA("CliffWalking-v1", seed=3, config={"log_interval": 250}).learn(
        2000, run_dir=run, progress=False, checkpoint_every=1000
    )
    again = SARSA("CliffWalking-v1", seed=3, config={"log_interval": 250}).learn(2000, progress=False)
    np.testing.assert_array_equal(full.q, again.q)

    cut = tmp_path / "cut"
    shutil.copytree(run, cut)
    (cut / "model.pt").unlink()
    latest = sorted((cut / "checkpoints").glob("step_*.pt"))
    assert [p.name for p in latest] == ["step_000000001000.pt", "step_000000002000.pt"]
    latest[-1].unlink()
    resumed = loops.resume(cut, progress=False)
    assert resumed.global_step == 2000
    np.testing.assert_array_equal(resumed.q, full.q)
    np.testing.assert_array_equal(resumed.visits, full.visits)


def online_return(agent, steps):
    """Mean return of the episodes of the second half of training (the epsilon-greedy behavior)."""
    totals = []

    def record(agent, metrics):
        if "rollout/episodes" in metrics and agent.global_step > steps // 2:
            totals.append((metrics["rollout/ep_return"] * metrics["rollout/episodes"], metrics["rollout/episodes"]))

    agent.learn(steps, progress=False, callback=record)
    return sum(t for t, _ in totals) / sum(n for _, n in totals)


def test_cliff_walking_sarsa_takes_the_safe_path_q_learning_the_optimal_one():
    """S&B Example 6.6 with the presets' constant epsilon 0.1: Q-learning's greedy policy walks
    along the cliff (return -13, optimal) but its epsilon-greedy behavior falls off; SARSA learns
    the path one row away from the cliff (return -15), the best epsilon-greedy policy's (see the
    next test), and earns more online."""
    steps = 20_000
    sarsa, q_learning = SARSA("CliffWalking-v1", seed=0), QLearning("CliffWalking-v1", seed=0)
    assert sarsa.config.start_e == sarsa.config.end_e == 0.1  # the CliffWalking-v1 preset
    sarsa_online, q_online = online_return(sarsa, steps), online_return(q_learning, steps)
    assert q_learning.evaluate(1)[0] == -13.0
    assert sarsa.evaluate(1)[0] == -15.0
    assert sarsa_online > q_online + 10


def test_cliff_walking_best_epsilon_greedy_policy_is_the_safe_path():
    """The reference for SARSA: value iteration where the env enforces epsilon-soft actions
    (S&B section 5.4) goes up twice and crosses one row away from the cliff (return -15);
    plain value iteration walks along the cliff (return -13)."""
    mdp = from_env(gym.make("CliffWalking-v1"), 1.0)
    soft = dp.value_iteration(mdp.epsilon_soft(0.1))
    up, right, down = 0, 1, 2
    assert soft.policy[36] == soft.policy[24] == up and (soft.policy[12:23] == right).all() and soft.policy[23] == down
    assert mdp.initial @ dp.value_iteration(mdp).values == -13.0


def test_q_learning_succeeds_on_slippery_frozen_lake():
    """Issue 5 acceptance: >= 0.7 success on slippery FrozenLake 4x4 over 1000 greedy episodes
    (the optimal gamma-0.99 policy succeeds about 0.73 of the time)."""
    agent = QLearning("FrozenLake-v1", seed=0, config={"log_interval": 10_000}).learn(progress=False)
    assert agent.global_step == 30_000  # the FrozenLake-v1 preset's budget
    assert np.mean(agent.evaluate(1000)) >= 0.7


def test_model_free_pictures_know_the_terminal_cells_from_the_env_model():
    """No greedy-policy arrow on FrozenLake's holes and goal: read from env.unwrapped.P, for drawing only."""
    agent = QLearning("FrozenLake-v1", seed=0)
    assert np.flatnonzero(agent.terminal_states()).tolist() == [5, 7, 11, 12, 15]
