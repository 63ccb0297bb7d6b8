"""Distributions against torch.distributions, and the bounds of the bounded ones."""

import math

import pytest
import torch
import torch.distributions as D

from policyopt.core.distributions import Beta, Categorical, DiagGaussian, SquashedGaussian

torch.manual_seed(0)


def test_categorical_matches_torch():
    logits = torch.randn(64, 5)
    ours, ref = Categorical(logits), D.Categorical(logits=logits)
    a = ref.sample()
    torch.testing.assert_close(ours.log_prob(a), ref.log_prob(a))
    torch.testing.assert_close(ours.entropy(), ref.entropy())
    other = torch.randn(64, 5)
    torch.testing.assert_close(ours.kl(Categorical(other)), D.kl_divergence(ref, D.Categorical(logits=other)))
    assert ours.sample().shape == (64,)


def test_diag_gaussian_matches_torch():
    mean, log_std = torch.randn(32, 3), torch.randn(32, 3) * 0.5
    ours = DiagGaussian(mean, log_std)
    ref = D.Independent(D.Normal(mean, log_std.exp()), 1)
    a = ref.sample()
    torch.testing.assert_close(ours.log_prob(a), ref.log_prob(a))
    torch.testing.assert_close(ours.entropy(), ref.entropy())
    mean2, log_std2 = torch.randn(32, 3), torch.randn(32, 3) * 0.5
    ref2 = D.Independent(D.Normal(mean2, log_std2.exp()), 1)
    torch.testing.assert_close(ours.kl(DiagGaussian(mean2, log_std2)), D.kl_divergence(ref, ref2))


def test_diag_gaussian_broadcasts_state_independent_log_std():
    ours = DiagGaussian(torch.zeros(4, 2), torch.tensor([0.0, 1.0]))
    assert ours.log_prob(torch.zeros(4, 2)).shape == (4,)


def test_squashed_gaussian_matches_transformed_distribution():
    mean, log_std = torch.randn(16, 2), torch.randn(16, 2) * 0.3
    low, high = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 1.0])
    loc, scale = (high + low) / 2, (high - low) / 2
    ours = SquashedGaussian(mean, log_std, loc, scale)
    base = D.Normal(mean, log_std.exp())
    ref = D.TransformedDistribution(base, [D.TanhTransform(cache_size=1), D.AffineTransform(loc, scale)])
    a = ref.sample()
    torch.testing.assert_close(ours.log_prob(a), ref.log_prob(a).sum(-1), rtol=1e-4, atol=1e-4)
    sample, logp = ours.rsample_with_log_prob()
    torch.testing.assert_close(logp, ref.log_prob(sample).sum(-1), rtol=1e-3, atol=1e-3)


def test_squashed_gaussian_stays_in_bounds_with_finite_log_prob():
    ours = SquashedGaussian(torch.full((1000, 1), 30.0), torch.zeros(1000, 1), torch.tensor([0.5]), torch.tensor([1.5]))
    a, logp = ours.rsample_with_log_prob()
    assert (a >= -1.0).all() and (a <= 2.0).all()
    assert torch.isfinite(logp).all()
    assert torch.isfinite(ours.log_prob(torch.full((1000, 1), 2.0))).all()  # exactly at the bound


@pytest.mark.parametrize("state_dependent_std", [True, False])
def test_squashed_gaussian_sample_gradients_match_autograd(state_dependent_std):
    """The written-out backward of ``rsample_with_log_prob`` against autograd through the same
    draw, the density computed the textbook way (float64)."""
    torch.manual_seed(0)
    mean = (torch.randn(64, 2, dtype=torch.float64) * 2).requires_grad_()
    log_std = (torch.randn(64 if state_dependent_std else 1, 2, dtype=torch.float64) * 0.5).requires_grad_()
    loc, scale = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([1.5, 2.0], dtype=torch.float64)
    g_action, g_log_prob = torch.randn(64, 2, dtype=torch.float64), torch.randn(64, dtype=torch.float64)

    def gradients(fn):
        action, log_prob = fn()
        return (action, log_prob, *torch.autograd.grad((action * g_action).sum() + (log_prob * g_log_prob).sum(), [mean, log_std]))

    def reference():
        u = D.Normal(mean, log_std.exp()).rsample()
        ref = D.TransformedDistribution(D.Normal(mean, log_std.exp()), [D.TanhTransform(), D.AffineTransform(loc, scale)])
        action = loc + scale * torch.tanh(u)
        return action, ref.log_prob(action).sum(-1)

    torch.manual_seed(1)
    ours = gradients(lambda: SquashedGaussian(mean, log_std.expand_as(mean), loc, scale).rsample_with_log_prob())
    torch.manual_seed(1)
    theirs = gradients(reference)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_squashed_gaussian_rsample_is_differentiable():
    mean = torch.zeros(8, 2, requires_grad=True)
    a, logp = SquashedGaussian(mean, torch.zeros(8, 2)).rsample_with_log_prob()
    (a.sum() + logp.sum()).backward()
    assert mean.grad is not None and torch.isfinite(mean.grad).all()


def test_beta_matches_torch_on_scaled_support():
    alpha, beta = 1 + torch.rand(32, 2) * 3, 1 + torch.rand(32, 2) * 3
    low, high = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 0.5])
    ours = Beta(alpha, beta, low, high)
    ref = D.Beta(alpha, beta)
    x = ref.sample()
    a = low + (high - low) * x
    log_jac = torch.log(high - low).sum()
    torch.testing.assert_close(ours.log_prob(a), ref.log_prob(x).sum(-1) - log_jac, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.entropy(), ref.entropy().sum(-1) + log_jac, rtol=1e-4, atol=1e-4)
    alpha2, beta2 = 1 + torch.rand(32, 2), 1 + torch.rand(32, 2)
    kl_ref = D.kl_divergence(ref, D.Beta(alpha2, beta2)).sum(-1)
    torch.testing.assert_close(ours.kl(Beta(alpha2, beta2, low, high)), kl_ref, rtol=1e-4, atol=1e-4)


