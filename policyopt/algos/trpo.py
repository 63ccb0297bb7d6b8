"""Trust Region Policy Optimization.

Schulman et al., "Trust Region Policy Optimization" (ICML 2015), eq. 14:

    maximize_theta  L(theta) = E[ratio * adv],   ratio = pi_theta(a|s) / pi_old(a|s)
    subject to      mean_kl(theta) = E_s[ KL[pi_old(.|s) || pi_theta(.|s)] ] <= target_kl

solved as in Appendix C: the search direction x = F^-1 g comes from conjugate gradient on
Fisher-vector products (F the Hessian of mean_kl at theta_old), scaled to the boundary of the
quadratic trust region, step = sqrt(2 * target_kl / x^T F x) * x; then a backtracking line
search shrinks the step by ``line_search_shrinking_factor`` until the *exact* mean KL is
<= target_kl and L improves. If no step passes, theta_old is restored.

Advantages come from GAE (Schulman et al., ICLR 2016, which pairs TRPO with a value function
fit by regression); the value function is fit after the policy step by ``n_critic_updates``
epochs of minibatch Adam, as in stable-baselines3's TRPO. Names follow stable-baselines3.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from policyopt.agent import ActorCriticAgent, ActorCriticConfig
from policyopt.config import minibatch_problems
from policyopt.core.buffers import RolloutBuffer
from policyopt.core.diagnostics import explained_variance
from policyopt.core.nets import dist_under
from policyopt.core.optim import adam, backtracking_line_search, fit_regression, natural_gradient_step
from policyopt.core.returns import rollout_gae


@dataclass
class TRPOConfig(ActorCriticConfig):
    num_envs: int = 1
    num_steps: int = 2048  # steps per env per rollout
    gamma: float = 0.99
    gae_lambda: float = 0.95
    norm_adv: bool = True  # normalize advantages over the rollout
    target_kl: float = 0.01  # trust-region radius delta on the mean KL
    cg_max_steps: int = 15  # conjugate-gradient iterations
    cg_damping: float = 0.1  # F + cg_damping * I in the CG solve
    line_search_shrinking_factor: float = 0.8
    line_search_max_iter: int = 10
    learning_rate: float = 1e-3  # Adam step of the value-function fit
    n_critic_updates: int = 10  # epochs of value-function minibatches per rollout
    batch_size: int = 128  # value-function minibatch size
    normalize_reward: bool = False  # divide rewards by the running std of the discounted return

    def check(self) -> list[str]:
        return minibatch_problems(self)


def surrogate_objective(log_ratio: Tensor, adv: Tensor) -> Tensor:
    """TRPO, eq. 14 (the importance-sampled surrogate, to increase):  L = E[ratio * adv].

    ``log_ratio = log pi(a|s) - log pi_old(a|s)`` and ``adv``: ``[B]``; returns a scalar.
    """
    return (log_ratio.exp() * adv).mean()


class TRPO(ActorCriticAgent):
    """TRPO for Discrete and Box action spaces (Gaussian, Beta or gSDE policies)."""

    name = "trpo"
    Config = TRPOConfig
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
            logp_old = old_dist.log_prob(act)
        dist = self.policy.dist(obs)
        entropy = dist.entropy().mean().item()  # read now: the step below changes a Gaussian's log_std in place
        objective = surrogate_objective(dist.log_prob(act) - logp_old, adv)
        full_step, grad, step_size = natural_gradient_step(
            objective, old_dist.kl(dist).mean(), params, cfg.target_kl, cfg.cg_max_steps, cfg.cg_damping
        )

        def evaluate() -> tuple[float, float]:
            new = self.policy.dist(obs)
            return surrogate_objective(new.log_prob(act) - logp_old, adv).item(), old_dist.kl(new).mean().item()

        search = backtracking_line_search(
            params, full_step, evaluate, objective.item(), cfg.target_kl, cfg.line_search_shrinking_factor,
            cfg.line_search_max_iter,
        )

        v_loss = fit_regression(self.policy.value, self.optimizers["value"], obs, v_target, cfg.n_critic_updates, cfg.batch_size)
        return {
            "loss/policy": -objective.item(),
            "loss/value": v_loss,
            "diag/kl": search.kl,
            "diag/backtracks": search.backtracks,
            "diag/improvement": search.improvement,
            "diag/accepted": float(search.accepted),
            "diag/step_size": step_size * search.step_fraction,
            "diag/grad_norm": grad.norm().item(),
            "diag/explained_var": explained_variance(data["value"], v_target),
            "diag/entropy": entropy,
        }
