"""Diagnostics logged under ``diag/``: how well the critic fits, how off-policy a batch is."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def explained_variance(pred: Tensor, target: Tensor) -> Tensor:
    """1 - Var[target - pred] / Var[target]: 1 is a perfect fit, 0 no better than a constant;
    NaN for a constant target. A 0-dim tensor (read without waiting on the device)."""
    var = target.var()
    return torch.where(var == 0.0, torch.nan, 1.0 - (target - pred).var() / var)


def approx_kl(ratio: Tensor, log_ratio: Tensor) -> Tensor:
    """The k3 estimate of KL[pi_old, pi] from samples of pi_old: mean of (r - 1) - log r, r = pi / pi_old
    (unbiased, never negative; Schulman, "Approximating KL divergence", 2020). A 0-dim tensor."""
    return ((ratio - 1.0) - log_ratio).mean()


@torch.no_grad()
def importance_ess(ratio: Tensor) -> Tensor:
    """Normalized effective sample size of importance weights, (sum w)^2 / (n * sum w^2), in (0, 1].

    1 when every ratio pi/pi_old is equal (on-policy data); near 1/n when one sample dominates.
    Kong (1992); see Owen, "Monte Carlo theory, methods and examples", ch. 9.3. A 0-dim tensor.
    """
    return ratio.sum().pow(2) / (ratio.numel() * ratio.pow(2).sum())
