"""Loss terms shared by several policy-gradient algorithms.

Each is a pure function of tensors (no module state), written next to the equation it
implements; the algorithm modules combine them. Terms used by one algorithm only (PPO's KL
penalty, V-trace, SAC's soft targets, ...) stay in that algorithm's file.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from policyopt.core.distributions import Distribution
from policyopt.core.nets import dist_under


def policy_gradient_loss(logp: Tensor, adv: Tensor) -> Tensor:
    """The likelihood-ratio policy gradient (A3C paper, Algorithm S3:
    d theta += grad log pi(a_i|s_i) (R - V(s_i))), negated for minimization:

        policy_loss = -mean( logp * adv )

    ``logp, adv: [B]`` (``adv`` carries no gradient); returns a scalar. Used by A2C, NPG and
    ACKTR, whose gradient of this loss is the g of g = grad E[log pi(a|s) A(s, a)].
    """
    return -(logp * adv).mean()


def clipped_surrogate_loss(ratio: Tensor, adv: Tensor, clip_coef: float) -> Tensor:
    """PPO paper (Schulman et al. 2017), eq. 7, negated for minimization.

        L^CLIP = E[ min(ratio * adv, clip(ratio, 1 - clip_coef, 1 + clip_coef) * adv) ]

    ``ratio = pi(a|s) / pi_old(a|s)`` and ``adv`` are ``[B]``; returns a scalar. Used by PPO
    and by PPG's policy phase.
    """
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_coef, 1.0 + clip_coef) * adv
    return -torch.min(unclipped, clipped).mean()


def value_loss(value: Tensor, v_target: Tensor, value_old: Tensor, clip_coef: float | None) -> Tensor:
    """0.5 * (V(s) - v_target)^2; with ``clip_coef``, the pessimistic clipped form of the PPO2 code:

        0.5 * max((V - v_target)^2, (value_old + clip(V - value_old, -clip_coef, clip_coef) - v_target)^2)

    ``value, v_target, value_old: [B]``; returns a scalar.
    """
    unclipped = (value - v_target).pow(2)
    if clip_coef is None:
        return 0.5 * unclipped.mean()
    clipped = value_old + (value - value_old).clamp(-clip_coef, clip_coef)
    return 0.5 * torch.max(unclipped, (clipped - v_target).pow(2)).mean()


def dist_kl(policy: nn.Module, old_params: dict[str, Tensor], obs: Tensor, dist: Distribution) -> Tensor:
    """Exact per-sample KL[pi_old(.|s), pi(.|s)], ``[B]``, with pi_old given by the parameters
    before the update (``old_params``) and pi by ``dist`` (the current policy at ``obs``)."""
    with torch.no_grad():
        old_dist = dist_under(policy, old_params, obs)
    return old_dist.kl(dist)
