"""DQN and Double DQN: targets against explicit references, exploration, time limits, learning."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from policyopt.algos.dqn import DQN, dqn_target, linear_epsilon
from policyopt.envs import EnvError

SMALL = dict(preset=False, learning_starts=64, batch_size=32, log_interval=100, hidden_sizes=(32, 32))


@pytest.mark.parametrize("double_q,num_envs", [(False, 1), (True, 2)])
def test_smoke_cartpole(double_q, num_envs):
    agent = DQN("CartPole-v1", seed=0, double_q=double_q, num_envs=num_envs, target_network_frequency=50, **SMALL)
    logged = []
    agent.learn(300, progress=False, callback=lambda a, m: logged.append(m))
    assert agent.global_step == 300 and agent.num_updates == (300 - 64) // (4 * num_envs) + 1
    for key in ("loss/q", "diag/q", "diag/grad_norm", "diag/epsilon"):
        assert np.isfinite(logged[-1][key]), key
    action = agent.predict(gym.make("CartPole-v1").reset(seed=0)[0])
    assert agent.action_space.contains(int(action))


def test_box_action_space_is_rejected():
    with pytest.raises(EnvError, match="dqn needs a Discrete action space"):
        DQN("Pendulum-v1")


def test_double_dqn_selects_with_online_and_evaluates_with_target():
    reward = torch.tensor([1.0, 2.0])
    terminated = torch.tensor([False, True])
    next_q_target = torch.tensor([[1.0, 5.0, 3.0], [4.0, 0.0, 9.0]])
    next_q_online = torch.tensor([[0.0, 0.0, 7.0], [8.0, 0.0, 0.0]])
    # DQN: max of the target net; Double DQN: target net at the online argmax (2, then 0)
    torch.testing.assert_close(dqn_target(reward, terminated, next_q_target, 0.5), torch.tensor([1.0 + 0.5 * 5.0, 2.0]))
    torch.testing.assert_close(
        dqn_target(reward, terminated, next_q_target, 0.5, next_q_online), torch.tensor([1.0 + 0.5 * 3.0, 2.0])
    )
    # brute force over random batches: Double DQN never exceeds the max-based target
    gen = torch.Generator().manual_seed(0)
    qt, qo = torch.randn(64, 4, generator=gen), torch.randn(64, 4, generator=gen)
    r, d = torch.randn(64, generator=gen), torch.zeros(64, dtype=torch.bool)
    double = dqn_target(r, d, qt, 0.9, qo)
    expected = r + 0.9 * torch.stack([qt[i, qo[i].argmax()] for i in range(64)])
    torch.testing.assert_close(double, expected)
    assert (double <= dqn_target(r, d, qt, 0.9) + 1e-6).all()


def test_epsilon_schedule_and_exploration():
    assert linear_epsilon(1.0, 0.1, 0.5, 0.0) == 1.0
    assert linear_epsilon(1.0, 0.1, 0.5, 0.25) == pytest.approx(0.55)
    assert linear_epsilon(1.0, 0.1, 0.5, 0.9) == pytest.approx(0.1)
    agent = DQN("CartPole-v1", seed=0, start_e=1.0, end_e=1.0, **SMALL)
    obs = torch.zeros(2000, 4)
    greedy = agent.q_net(obs).argmax(-1)
    assert torch.equal(agent.act(obs, deterministic=True)[0], greedy)
    explored = agent.act(obs)[0]
    assert 0.4 < (explored == 1).float().mean() < 0.6  # epsilon = 1: uniform over both actions


def test_learns_bandit_values():
    agent = DQN("policyopt/Bandit-v0", seed=0, learning_rate=1e-3, target_network_frequency=20, train_frequency=1, **SMALL)
    agent.learn(600, progress=False)
    with torch.no_grad():
        q = agent.q_net(torch.ones(1, 1))[0]
    torch.testing.assert_close(q, torch.tensor([0.0, 1.0]), atol=0.1, rtol=0)
    assert agent.predict(np.ones(1, dtype=np.float32)) == 1


def test_values_bootstrap_through_the_time_limit():
    """Counter-v0 pays 1 every step and is only ever truncated (after 10 steps): with gamma = 0.5,
    Q = 1 / (1 - gamma) = 2 in every state. Treating the time limit as termination would make
    Q(obs 0.9), the state before the limit, 1."""
    agent = DQN(
        "policyopt/Counter-v0", seed=0, gamma=0.5, learning_rate=3e-3, target_network_frequency=10,
        train_frequency=1, **SMALL,
    )
    agent.learn(500, progress=False)
    with torch.no_grad():
        q = agent.q_net(torch.tensor([[0.0], [0.5], [0.9]])).max(-1).values
    torch.testing.assert_close(q, torch.full((3,), 2.0), atol=0.25, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("double_q", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dqn_reaches_475_on_cartpole(seed, double_q):
    """Within the 50k preset budget, the best of the greedy policies evaluated every 5000 steps
    scores >= 475 on 20 fresh episodes. The final policy alone is fragile (it passes 7 of 10 runs
    over seeds 0-4 and two float-rounding paths; benchmarks/results/acceptance/dqn.md)."""
    agent = DQN("CartPole-v1", seed=seed, double_q=double_q)
    agent.learn(progress=False, eval_every=5000)
    assert np.mean(agent.best_model().evaluate(20)) >= 475
