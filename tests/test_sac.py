"""SAC: soft targets and losses against explicit formulas, the tanh log-prob correction against
torch.distributions, the temperature's gradient sign, both action-space variants, learning."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import AffineTransform, Normal, TanhTransform, TransformedDistribution

from policyopt.algos.sac import SAC, sac_actor_loss, sac_actor_loss_grad, sac_critic_target, soft_state_value, temperature_gradient
from policyopt.core.distributions import Categorical, SquashedGaussian

from helpers import needs_envpool

SMALL = dict(preset=False, learning_starts=64, batch_size=32, log_interval=100, hidden_sizes=(32, 32))


@pytest.mark.parametrize("env_id,backend", [
    ("Pendulum-v1", "gymnasium"),
    ("CartPole-v1", "gymnasium"),
    pytest.param("Pendulum-v1", "envpool", marks=needs_envpool),
])
def test_smoke(env_id, backend):
    agent = SAC(env_id, seed=0, env_backend=backend, **SMALL)
    logged = []
    agent.learn(300, progress=False, callback=lambda a, m: logged.append(m))
    for key in ("loss/critic", "loss/actor", "loss/alpha", "diag/alpha", "diag/entropy", "diag/q"):
        assert np.isfinite(logged[-1][key]), key
    assert logged[-1]["diag/alpha"] < 1.0  # the temperature moved from its initial value
    raw = gym.make(env_id).reset(seed=0)[0]
    action = agent.predict(raw)
    assert agent.action_space.contains(int(action) if agent.discrete else action.astype(np.float32))


def test_variant_follows_the_action_space():
    box = SAC("Pendulum-v1", **SMALL)
    assert isinstance(box.actor.dist(torch.zeros(1, 3)), SquashedGaussian)
    assert box.target_entropy == -1.0
    discrete = SAC("CartPole-v1", **SMALL)
    assert isinstance(discrete.actor.dist(torch.zeros(1, 4)), Categorical)
    assert discrete.critic(torch.zeros(5, 4)).shape == (2, 5, 2)
    assert discrete.target_entropy == pytest.approx(0.89 * math.log(2))


def test_actor_log_prob_has_the_tanh_correction():
    """SAC's sampled action and log pi match torch's Normal -> tanh -> affine(loc, scale) density."""
    agent = SAC("Pendulum-v1", seed=0, **SMALL)  # actions in [-2, 2]: loc 0, scale 2
    obs = torch.randn(64, 3)
    torch.manual_seed(1)
    action, logp, probs = agent._policy(obs)
    assert probs is None and action.abs().max() < 2.0
    dist = agent.actor.dist(obs)
    reference = TransformedDistribution(
        Normal(dist.base.mean, dist.base.std), [TanhTransform(), AffineTransform(0.0, 2.0)]
    )
    torch.testing.assert_close(logp, reference.log_prob(action).sum(-1), atol=2e-3, rtol=1e-4)
    # without the correction the log-density would be that of the Gaussian alone
    assert not torch.allclose(logp, dist.base.log_prob(torch.atanh(action / 2.0)), atol=1e-2)


def test_soft_value_and_targets_follow_the_equations():
    q1, q2 = torch.tensor([1.0, 4.0]), torch.tensor([2.0, 3.0])
    logp = torch.tensor([-1.0, 0.5])
    torch.testing.assert_close(soft_state_value(q1, q2, logp, 0.2), torch.tensor([1.0 + 0.2, 3.0 - 0.1]))
    reward, terminated = torch.tensor([1.0, 1.0]), torch.tensor([False, True])
    torch.testing.assert_close(
        sac_critic_target(reward, terminated, q1, q2, logp, 0.2, 0.9), torch.tensor([1.0 + 0.9 * 1.2, 1.0])
    )
    torch.testing.assert_close(sac_actor_loss(q1, q2, logp, 0.2), -torch.tensor([1.2, 2.9]).mean())


def test_actor_loss_gradient_is_autograds():
    q = torch.randn(2, 64)
    q[1, :8] = q[0, :8]  # ties: torch.min's backward splits them
    logp = torch.randn(64, requires_grad=True)
    q.requires_grad_()
    alpha = torch.tensor(0.3)
    theirs = torch.autograd.grad(sac_actor_loss(q[0], q[1], logp, alpha), [q, logp])
    ours = sac_actor_loss_grad(q.detach(), alpha)
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    assert (ours[0][:, :8] == -0.5 / 64).all()


def test_discrete_expectations_are_exact_sums_over_actions():
    gen = torch.Generator().manual_seed(0)
    q1, q2 = torch.randn(6, 3, generator=gen), torch.randn(6, 3, generator=gen)
    dist = Categorical(torch.randn(6, 3, generator=gen))
    probs, logp, alpha = dist.probs, dist.logits, 0.3
    brute = torch.zeros(6)
    for b in range(6):
        for a in range(3):
            brute[b] += probs[b, a] * (min(q1[b, a], q2[b, a]) - alpha * logp[b, a])
    torch.testing.assert_close(soft_state_value(q1, q2, logp, alpha, probs), brute)
    torch.testing.assert_close(sac_actor_loss(q1, q2, logp, alpha, probs), -brute.mean())
    entropy = -(probs * logp).sum(-1)
    torch.testing.assert_close(temperature_gradient(logp, 0.5, probs), (entropy - 0.5).mean())


@pytest.mark.parametrize("entropy,sign", [(-3.0, -1.0), (1.0, 1.0)])
def test_temperature_rises_when_entropy_is_below_target(entropy, sign):
    """target entropy -1: entropy -3 is too low, so dJ/dlog_alpha < 0 and gradient descent raises alpha."""
    log_alpha = torch.tensor(math.log(0.5), requires_grad=True)
    logp = torch.full((8,), -entropy)
    (-(log_alpha * (logp + -1.0)).mean()).backward()  # J(alpha) of eq. 18, through autograd
    grad = temperature_gradient(logp, -1.0)
    assert grad.item() == log_alpha.grad.item() == pytest.approx(entropy - (-1.0))
    assert torch.sign(grad).item() == sign


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_critic_gradients_are_autograds_of_the_critic_loss(env_id):
    """critic_gradients hands autograd dJ_Q/dQ written out; the result is autograd's from J_Q itself."""
    agent = SAC(env_id, seed=0, config={"record_update": False})
    gen = torch.Generator().manual_seed(1)
    obs, next_obs = torch.randn(64, agent.obs_dim, generator=gen), torch.randn(64, agent.obs_dim, generator=gen)
    if agent.discrete:
        action = torch.randint(0, 2, (64,), generator=gen)
    else:
        action = torch.rand(64, 1, generator=gen) * 4 - 2
    reward, terminated = torch.randn(64, generator=gen), torch.rand(64, generator=gen) < 0.1
    torch.manual_seed(2)
    grads, metrics = agent.critic_gradients(obs, action, reward, next_obs, terminated)
    torch.manual_seed(2)
    with torch.no_grad():
        next_action, next_logp, next_probs = agent._policy(next_obs)
        next_q = agent._q(agent.critic_target, next_obs, next_action)
        target = sac_critic_target(reward, terminated, next_q[0], next_q[1], next_logp, agent.temperature(), 0.99, next_probs)
    q = agent.critic(obs).gather(-1, action.expand(2, -1).unsqueeze(-1)).squeeze(-1) if agent.discrete else agent.critic(obs, action)
    loss = sum(0.5 * ((q[k] - target) ** 2).mean() for k in range(2))
    for ours, theirs in zip(grads, torch.autograd.grad(loss, list(agent.critic.parameters())), strict=True):
        torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(metrics["loss/critic"], loss.detach())


