"""Actor Critic using Kronecker-Factored Trust Region.

Wu et al., "Scalable trust-region method for deep reinforcement learning using
Kronecker-factored approximation" (ACKTR, NeurIPS 2017). The A2C loss (Mnih et al. 2016)

    loss = -E[log pi(a|s) * adv] - ent_coef * entropy + vf_coef * 0.5 * E[(V(s) - v_target)^2]

is minimized with K-FAC natural-gradient steps (``core.optim.KFAC``) for actor and critic
together. Section 3.1: the Fisher is that of the joint output distribution

    p(a, y | s) = pi(a|s) * N(y; V(s), 1)

(the critic's output read as a unit-variance Gaussian, i.e. Gauss-Newton), estimated with
targets sampled from the model itself: a~ ~ pi(.|s), y~ ~ N(V(s), 1). ``vf_fisher_coef``
weighs the critic's term. Section 3.2: every step is rescaled so its quadratic KL estimate
stays <= ``kl_clip``, eta = min(learning_rate, sqrt(2 * kl_clip / Delta^T F Delta)).

With ``shared_network`` (the paper's Atari setup) one K-FAC step with one trust region covers
the joint Fisher of actor and critic. With separate networks (the default, as in the paper's
MuJoCo setup and the baselines ``acktr_cont`` code) actor and critic take their own K-FAC
steps with their own radii, ``kl_clip`` and ``vf_kl_clip``: in one joint region the critic's
large early gradients would use up the radius and freeze the policy. Returns are GAE
(``gae_lambda = 1`` gives the n-step returns of A2C; the paper uses lambda = 0.97 on MuJoCo).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import torch
from torch import Tensor

from policyopt.agent import ActorCriticAgent, ActorCriticConfig
from policyopt.core.buffers import RolloutBuffer
from policyopt.core.diagnostics import explained_variance
from policyopt.core.distributions import Distribution
from policyopt.core.losses import policy_gradient_loss, value_loss
from policyopt.core.nets import dist_under
from policyopt.core.optim import KFAC
from policyopt.core.returns import rollout_gae


@dataclass
class ACKTRConfig(ActorCriticConfig):
    num_envs: int = 8
    num_steps: int = 20  # steps per env per rollout
    learning_rate: float = 0.25  # eta_max, the largest K-FAC step
    anneal_lr: bool = True  # linear decay to 0 over the learn() call, as in the baselines code
    gamma: float = 0.99
    gae_lambda: float = 1.0
    norm_adv: bool = False
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    vf_fisher_coef: float = 1.0  # weight of the critic's Gaussian term in the sampled Fisher
    kl_clip: float = 0.001  # trust-region radius delta of each policy step (of each joint step if shared)
    vf_kl_clip: float = 0.1  # trust-region radius of each critic step (separate networks only)
    damping: float = 0.01  # Tikhonov damping of each Kronecker-factored block
    stats_decay: float = 0.95  # running-average decay of the K-FAC factors
    momentum: float = 0.9
    shared_network: bool = False
    normalize_reward: bool = False  # divide rewards by the running std of the discounted return


def sampled_fisher_loss(dist: Distribution, value: Tensor, vf_fisher_coef: float) -> Tensor:
    """ACKTR, section 3.1: -log p(a~, y~ | s) for targets drawn from the model, averaged over s.

        a~ ~ pi(.|s),  y~ ~ N(V(s), 1)
        fisher_loss = E[ -log pi(a~|s) + vf_fisher_coef * 0.5 * (V(s) - y~)^2 ]

    Its per-sample gradients give K-FAC's G factors (the true Fisher, not the empirical one).
    ``value: [B]``; returns a scalar.
    """
    with torch.no_grad():
        action = dist.sample()
        y = value + torch.randn_like(value)
    return (-dist.log_prob(action) + vf_fisher_coef * 0.5 * (value - y).pow(2)).mean()


class ACKTR(ActorCriticAgent):
    """ACKTR for Discrete and Box action spaces (Gaussian, Beta or gSDE policies)."""

    name = "acktr"
    Config = ACKTRConfig
    loop = "on_policy"

    def build(self) -> None:
        cfg = self.config
        self.build_policy()
        if cfg.shared_network:  # one trust region over the joint Fisher (the paper's Atari setup)
            self.optimizers = {"kfac": self._kfac(self.policy, cfg.kl_clip)}
        else:  # a trust region each (the paper's MuJoCo setup, baselines' acktr_cont)
            actor = torch.nn.ModuleList([self.policy.actor_body, self.policy.actor_head])
            self.optimizers = {"actor": self._kfac(actor, cfg.kl_clip), "critic": self._kfac(self.policy.critic, cfg.vf_kl_clip)}

    def _kfac(self, module: torch.nn.Module, kl_clip: float) -> KFAC:
        cfg = self.config
        return KFAC(module, cfg.learning_rate, cfg.momentum, cfg.damping, kl_clip, cfg.stats_decay)

    def _learning_rate(self, rollout: int) -> float:
        """learning_rate, linearly annealed by the progress at the start of this rollout."""
        cfg = self.config
        if not cfg.anneal_lr:
            return cfg.learning_rate
        first, last = self.schedule
        done = max(0, self.global_step - rollout - first) / max(1, last - first)
        return cfg.learning_rate * (1.0 - min(1.0, done))

    def update(self, buf: RolloutBuffer) -> dict[str, float]:
        cfg = self.config
        adv, v_target = rollout_gae(buf, cfg.gamma, cfg.gae_lambda, cfg.norm_adv)
        data = buf.flat("obs", "action", "value")

        kfacs = list(self.optimizers.values())
        with ExitStack() as stack:
            for kfac in kfacs:
                stack.enter_context(kfac.track())
            dist, value = self.policy.dist_and_value(data["obs"])
        fisher_loss = sampled_fisher_loss(dist, value, cfg.vf_fisher_coef)
        for kfac in kfacs:
            kfac.update_factors(fisher_loss)
        entropy = dist.entropy().mean()
        pg_loss = policy_gradient_loss(dist.log_prob(data["action"]), adv)
        v_loss = value_loss(value, v_target, data["value"], None)
        loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
        self.policy.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), float("inf"))
        old_params = {k: v.detach().clone() for k, v in self.policy.named_parameters()}
        lr = self._learning_rate(adv.shape[0])
        metrics = {
            "loss/policy": pg_loss.item(),
            "loss/value": v_loss.item(),
            "loss/entropy": entropy.item(),
            "diag/grad_norm": grad_norm.item(),
            "diag/lr": lr,
            "diag/explained_var": explained_variance(data["value"], v_target).item(),
        }
        for key, kfac in self.optimizers.items():
            kfac.lr = lr
            step = kfac.step()
            prefix = "vf_" if key == "critic" else ""
            metrics[f"diag/{prefix}step_size"] = step["step_size"]
            metrics[f"diag/{prefix}quad_kl"] = step["quad_kl"]
        with torch.no_grad():  # exact mean KL[pi_old || pi] of the step just taken
            metrics["diag/kl"] = dist_under(self.policy, old_params, data["obs"]).kl(self.policy.dist(data["obs"])).mean().item()
        return metrics
