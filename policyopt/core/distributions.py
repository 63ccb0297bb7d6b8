"""Action distributions: small, stateless, per-sample ``log_prob``/``entropy``.

Each class is built from the network's output for a batch ``[B, ...]`` and exposes the
subset of the ``torch.distributions`` API that the algorithms use: ``sample``, ``rsample``
(where reparameterizable), ``log_prob(action) -> [B]``, ``entropy() -> [B]``, ``mode()``,
and ``kl(other) -> [B]``. Log-probabilities of multi-dimensional actions are summed over the
action dimensions, so every algorithm sees one number per sample.

They are written out rather than wrapping ``torch.distributions`` because argument
validation and the generic broadcasting machinery there cost more than the arithmetic for
the small batches of RL; the tests check every formula against ``torch.distributions``.
"""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def action_index(action: Tensor) -> Tensor:
    """Discrete actions ``[...]`` as the ``[..., 1]`` int64 index of ``gather``/``scatter`` over
    the last dimension (no cast op for int64 actions in a trace)."""
    return (action if action.dtype == torch.int64 else action.long()).unsqueeze(-1)


def pick(log_probs: Tensor, action: Tensor) -> Tensor:
    """``log_probs[..., a]`` of each taken action ``a``: ``[..., n]`` and ``[...]`` give ``[...]``."""
    return log_probs.gather(-1, action_index(action)).squeeze(-1)


class Categorical:
    """pi(a|s) = softmax(z)_a for Discrete action spaces, from the network's ``z: [B, n]``
    (``raw``); ``logits`` = log pi(.|s) = z - logsumexp(z), computed on first use (a rollout's
    sampling step does not use it: ``sample`` needs z only)."""

    def __init__(self, logits: Tensor):
        self.raw = logits

    @cached_property
    def logits(self) -> Tensor:
        return self.raw.log_softmax(dim=-1)

    @property
    def probs(self) -> Tensor:
        return self.logits.exp()

    def sample(self, noise: Tensor | np.ndarray | None = None) -> Tensor:
        """argmax_a z_a + g_a with g_a = -log q_a, q_a ~ Exp(1) i.i.d. (Gumbel(0, 1) draws: the
        Gumbel-max trick): the draw ``torch.multinomial(probs, 1)`` makes, argmax_a p_a / q_a, from
        the same random numbers (the same actions but where rounding settles a near tie), minus
        its argument checks, which read two values back to the host every call (a device sync per
        step on a GPU). ``noise``: the g drawn beforehand, ``[B, n]`` (``gumbel_noise``); as a
        NumPy array (CPU logits), the sum and the argmax are NumPy's on the logits' memory: the
        same float32 sums and the same first maximum, without two tensor ops (~1 ms of a
        128-step rollout of 8 CartPole envs here, where a rollout step's ops run cold)."""
        z = self.raw.detach() if self.raw.requires_grad else self.raw  # no op recorded by a no-grad trace
        if noise is None:
            return (z - torch.empty_like(z).exponential_(1.0).log()).argmax(-1)
        if isinstance(noise, np.ndarray):
            return gumbel_argmax(z.numpy(), noise)
        return (z + noise).argmax(-1)

    def log_prob(self, action: Tensor) -> Tensor:
        return pick(self.logits, action)

    def entropy(self) -> Tensor:
        return -(self.probs * self.logits).sum(-1)

    def mode(self) -> Tensor:
        return self.logits.argmax(-1)

    def kl(self, other: Categorical) -> Tensor:
        """KL(self || other) = sum_a p(a) (log p(a) - log q(a))."""
        return (self.probs * (self.logits - other.logits)).sum(-1)


def gumbel_argmax(z: np.ndarray, noise: np.ndarray) -> Tensor:
    """``Categorical.sample``'s draw from NumPy logits ``z`` and noise ``g``: argmax(z + g) by
    NumPy (float32 sums, the first maximum), as a tensor."""
    return torch.from_numpy(np.add(z, noise).argmax(-1))


def gumbel_noise(*shape: int, device: torch.device | str = "cpu") -> Tensor:
    """Gumbel(0, 1) draws -log q, q ~ Exp(1), for ``Categorical.sample``: drawn at once for many
    steps, the numbers of the same draws made step by step (the CPU generator gives the same
    Exp(1) numbers in one call, and ``log`` rounds each alike; tested)."""
    return torch.empty(*shape, device=device).exponential_(1.0).log_().neg_()