def test_fixed_temperature_without_autotune():
    agent = SAC("Pendulum-v1", seed=0, autotune=False, alpha=0.1, **SMALL)
    assert "temperature" not in agent.optimizers
    agent.learn(200, progress=False)
    assert agent.temperature().item() == pytest.approx(0.1)


def test_learns_target_env():
    """Target-v0: one step, reward -||a - obs||^2, optimum 0; a random policy averages about -1.4."""
    agent = SAC("policyopt/Target-v0", seed=0, learning_rate=3e-3, **{**SMALL, "hidden_sizes": (64, 64)})
    agent.learn(1_500, progress=False)
    assert np.mean(agent.evaluate(50)) > -0.05


def test_discrete_learns_bandit():
    """Q -> (0, 1); with a low entropy target (0.2 * log 2) alpha falls and pi(a=1) -> softmax(Q / alpha)_1 ~ 1."""
    agent = SAC("policyopt/Bandit-v0", seed=0, learning_rate=3e-3, target_entropy_scale=0.2, **SMALL)
    agent.learn(600, progress=False)
    with torch.no_grad():
        probs = agent.actor.dist(torch.ones(1, 1)).probs[0]
        q = agent.critic(torch.ones(1, 1))[:, 0]
    assert probs[1] > 0.9
    torch.testing.assert_close(q, torch.tensor([[0.0, 1.0], [0.0, 1.0]]), atol=0.1, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_solves_pendulum_in_20k_steps(seed):
    agent = SAC("Pendulum-v1", seed=seed)
    agent.learn(20_000, progress=False)
    assert np.mean(agent.evaluate(20)) >= -200