def test_beta_samples_in_bounds_and_log_prob_finite_at_bounds():
    ours = Beta(torch.full((5000, 1), 1.01), torch.full((5000, 1), 1.01), torch.tensor([-1.0]), torch.tensor([3.0]))
    a = ours.sample()
    assert (a > -1.0).all() and (a < 3.0).all()
    edges = torch.tensor([[-1.0], [3.0]])
    lp = Beta(torch.full((2, 1), 2.0), torch.full((2, 1), 2.0), torch.tensor([-1.0]), torch.tensor([3.0])).log_prob(edges)
    assert torch.isfinite(lp).all()


@pytest.mark.parametrize("dist", ["gaussian", "beta", "categorical"])
def test_kl_with_itself_is_zero(dist):
    if dist == "gaussian":
        d = DiagGaussian(torch.randn(8, 2), torch.randn(8, 2))
    elif dist == "beta":
        d = Beta(1 + torch.rand(8, 2), 1 + torch.rand(8, 2))
    else:
        d = Categorical(torch.randn(8, 4))
    torch.testing.assert_close(d.kl(d), torch.zeros(8), atol=1e-5, rtol=0)


def test_categorical_sample_frequencies():
    probs = torch.tensor([0.1, 0.6, 0.3])
    d = Categorical(probs.log().expand(20000, 3))
    freq = torch.bincount(d.sample(), minlength=3).float() / 20000
    torch.testing.assert_close(freq, probs, atol=0.02, rtol=0)
    assert math.isclose(d.mode()[0].item(), 1)


def test_categorical_sample_draws_what_torch_multinomial_draws():
    """Same random numbers, same actions: results measured with torch.multinomial stay reproducible."""
    logits = torch.randn(256, 6) * 3
    d = Categorical(logits)
    torch.manual_seed(1)
    expected = [torch.multinomial(d.probs, 1).squeeze(-1) for _ in range(50)]
    torch.manual_seed(1)
    assert all(torch.equal(d.sample(), e) for e in expected)


def test_categorical_sample_from_numpy_noise_is_the_tensor_draw():
    """A rollout's pre-drawn Gumbel noise as NumPy rows (``rollout_noise``): NumPy's float32 sums
    and first maximum give the actions the tensor ops give, ties and large logits included."""
    torch.manual_seed(0)
    logits = torch.randn(64, 8, 3) * 3
    logits[:4] = torch.tensor([1.0, 1.0, 0.0])  # ties: the first maximum wins in both
    logits[4:8] = torch.tensor([3e38, -3e38, 1e-30])
    noise = torch.cat([torch.zeros(8, 8, 3), -torch.empty(56, 8, 3).exponential_(1.0).log()])
    for z, g in zip(logits, noise):
        expected = Categorical(z).sample(g)
        action = Categorical(z).sample(g.numpy())
        assert action.dtype == expected.dtype and torch.equal(action, expected)


def test_categorical_samples_follow_the_probabilities():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0, -30.0]]).expand(200_000, 5)
    counts = torch.bincount(Categorical(logits).sample(), minlength=5).double() / 200_000
    torch.testing.assert_close(counts, torch.softmax(logits[0].double(), -1), atol=4e-3, rtol=0)


def test_gsde_exploration_is_gaussian_with_the_state_dependent_std():
    """a = mean + z^T W with W_jk ~ N(0, sigma_jk^2) is, for a fixed z, N(mean, sum_j z_j^2 sigma_jk^2):
    draw 40k exploration matrices for one state and compare moments and log-density."""
    from policyopt.core.nets import StateDependentNoiseHead

    torch.manual_seed(1)
    head = StateDependentNoiseHead(3, 2, log_std_init=-1.0)
    with torch.no_grad():
        head.log_sigma.add_(0.3 * torch.randn(3, 2))
    z = torch.tensor([[0.5, -1.0, 2.0]]).expand(40_000, 3)
    head.reset_noise(40_000)
    dist = head(z)
    actions = dist.sample()
    expected_std = (z[0].pow(2) @ head.log_sigma.detach().mul(2).exp() + 1e-6).sqrt()
    torch.testing.assert_close(dist.std[0], expected_std)
    torch.testing.assert_close(actions.mean(0), dist.mean[0], atol=0.03, rtol=0)
    torch.testing.assert_close(actions.std(0), expected_std, rtol=0.02, atol=0)
    ref = D.Normal(dist.mean[0], expected_std)
    torch.testing.assert_close(dist.log_prob(actions)[:5], ref.log_prob(actions[:5]).sum(-1))


def test_gsde_noise_is_fixed_between_resets():
    """The same state explores the same way until reset_noise; a batch of another size (an update
    minibatch, a single evaluation state) samples fresh Gaussian noise instead."""
    from policyopt.core.nets import StateDependentNoiseHead

    head = StateDependentNoiseHead(4, 1, log_std_init=-2.0)
    obs = torch.randn(3, 4)
    head.reset_noise(3)
    first, again = head(obs).sample(), head(obs).sample()
    torch.testing.assert_close(first, again)
    head.reset_noise(3)
    assert not torch.equal(head(obs).sample(), first)
    single = head(obs[:1])
    assert single.noise is None and not torch.equal(single.sample(), single.sample())
