"""DDPG and TD3: targets, target policy smoothing, exploration bounds, rejection of Discrete
actions, and learning on a task with a known optimum."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from policyopt.algos.ddpg import DDPG
from policyopt.algos.td3 import TD3, smoothed_target_action, td3_target
from policyopt.core.nets import ContinuousQ, DeterministicActor, mlp
from policyopt.envs import EnvError

SMALL = dict(preset=False, learning_starts=64, batch_size=32, log_interval=100, hidden_sizes=(32, 32))


@pytest.mark.parametrize("cls", [DDPG, TD3])
def test_smoke_pendulum(cls):
    agent = cls("Pendulum-v1", seed=0, **SMALL)
    logged = []
    agent.learn(300, progress=False, callback=lambda a, m: logged.append(m))
    for key in ("loss/critic", "loss/actor", "diag/q"):
        assert np.isfinite(logged[-1][key]), key
    action = agent.predict(gym.make("Pendulum-v1").reset(seed=0)[0])
    assert action.shape == (1,) and agent.action_space.contains(action.astype(np.float32))


@pytest.mark.parametrize("cls", [DDPG, TD3])
def test_discrete_action_space_is_rejected(cls):
    with pytest.raises(EnvError, match=f"{cls.name} needs a Box action space"):
        cls("CartPole-v1")


def test_exploration_stays_inside_the_bounds():
    agent = DDPG("Pendulum-v1", seed=0, exploration_noise=10.0, **SMALL)
    obs = torch.randn(1000, 3)
    noisy, _ = agent.act(obs)
    assert noisy.abs().max() <= 2.0 and (noisy.abs() == 2.0).any()
    assert torch.equal(agent.act(obs, deterministic=True)[0], agent.ac.actor(obs))


def test_target_policy_smoothing_clips_the_noise_then_the_action():
    mean = torch.tensor([[0.0, 0.9], [0.5, -0.95]])
    noise = torch.tensor([[0.3, 0.05], [-2.0, -0.1]])
    low, high = torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0])
    out = smoothed_target_action(mean, noise, 0.5, low, high)
    # noise clipped to [-0.5, 0.5] first, then the action to the bounds
    torch.testing.assert_close(out, torch.tensor([[0.3, 0.95], [0.0, -1.0]]))
    # per-dimension clip ranges (noise_clip * scale for asymmetric bounds)
    out = smoothed_target_action(torch.zeros(1, 2), torch.tensor([[1.0, 1.0]]), torch.tensor([0.2, 0.6]), low, high)
    torch.testing.assert_close(out, torch.tensor([[0.2, 0.6]]))


def test_td3_target_takes_the_smaller_critic_and_stops_at_termination():
    reward = torch.tensor([1.0, 1.0, 1.0])
    terminated = torch.tensor([False, False, True])
    q1, q2 = torch.tensor([3.0, 10.0, 50.0]), torch.tensor([5.0, 4.0, 60.0])
    torch.testing.assert_close(td3_target(reward, terminated, q1, q2, 0.5), torch.tensor([2.5, 3.0, 1.0]))


def test_fused_critics_equal_separate_mlps():
    critics = ContinuousQ(3, 2, (16, 8), num_critics=2)
    obs, action = torch.randn(5, 3), torch.randn(5, 2)
    q = critics(obs, action)
    net = critics.net
    for k in range(2):
        reference = mlp(5, (16, 8), 1, "relu", ortho_init=False)
        linears = [m for m in reference if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            for linear, weight, bias in zip(linears, net.weights, net.biases):
                linear.weight.copy_(weight[k].T)
                linear.bias.copy_(bias[k, 0])
        torch.testing.assert_close(q[k], reference(torch.cat([obs, action], -1)).squeeze(-1))


def test_detached_critic_passes_gradient_to_the_action_only():
    critics = ContinuousQ(3, 1, (8,), num_critics=2)
    actor = DeterministicActor(3, gym.spaces.Box(-2.0, 2.0, (1,)), (8,))
    critics(torch.randn(4, 3), actor(torch.randn(4, 3)), detach_params=True)[0].sum().backward()
    assert all(p.grad is None for p in critics.parameters())
    assert all(p.grad is not None for p in actor.parameters())


@pytest.mark.parametrize("cls", [DDPG, TD3])
def test_learns_target_env(cls):
    """Target-v0: one step, reward -||a - obs||^2, optimum 0; a random policy averages about -1.4."""
    agent = cls("policyopt/Target-v0", seed=0, learning_rate=3e-3, **{**SMALL, "hidden_sizes": (64, 64)})
    agent.learn(1_500, progress=False)
    assert np.mean(agent.evaluate(50)) > -0.05


@pytest.mark.slow
@pytest.mark.parametrize("cls", [DDPG, TD3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_solves_pendulum_in_20k_steps(cls, seed):
    agent = cls("Pendulum-v1", seed=seed)
    agent.learn(20_000, progress=False)
    assert np.mean(agent.evaluate(20)) >= -200