class DiagGaussian:
    """pi(a|s) = N(a; mean, diag(std^2)). ``mean, log_std: [B, d]`` (log_std may broadcast)."""

    def __init__(self, mean: Tensor, log_std: Tensor):
        self.mean = mean
        self.log_std = log_std.expand_as(mean)

    @property
    def std(self) -> Tensor:
        return self.log_std.exp()

    def rsample(self) -> Tensor:
        return self.mean + self.std * torch.randn_like(self.mean)

    def sample(self) -> Tensor:
        with torch.no_grad():
            return self.rsample()

    def log_prob(self, action: Tensor) -> Tensor:
        z = (action - self.mean) / self.std
        return (-0.5 * z.pow(2) - self.log_std - LOG_SQRT_2PI).sum(-1)

    def entropy(self) -> Tensor:
        return (self.log_std + 0.5 + LOG_SQRT_2PI).sum(-1)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self, other: DiagGaussian) -> Tensor:
        """KL(p || q) = log(s_q/s_p) + (s_p^2 + (m_p - m_q)^2) / (2 s_q^2) - 1/2, summed over d."""
        var_ratio = (self.log_std - other.log_std).mul(2).exp()
        mean_term = ((self.mean - other.mean) / other.std).pow(2)
        return 0.5 * (var_ratio + mean_term - 1.0 - var_ratio.log()).sum(-1)


class StateDependentGaussian(DiagGaussian):
    """Generalized state-dependent exploration (gSDE), Raffin et al., "Smooth Exploration for
    Robotic Reinforcement Learning" (CoRL 2021), section 3:

        a = mean(s) + z(s)^T W,   W_jk ~ N(0, sigma_jk^2), drawn once per rollout, not per step

    with ``z(s)`` the policy's last hidden features. For a given ``s`` the action is Gaussian
    with ``std_k(s) = sqrt(sum_j z_j(s)^2 sigma_jk^2)``, so ``log_prob``, ``entropy`` and ``kl``
    are those of ``DiagGaussian(mean, log std(s))``; only sampling differs: ``sample()``
    returns ``mean + noise`` with the rollout's ``noise = z(s)^T W`` (``[B, d]``), which makes
    the exploration a smooth function of the state. Without ``noise`` it draws fresh
    Gaussian noise of the same std.
    """

    def __init__(self, mean: Tensor, log_std: Tensor, noise: Tensor | None = None):
        super().__init__(mean, log_std)
        self.noise = noise

    def sample(self) -> Tensor:
        if self.noise is None:
            return super().sample()
        with torch.no_grad():
            return self.mean + self.noise


def _squash_log_det(u: Tensor, scale: Tensor | float) -> Tensor:
    """log |da/du| of ``a = loc + scale * tanh(u)``, per coordinate:
    ``log scale + log(1 - tanh(u)^2)``, with ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))``."""
    log_scale = torch.log(torch.as_tensor(scale, dtype=u.dtype, device=u.device))
    return 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u)) + log_scale


class _SquashedSample(torch.autograd.Function):
    """``a = loc + scale * tanh(u)``, ``u = mean + std * eps``, and ``log pi(a|s)`` (``SquashedGaussian``),
    with the backward pass written out.

    Forward, with ``t = tanh(u)``:

        log pi = sum_i [ -eps_i^2 / 2 - log std_i - log sqrt(2 pi) - log |da_i/du_i| ]      (``_squash_log_det``)

    (``log N(u; mean, std)`` from the draw ``eps`` itself: ``(u - mean) / std`` is ``eps`` up to
    rounding.) Backward, from ``d log(1 - t^2) / du = -2 t``, for gradients ``g_a`` of the action
    and ``g_lp`` of the log-prob:

        g_u = g_a * scale * (1 - t^2) + 2 t * g_lp,   g_mean = g_u,   g_log_std = g_u * std * eps - g_lp

    Autograd's backward of the same forward is some 35 small tensor ops, this one 9; SAC's
    actor update takes one, through ``runtime.record``, where each op costs a few microseconds
    whatever its size (the training step on Pendulum ran about 3% faster, one process, blocks of
    steps alternated). The gradients equal autograd's up to float rounding (tested).
    """

    @staticmethod
    def forward(ctx, mean: Tensor, log_std: Tensor, eps: Tensor, loc: Tensor | float, scale: Tensor | float):
        std = log_std.exp()
        u = mean + std * eps
        t = torch.tanh(u)
        scale = torch.as_tensor(scale, dtype=u.dtype, device=u.device)
        log_prob = -0.5 * eps * eps - log_std - LOG_SQRT_2PI - _squash_log_det(u, scale)
        ctx.save_for_backward(t, std, eps, scale)
        return loc + scale * t, log_prob.sum(-1)

    @staticmethod
    def backward(ctx, g_action: Tensor, g_log_prob: Tensor):
        t, std, eps, scale = ctx.saved_tensors
        g_log_prob = g_log_prob.unsqueeze(-1)
        g_u = g_action * scale * (1.0 - t * t) + 2.0 * t * g_log_prob
        return g_u, g_u * std * eps - g_log_prob, None, None, None


