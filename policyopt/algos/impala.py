"""IMPALA: Importance Weighted Actor-Learner Architecture, with V-trace.

Espeholt et al., "IMPALA: Scalable Distributed Deep-RL with Importance Weighted Actor-Learner
Architectures" (ICML 2018). ``workers`` actor processes (Ray actors) each run ``num_envs``
envs with a copy of the policy that may be a few updates old, and send trajectories of
``num_steps`` steps with their behaviour log-probs ``logp`` (mu). The learner takes them as
they arrive, computes the V-trace targets ``vs`` and advantages ``pg_adv`` of the current
policy pi (``core.returns.vtrace``), and makes one Adam step on

    loss = policy_loss + vf_coef * value_loss - ent_coef * entropy

then sends the new weights to the actor that delivered (``distributed.runners.ImpalaRunner``).
Needs Ray: ``pip install 'policyopt[ray]'``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from policyopt.agent import ActorCriticAgent, ActorCriticConfig
from policyopt.core.diagnostics import explained_variance, importance_ess
from policyopt.core.optim import adam, clip_and_step, set_lr
from policyopt.core.returns import vtrace


@dataclass
class IMPALAConfig(ActorCriticConfig):
    workers: int = 2  # actor processes (Ray actors)
    num_envs: int = 8  # envs per actor
    num_steps: int = 20  # unroll length: steps per env in one trajectory
    learning_rate: float = 6e-4
    anneal_lr: bool = False  # linear decay to 0 over the learn() call
    gamma: float = 0.99
    rho_bar: float = 1.0  # truncation of the importance weights in the V-trace targets and pg_adv
    c_bar: float = 1.0  # truncation of the trace coefficients c_t
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float | None = 40.0
    adam_eps: float = 1e-5
    shared_network: bool = False
    normalize_reward: bool = False  # the actors divide rewards by the running std of their discounted return

    def check(self) -> list[str]:
        problems = []
        if self.workers < 1:
            problems.append(f"IMPALA needs workers >= 1 (actor processes), got {self.workers}")
        if self.rho_bar < self.c_bar:
            problems.append(f"rho_bar ({self.rho_bar}) must be >= c_bar ({self.c_bar}), as V-trace assumes")
        if self.rho_bar <= 0 or self.c_bar <= 0:
            problems.append("rho_bar and c_bar must be > 0")
        return problems


def vtrace_policy_loss(logp: Tensor, pg_adv: Tensor) -> Tensor:
    """IMPALA, section 4.2, the policy-gradient term, negated for minimization:

        policy_loss = -E[ pg_adv * logp ],   pg_adv = rho_t * (r_t + gamma * vs_{t+1} - V(x_t))

    ``logp = log pi(a_t|x_t)`` carries the gradient; ``pg_adv`` (from ``vtrace``) does not.
    Shapes ``[T, N]``; returns a scalar.
    """
    return -(pg_adv.detach() * logp).mean()


def vtrace_value_loss(value: Tensor, vs: Tensor) -> Tensor:
    """IMPALA, section 4.2, the value term: its gradient is ``(vs - V(x_t)) * grad V(x_t)``, i.e.

        value_loss = 0.5 * E[ (vs - value)^2 ]

    with the V-trace target ``vs`` held fixed. Shapes ``[T, N]``; returns a scalar.
    """
    return 0.5 * (vs.detach() - value).pow(2).mean()


class IMPALA(ActorCriticAgent):
    """IMPALA for Discrete and Box action spaces; trains through Ray actor processes."""

    name = "impala"
    Config = IMPALAConfig
    loop = "actor_learner"

    def build(self) -> None:
        cfg = self.config
        self.build_policy()
        self.optimizers = {"policy": adam(self.policy.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps, fused=False)}

    def make_runner(self):
        from policyopt.distributed.runners import ImpalaRunner

        return ImpalaRunner(self)

    def update(self, traj: dict[str, Tensor]) -> dict[str, float]:
        """One Adam step on a trajectory of fields ``[T, N, ...]`` (``OnPolicyRunner`` with ``store_next_obs``)."""
        cfg = self.config
        T, N = traj["reward"].shape
        obs, next_obs = traj["obs"].flatten(0, 1), traj["next_obs"].flatten(0, 1)
        action = traj["action"].flatten(0, 1)
        dist, value = self.policy.dist_and_value(obs)
        logp, value = dist.log_prob(action).view(T, N), value.view(T, N)
        with torch.no_grad():
            next_value = self.policy.value(next_obs).view(T, N)
            log_rhos = logp - traj["logp"]
            vs, pg_adv = vtrace(
                log_rhos, traj["reward"], value, next_value, traj["terminated"], traj["done"],
                cfg.gamma, cfg.rho_bar, cfg.c_bar,
            )
        pg_loss = vtrace_policy_loss(logp, pg_adv)
        v_loss = vtrace_value_loss(value, vs)
        entropy = dist.entropy().mean()
        loss = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * entropy

        optimizer = self.optimizers["policy"]
        lr = cfg.learning_rate * ((1.0 - self.progress) if cfg.anneal_lr else 1.0)
        set_lr(optimizer, lr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_and_step(optimizer, cfg.max_grad_norm)

        rhos = log_rhos.exp()
        return {
            "loss/policy": pg_loss.item(),
            "loss/value": v_loss.item(),
            "loss/entropy": entropy.item(),
            "diag/grad_norm": grad_norm.item(),
            "diag/lr": lr,
            "diag/rho_mean": rhos.mean().item(),
            "diag/rho_clip_frac": (rhos > cfg.rho_bar * (1 + 1e-6)).float().mean().item(),  # float noise at pi == mu is no clip
            "diag/ess": importance_ess(rhos).item(),
            "diag/explained_var": explained_variance(value.detach(), vs).item(),
            "diag/entropy": entropy.item(),
        }
