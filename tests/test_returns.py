"""Return estimators against brute-force references written from the definitions."""

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from policyopt.core.diagnostics import approx_kl
from policyopt.core.returns import backward_recursion, discounted_returns, gae, next_values_from, nstep_returns, standardize, vtrace


def random_rollout(T=12, N=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(T, N, generator=g)
    values = torch.randn(T, N, generator=g)
    next_values = torch.randn(T, N, generator=g)
    terminated = torch.rand(T, N, generator=g) < 0.15
    truncated = (torch.rand(T, N, generator=g) < 0.15) & ~terminated
    # inside an episode next_values[t] must be values[t + 1]
    dones = terminated | truncated
    next_values[:-1] = torch.where(dones[:-1], next_values[:-1], values[1:])
    return rewards, values, next_values, terminated, dones


def brute_force_gae(rewards, values, next_values, terminated, dones, gamma, lam):
    """A_t = sum_k (gamma lam)^k delta_{t+k}, the sum stopping at the end of t's episode."""
    r, v, nv, term, done = (x.double().numpy() for x in (rewards, values, next_values, terminated, dones))
    T, N = r.shape
    adv = np.zeros((T, N))
    for n in range(N):
        for t in range(T):
            total, k = 0.0, t
            while k < T:
                delta = r[k, n] + gamma * (1 - term[k, n]) * nv[k, n] - v[k, n]
                total += (gamma * lam) ** (k - t) * delta
                if done[k, n]:
                    break
                k += 1
            adv[t, n] = total
    return adv


def brute_force_returns(rewards, next_values, terminated, dones, gamma):
    """G_t = sum of discounted rewards to the end of the episode (or rollout), plus the bootstrap there."""
    r, nv, term, done = (x.double().numpy() for x in (rewards, next_values, terminated, dones))
    T, N = r.shape
    out = np.zeros((T, N))
    for n in range(N):
        for t in range(T):
            total, k = 0.0, t
            while True:
                total += gamma ** (k - t) * r[k, n]
                if done[k, n] or k == T - 1:
                    total += gamma ** (k - t + 1) * (1 - term[k, n]) * nv[k, n]
                    break
                k += 1
            out[t, n] = total
    return out


class _PassThrough(TorchDispatchMode):
    """Watches the tensor operations (``graphs.recording()`` is then true) and runs them."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_backward_recursion_agrees_on_all_its_paths_and_differentiates():
    """x_t = d_t + k_t x_{t+1}: the NumPy loop, the tensor loop (taken while a record watches) and
    the autograd loop give the same bits; d(sum x)/d d_t = sum over s <= t of k_s ... k_{t-1}."""
    gen = torch.Generator().manual_seed(0)
    d, k = torch.randn(7, 3, generator=gen), torch.rand(7, 3, generator=gen)
    numpy_path = backward_recursion(d, k)
    with _PassThrough():
        tensor_path = backward_recursion(d, k)
    d_grad = d.clone().requires_grad_()
    autograd_path = backward_recursion(d_grad, k)
    autograd_path.sum().backward()
    for x in (tensor_path, autograd_path.detach()):
        assert torch.equal(x, numpy_path)
    expected = torch.stack([sum(torch.prod(k[s:t], dim=0) for s in range(t + 1)) for t in range(7)])
    torch.testing.assert_close(d_grad.grad, expected)


@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (0.9, 0.0), (0.8, 1.0)])
def test_gae_matches_brute_force(gamma, lam):
    rollout = random_rollout()
    adv, v_target = gae(*rollout, gamma, lam)
    expected = brute_force_gae(*rollout, gamma, lam)
    np.testing.assert_allclose(adv.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(v_target.numpy(), expected + rollout[1].numpy(), rtol=1e-5, atol=1e-5)


def test_gae_truncation_bootstraps_and_termination_does_not():
    gamma, lam = 0.9, 0.95
    rewards = torch.ones(3, 2)
    values = torch.zeros(3, 2)
    next_values = torch.full((3, 2), 10.0)
    dones = torch.tensor([[False, False], [True, True], [False, False]])
    terminated = torch.tensor([[False, False], [True, False], [False, False]])  # env 1 is truncated at t=1
    adv, _ = gae(rewards, values, next_values, terminated, dones, gamma, lam)
    # terminated at t=1: A_1 = r = 1; truncated: A_1 = r + gamma * V(final) = 1 + 9
    assert adv[1, 0].item() == pytest.approx(1.0)
    assert adv[1, 1].item() == pytest.approx(10.0)
    np.testing.assert_allclose(adv.numpy(), brute_force_gae(rewards, values, next_values, terminated, dones, gamma, lam), rtol=1e-6)


def test_discounted_returns_match_brute_force():
    rewards, _, next_values, terminated, dones = random_rollout(seed=3)
    got = discounted_returns(rewards, next_values, terminated, dones, 0.97)
    np.testing.assert_allclose(got.numpy(), brute_force_returns(rewards, next_values, terminated, dones, 0.97), rtol=1e-5, atol=1e-5)


def test_nstep_returns_equal_discounted_returns_and_gae_lambda_one():
    rollout = random_rollout(seed=4)
    rewards, values, next_values, terminated, dones = rollout
    nstep = nstep_returns(*rollout, 0.95)
    np.testing.assert_allclose(nstep.numpy(), discounted_returns(rewards, next_values, terminated, dones, 0.95).numpy(), rtol=1e-5, atol=1e-5)


def test_vtrace_on_policy_equals_nstep_returns():
    rollout = random_rollout(seed=5)
    rewards, values, next_values, terminated, dones = rollout
    vs, pg_adv = vtrace(torch.zeros_like(rewards), rewards, values, next_values, terminated, dones, 0.95)
    np.testing.assert_allclose(vs.numpy(), nstep_returns(*rollout, 0.95).numpy(), rtol=1e-5, atol=1e-5)
    # on-policy, the policy-gradient advantage is the one-step TD error against vs_{t+1}
    vs_next = torch.where(dones, next_values, torch.cat([vs[1:], next_values[-1:]]))
    expected = rewards + 0.95 * (~terminated) * vs_next - values
    np.testing.assert_allclose(pg_adv.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_vtrace_truncates_importance_weights():
    rollout = random_rollout(seed=6)
    rewards, values, next_values, terminated, dones = rollout
    big = torch.full_like(rewards, 3.0)  # pi/mu = e^3 everywhere: clipped to rho_bar = c_bar = 1
    vs_clipped, _ = vtrace(big, *rollout, 0.95, rho_bar=1.0, c_bar=1.0)
    vs_on, _ = vtrace(torch.zeros_like(rewards), *rollout, 0.95)
    np.testing.assert_allclose(vs_clipped.numpy(), vs_on.numpy(), rtol=1e-6)


def test_next_values_from_uses_final_values_at_episode_ends():
    values = torch.arange(6.0).reshape(3, 2)
    dones = torch.tensor([[False, True], [False, False], [False, False]])
    final_values = torch.full((3, 2), -1.0)
    nv = next_values_from(values, torch.tensor([100.0, 200.0]), dones, final_values)
    assert nv.tolist() == [[2.0, -1.0], [4.0, 5.0], [100.0, 200.0]]


def test_standardize_gives_mean_zero_and_std_one():
    adv = torch.tensor([3.0, -1.0, 7.0, 0.5, 2.0])
    out = standardize(adv)
    assert abs(out.mean().item()) < 1e-6 and out.std().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(standardize(torch.full((4,), 2.0)), torch.zeros(4))  # a constant batch stays finite


def test_k3_estimate_matches_the_kl_between_two_gaussians():
    """KL[N(0, 1), N(0.3, 1)] = 0.3^2 / 2 = 0.045, from samples of the first."""
    x = torch.randn(400_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    log_ratio = -0.5 * (x - 0.3) ** 2 + 0.5 * x**2  # log N(x; 0.3, 1) - log N(x; 0, 1)
    assert approx_kl(log_ratio.exp(), log_ratio).item() == pytest.approx(0.045, rel=0.03)
    assert approx_kl(torch.ones(3), torch.zeros(3)).item() == 0.0