class SquashedGaussian:
    """a = loc + scale * tanh(u), u ~ N(mean, std^2): the SAC policy for bounded Box actions.

    Haarnoja et al., "Soft Actor-Critic" (2018), appendix C, eq. 21 (change of variables):

        log pi(a|s) = log N(u; mean, std) - sum_i log(scale_i * (1 - tanh(u_i)^2))

    with the numerically stable identity ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))``.
    ``loc``/``scale`` map (-1, 1) to the action bounds ``[low, high]``. ``rsample_with_log_prob``
    (SAC's losses) runs through ``_SquashedSample``, whose backward pass is written out.
    """

    def __init__(self, mean: Tensor, log_std: Tensor, loc: Tensor | float = 0.0, scale: Tensor | float = 1.0):
        self.base = DiagGaussian(mean, log_std)
        self.loc = loc
        self.scale = scale

    def _squash(self, u: Tensor) -> Tensor:
        return self.loc + self.scale * torch.tanh(u)

    def rsample_with_log_prob(self) -> tuple[Tensor, Tensor]:
        """One reparameterized sample and its log-prob, computed from the pre-tanh value (exact)."""
        eps = torch.randn_like(self.base.mean)  # the draw of ``base.rsample``
        return _SquashedSample.apply(self.base.mean, self.base.log_std, eps, self.loc, self.scale)

    def rsample(self) -> Tensor:
        return self._squash(self.base.rsample())

    def sample(self) -> Tensor:
        with torch.no_grad():
            return self.rsample()

    def log_prob(self, action: Tensor) -> Tensor:
        """log pi(a|s) of a given action; inverts tanh with the input clamped inside (-1, 1)."""
        y = ((action - self.loc) / self.scale).clamp(-1.0 + 1e-6, 1.0 - 1e-6)
        u = torch.atanh(y)
        return self.base.log_prob(u) - _squash_log_det(u, self.scale).sum(-1)

    def entropy(self) -> Tensor:
        """Single-sample estimate -log pi(a|s): the squashed Gaussian has no closed form."""
        return -self.rsample_with_log_prob()[1]

    def mode(self) -> Tensor:
        return self._squash(self.base.mean)


class Beta:
    """a = low + (high - low) * x, x ~ Beta(alpha, beta): a bounded policy without clipping bias.

    Chou et al., "Improving Stochastic Policy Gradients in Continuous Control with Deep
    Reinforcement Learning using the Beta Distribution" (ICML 2017).
    ``alpha, beta: [B, d]``, both > 1 so the density is unimodal (see ``nets.BetaHead``).
    """

    EPS = 1e-6

    def __init__(self, alpha: Tensor, beta: Tensor, low: Tensor | float = 0.0, high: Tensor | float = 1.0):
        self.alpha = alpha
        self.beta = beta
        self.low = low
        self.span = high - low

    def _log_norm(self) -> Tensor:
        return torch.lgamma(self.alpha) + torch.lgamma(self.beta) - torch.lgamma(self.alpha + self.beta)

    def _log_span(self, like: Tensor) -> Tensor:
        return torch.log(torch.as_tensor(self.span, dtype=like.dtype, device=like.device)).expand_as(like)

    def rsample(self) -> Tensor:
        ga = torch._standard_gamma(self.alpha)
        gb = torch._standard_gamma(self.beta)
        x = (ga / (ga + gb)).clamp(self.EPS, 1.0 - self.EPS)
        return self.low + self.span * x

    def sample(self) -> Tensor:
        with torch.no_grad():
            return self.rsample()

    def log_prob(self, action: Tensor) -> Tensor:
        x = ((action - self.low) / self.span).clamp(self.EPS, 1.0 - self.EPS)
        log_density = (self.alpha - 1.0) * torch.log(x) + (self.beta - 1.0) * torch.log1p(-x) - self._log_norm()
        return (log_density - self._log_span(x)).sum(-1)

    def entropy(self) -> Tensor:
        a, b = self.alpha, self.beta
        total = a + b
        ent = (
            self._log_norm()
            - (a - 1.0) * torch.digamma(a)
            - (b - 1.0) * torch.digamma(b)
            + (total - 2.0) * torch.digamma(total)
        )
        return (ent + self._log_span(a)).sum(-1)

    def mode(self) -> Tensor:
        return self.low + self.span * (self.alpha - 1.0) / (self.alpha + self.beta - 2.0)

    def kl(self, other: Beta) -> Tensor:
        a1, b1, a2, b2 = self.alpha, self.beta, other.alpha, other.beta
        kl = (
            other._log_norm()
            - self._log_norm()
            + (a1 - a2) * torch.digamma(a1)
            + (b1 - b2) * torch.digamma(b1)
            + (a2 - a1 + b2 - b1) * torch.digamma(a1 + b1)
        )
        return kl.sum(-1)


Distribution = Categorical | DiagGaussian | SquashedGaussian | Beta
