"""Natural Policy Gradient.

Kakade, "A Natural Policy Gradient" (NeurIPS 2002): follow the steepest-ascent direction of
the expected return under the metric of the Fisher information of the policy,

    theta <- theta + step_size * F^-1 g,     g = E[grad log pi(a|s) * adv],
    F = E_s E_{a~pi}[grad log pi(a|s) grad log pi(a|s)^T]

with ``F^-1 g`` computed by conjugate gradient on Fisher-vector products and the step
normalized to a fixed KL radius, as in Rajeswaran et al., "Towards Generalization and
Simplicity in Continuous Control" (NeurIPS 2017), Algorithm 1:

    step_size = sqrt(2 * target_kl / (x^T F x)),   x = F^-1 g

There is no line search (that is TRPO). Advantages come from GAE; the value function is fit
between policy steps by ``n_critic_updates`` epochs of minibatch Adam, as in TRPO.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from policyopt.agent import ActorCriticAgent, ActorCriticConfig
from policyopt.config import minibatch_problems
from policyopt.core.buffers import RolloutBuffer
from policyopt.core.diagnostics import explained_variance
from policyopt.core.distributions import Distribution
from policyopt.core.losses import policy_gradient_loss
from policyopt.core.nets import ActorCritic, dist_under
from policyopt.core.optim import adam, fit_regression, flat_params, natural_gradient_step, set_flat_params
from policyopt.core.returns import rollout_gae


@dataclass
class NPGConfig(ActorCriticConfig):
    num_envs: int = 1
    num_steps: int = 2048  # steps per env per rollout
    gamma: float = 0.99
    gae_lambda: float = 0.95
    norm_adv: bool = True  # normalize advantages over the rollout
    target_kl: float = 0.01  # KL radius delta of each natural-gradient step
    cg_max_steps: int = 15  # conjugate-gradient iterations
    cg_damping: float = 0.1  # F + cg_damping * I in the CG solve
    learning_rate: float = 1e-3  # Adam step of the value-function fit
    n_critic_updates: int = 10  # epochs of value-function minibatches per rollout
    batch_size: int = 128  # value-function minibatch size
    normalize_reward: bool = False  # divide rewards by the running std of the discounted return

    def check(self) -> list[str]:
        return minibatch_problems(self)


class NPG(ActorCriticAgent):
    """Natural policy gradient for Discrete and Box action spaces (Gaussian, Beta or gSDE policies)."""

    name = "npg"
    Config = NPGConfig
    loop = "on_policy"

    def build(self) -> None:
        cfg = self.config
        self.build_policy()
        self.optimizers = {"value": adam(self.policy.critic_parameters(), lr=cfg.learning_rate, fused=False)}

    def update(self, buf: RolloutBuffer) -> dict[str, float]:
        cfg = self.config
        adv, v_target = rollout_gae(buf, cfg.gamma, cfg.gae_lambda, cfg.norm_adv)
        data = buf.flat("obs", "action", "value")
        obs, act = data["obs"], data["action"]

        params = self.policy.actor_parameters()
        old_params = {k: v.detach().clone() for k, v in self.policy.named_parameters()}
        with torch.no_grad():  # pi_old from a copy: a Gaussian's log_std would otherwise alias the live parameter
            old_dist = dist_under(self.policy, old_params, obs)
        dist = self.policy.dist(obs)
        entropy = dist.entropy().mean().item()  # read now: the step below changes a Gaussian's log_std in place
        objective = -policy_gradient_loss(dist.log_prob(act), adv)  # E[log pi(a|s) * adv], its gradient g
        step, grad, step_size = natural_gradient_step(
            objective, old_dist.kl(dist).mean(), params, cfg.target_kl, cfg.cg_max_steps, cfg.cg_damping
        )
        set_flat_params(params, flat_params(params) + step)

        v_loss = fit_regression(self.policy.value, self.optimizers["value"], obs, v_target, cfg.n_critic_updates, cfg.batch_size)
        metrics = {
            "loss/policy": -objective.item(),
            "loss/value": v_loss,
            "diag/step_size": step_size,
            "diag/grad_norm": grad.norm().item(),
            "diag/explained_var": explained_variance(data["value"], v_target),
            "diag/entropy": entropy,
        }
        metrics.update(step_diagnostics(self.policy, old_dist, obs, act, adv))
        return metrics


@torch.no_grad()
def step_diagnostics(policy: ActorCritic, old_dist: Distribution, obs: Tensor, act: Tensor, adv: Tensor) -> dict[str, float]:
    """Mean KL[pi_old || pi] of the step taken and the gain of the surrogate E[ratio * adv]."""
    dist = policy.dist(obs)
    ratio = (dist.log_prob(act) - old_dist.log_prob(act)).exp()
    return {"diag/kl": old_dist.kl(dist).mean().item(), "diag/improvement": ((ratio - 1.0) * adv).mean().item()}
