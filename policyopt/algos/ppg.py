"""Phasic Policy Gradient.

Cobbe, Hilton, Klimov & Schulman, "Phasic Policy Gradient" (ICML 2021), Algorithm 1. The policy
network pi(.|s) (with an auxiliary value head V_aux on its trunk) and the value network V(s)
are separate, and training alternates two phases:

Policy phase, ``n_pi`` iterations (N_pi), each on a fresh rollout:
    adv, v_target = GAE(V)
    ``policy_epochs`` (E_pi) epochs of minibatch steps on  L^CLIP - ent_coef * entropy  (PPO, eq. 7)
    ``value_epochs``  (E_V)  epochs of minibatch steps on  L^value = 0.5 * mean((V(s) - v_target)^2)
    keep every (s, v_target) of the rollout for the auxiliary phase

Auxiliary phase, after every N_pi iterations, on all kept states, with pi_old = pi frozen at
its start, ``aux_epochs`` (E_aux) epochs of minibatch steps on

    L^joint = L^aux + beta_clone * mean( KL[pi_old(.|s), pi(.|s)] )        (eq. 2)
    L^aux   = 0.5 * mean( (V_aux(s) - v_target)^2 )                        (eq. 1)

for the policy network, and on L^value for the value network (section 3: "we also take the
opportunity to perform additional training on the value network"). The value features thus
reach the policy trunk without their gradients interfering with the policy phase.

The clipped surrogate and the exact KL are ``ppo.py``'s pure functions; both value regressions
are ``core.optim.fit_regression``. The
states kept for the auxiliary phase are part of the agent's state (``extra_state``), so a
resumed run continues the phase exactly where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from policyopt.agent import ActorCriticConfig, Agent
from policyopt.config import minibatch_problems
from policyopt.core.buffers import RolloutBuffer, minibatch_indices
from policyopt.core.diagnostics import approx_kl, explained_variance
from policyopt.core.losses import clipped_surrogate_loss, dist_kl
from policyopt.core.nets import ActorCritic, mlp
from policyopt.core.optim import adam, clip_and_step, fit_regression
from policyopt.core.returns import rollout_gae, standardize


@dataclass
class PPGConfig(ActorCriticConfig):
    num_envs: int = 8
    num_steps: int = 256  # steps per env per rollout
    learning_rate: float = 5e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    batch_size: int = 64  # minibatch size of the policy phase
    n_pi: int = 32  # N_pi: policy iterations per auxiliary phase
    policy_epochs: int = 1  # E_pi
    value_epochs: int = 1  # E_V
    aux_epochs: int = 6  # E_aux
    aux_batch_size: int = 256  # minibatch size of the auxiliary phase
    beta_clone: float = 1.0
    norm_adv: bool = True  # normalize advantages per minibatch
    clip_coef: float = 0.2
    ent_coef: float = 0.0
    max_grad_norm: float | None = 0.5
    adam_eps: float = 1e-5
    normalize_reward: bool = False  # divide rewards by the running std of the discounted return

    def check(self) -> list[str]:
        problems = minibatch_problems(self)
        rollout = self.num_envs * self.num_steps
        if self.aux_batch_size > rollout * self.n_pi:
            problems.append(f"aux_batch_size ({self.aux_batch_size}) must be <= n_pi * num_envs * num_steps ({rollout * self.n_pi})")
        return problems


def joint_loss(aux_value: Tensor, v_target: Tensor, kl: Tensor, beta_clone: float) -> tuple[Tensor, Tensor]:
    """PPG paper, eq. 1 and 2: the auxiliary-phase loss of the policy network.

        L^aux   = 0.5 * mean((aux_value - v_target)^2)
        L^joint = L^aux + beta_clone * mean(kl)

    ``aux_value`` is V_aux(s) from the policy trunk, ``kl = KL[pi_old(.|s), pi(.|s)]``; all
    ``[B]``. Returns ``(L^joint, L^aux)``.
    """
    aux = 0.5 * (aux_value - v_target).pow(2).mean()
    return aux + beta_clone * kl.mean(), aux


class PPG(Agent):
    """PPG for Discrete and Box action spaces (Gaussian, Beta or gSDE policies)."""

    name = "ppg"
    Config = PPGConfig
    loop = "on_policy"

    def build(self) -> None:
        cfg = self.config
        # shared=True: the "critic" of this ActorCritic is V_aux, a linear head on the policy trunk
        self.policy = ActorCritic.from_config(self.obs_dim, self.action_space, cfg, shared=True).to(self.device)
        self.critic = mlp(self.obs_dim, cfg.hidden_sizes, 1, cfg.activation, ortho_init=cfg.ortho_init).to(self.device)
        self.nets = torch.nn.ModuleDict({"policy": self.policy, "critic": self.critic})
        self.optimizers = {
            "policy": adam(self.policy.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps, fused=False),
            "value": adam(self.critic.parameters(), lr=cfg.learning_rate, eps=cfg.adam_eps, fused=False),
        }
        self.phase_obs: list[Tensor] = []
        self.phase_targets: list[Tensor] = []

    def act(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        dist = self.policy.dist(obs)
        action = dist.mode() if deterministic else dist.sample()
        return action, {"logp": dist.log_prob(action), "value": self.value(obs)}

    def value(self, obs: Tensor) -> Tensor:
        return self.critic(obs).squeeze(-1)

    def begin_rollout(self, num_envs: int) -> None:
        self.policy.reset_noise(num_envs)

    def extra_state(self) -> dict:
        return {"phase_obs": self.phase_obs, "phase_targets": self.phase_targets}

    def load_extra_state(self, state: dict) -> None:
        self.phase_obs = list(state["phase_obs"])
        self.phase_targets = list(state["phase_targets"])

    def update(self, buf: RolloutBuffer) -> dict[str, float]:
        cfg = self.config
        data = buf.flat("obs", "action", "logp", "value")
        data["adv"], data["v_target"] = rollout_gae(buf, cfg.gamma, cfg.gae_lambda)
        metrics = self._policy_phase(data)
        metrics["loss/value"] = fit_regression(
            self.value, self.optimizers["value"], data["obs"], data["v_target"], cfg.value_epochs, cfg.batch_size
        )
        metrics["diag/explained_var"] = explained_variance(data["value"], data["v_target"])
        self.phase_obs.append(data["obs"].clone())
        self.phase_targets.append(data["v_target"].clone())
        if len(self.phase_obs) == cfg.n_pi:
            metrics.update(self._auxiliary_phase(torch.cat(self.phase_obs), torch.cat(self.phase_targets)))
            self.phase_obs, self.phase_targets = [], []
        return metrics

    def _policy_phase(self, data: dict[str, Tensor]) -> dict[str, float]:
        """E_pi epochs of PPO-clip minibatch steps on the policy network."""
        cfg = self.config
        optimizer = self.optimizers["policy"]
        sums = torch.zeros(3)  # policy loss, entropy, grad norm
        steps = 0
        for _ in range(cfg.policy_epochs):
            for idx in minibatch_indices(data["adv"].shape[0], cfg.batch_size, self.device):
                dist = self.policy.dist(data["obs"][idx])
                ratio = (dist.log_prob(data["action"][idx]) - data["logp"][idx]).exp()
                mb_adv = data["adv"][idx]
                if cfg.norm_adv and len(idx) > 1:
                    mb_adv = standardize(mb_adv)
                pg_loss = clipped_surrogate_loss(ratio, mb_adv, cfg.clip_coef)
                entropy = dist.entropy().mean()
                optimizer.zero_grad(set_to_none=True)
                (pg_loss - cfg.ent_coef * entropy).backward()
                grad_norm = clip_and_step(optimizer, cfg.max_grad_norm)
                sums += torch.stack([pg_loss.detach(), entropy.detach(), grad_norm.detach()])
                steps += 1
        means = (sums / steps).tolist()
        with torch.no_grad():
            log_ratio = self.policy.dist(data["obs"]).log_prob(data["action"]) - data["logp"]
            ratio = log_ratio.exp()
        return {
            "loss/policy": means[0],
            "loss/entropy": means[1],
            "diag/grad_norm": means[2],
            "diag/approx_kl": approx_kl(ratio, log_ratio).item(),
            "diag/clip_frac": ((ratio - 1.0).abs() > cfg.clip_coef).float().mean().item(),
        }

    def _auxiliary_phase(self, obs: Tensor, v_target: Tensor) -> dict[str, float]:
        """E_aux epochs of L^joint on the policy network and of L^value on the value network."""
        cfg = self.config
        optimizer = self.optimizers["policy"]
        old_params = {k: v.detach().clone() for k, v in self.policy.named_parameters()}
        sums = torch.zeros(2)  # L^aux, KL
        steps = 0
        for _ in range(cfg.aux_epochs):
            for idx in minibatch_indices(obs.shape[0], cfg.aux_batch_size, self.device):
                dist, aux_value = self.policy.dist_and_value(obs[idx])
                kl = dist_kl(self.policy, old_params, obs[idx], dist)
                loss, aux_loss = joint_loss(aux_value, v_target[idx], kl, cfg.beta_clone)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                clip_and_step(optimizer, cfg.max_grad_norm)
                sums += torch.stack([aux_loss.detach(), kl.detach().mean()])
                steps += 1
        value_fit = fit_regression(self.value, self.optimizers["value"], obs, v_target, cfg.aux_epochs, cfg.aux_batch_size)
        means = (sums / steps).tolist()
        return {"loss/aux_value_head": means[0], "loss/aux_clone_kl": means[1], "loss/aux_value_net": value_fit}
