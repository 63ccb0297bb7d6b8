"""A2C: synchronous advantage actor-critic.

Mnih et al., "Asynchronous Methods for Deep Reinforcement Learning" (ICML 2016), section 4 and
Algorithm S3 (A3C), run synchronously: ``num_envs`` actors step together for ``num_steps``
steps, then one gradient step on

    loss = policy_loss - ent_coef * entropy + vf_coef * value_loss
    policy_loss = -mean( log pi(a_t|s_t) * adv_t )
    value_loss  = 0.5 * mean( (V(s_t) - v_target_t)^2 )

``advantage`` picks the estimator: ``nstep`` (the paper's: v_target_t = the n-step return to the
end of the segment, bootstrapped from V there, adv_t = v_target_t - V(s_t)) or ``gae``
(Schulman et al. 2016, with ``gae_lambda``; ``gae_lambda = 1`` equals ``nstep``).
The optimizer is RMSprop as in the paper (``optimizer=rmsprop``, alpha 0.99, eps 1e-5, the
stable-baselines3 defaults) or Adam.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from policyopt.agent import ActorCriticAgent, ActorCriticConfig
from policyopt.core.buffers import RolloutBuffer
from policyopt.core.diagnostics import explained_variance
from policyopt.core.losses import policy_gradient_loss, value_loss
from policyopt.core.optim import adam, clip_and_step, set_lr
from policyopt.core.returns import gae, nstep_returns, standardize


@dataclass
class A2CConfig(ActorCriticConfig):
    num_envs: int = 8
    num_steps: int = 5  # steps per env per update
    learning_rate: float = 7e-4
    anneal_lr: bool = False  # linear decay to 0 over the learn() call
    gamma: float = 0.99
    advantage: str = field(default="nstep", metadata={"choices": ("nstep", "gae")})
    gae_lambda: float = 0.95  # advantage=gae only
    norm_adv: bool = False  # normalize advantages over the rollout
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float | None = 0.5
    optimizer: str = field(default="rmsprop", metadata={"choices": ("rmsprop", "adam")})
    rmsprop_alpha: float = 0.99
    optimizer_eps: float = 1e-5
    shared_network: bool = False
    normalize_reward: bool = False  # divide rewards by the running std of the discounted return


class A2C(ActorCriticAgent):
    """A2C for Discrete and Box action spaces (Gaussian, Beta or gSDE policies)."""

    name = "a2c"
    Config = A2CConfig
    loop = "on_policy"

    def build(self) -> None:
        cfg = self.config
        self.build_policy()
        params = self.policy.parameters()
        if cfg.optimizer == "rmsprop":
            optimizer = torch.optim.RMSprop(params, lr=cfg.learning_rate, alpha=cfg.rmsprop_alpha, eps=cfg.optimizer_eps, foreach=True)
        else:
            optimizer = adam(params, lr=cfg.learning_rate, eps=cfg.optimizer_eps, fused=False)
        self.optimizers = {"policy": optimizer}

    def advantages(self, buf: RolloutBuffer) -> tuple[Tensor, Tensor]:
        """``(adv, v_target)``, each ``[T, N]``, by the configured estimator."""
        cfg = self.config
        fields = (buf["reward"], buf["value"], buf["next_value"], buf["terminated"], buf["done"])
        if cfg.advantage == "gae":
            return gae(*fields, cfg.gamma, cfg.gae_lambda)
        v_target = nstep_returns(*fields, cfg.gamma)
        return v_target - buf["value"], v_target

    def update(self, buf: RolloutBuffer) -> dict[str, float]:
        cfg = self.config
        adv, v_target = (x.reshape(-1) for x in self.advantages(buf))
        if cfg.norm_adv and adv.numel() > 1:
            adv = standardize(adv)
        data = buf.flat("obs", "action", "value")
        lr = cfg.learning_rate * (1.0 - self.progress if cfg.anneal_lr else 1.0)
        optimizer = self.optimizers["policy"]
        set_lr(optimizer, lr)

        dist, value = self.policy.dist_and_value(data["obs"])
        pg_loss = policy_gradient_loss(dist.log_prob(data["action"]), adv)
        v_loss = value_loss(value, v_target, data["value"], None)
        entropy = dist.entropy().mean()
        loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_and_step(optimizer, cfg.max_grad_norm)
        return {
            "loss/policy": pg_loss.item(),
            "loss/value": v_loss.item(),
            "loss/entropy": entropy.item(),
            "diag/grad_norm": grad_norm.item(),
            "diag/lr": lr,
            "diag/explained_var": explained_variance(data["value"], v_target).item(),
        }
