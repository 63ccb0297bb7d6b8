"""Soft Actor-Critic, for Box and Discrete action spaces.

Haarnoja et al., "Soft Actor-Critic Algorithms and Applications" (arXiv:1812.05905, 2018),
Algorithm 1: maximum-entropy RL with a stochastic actor, two soft Q critics with target
copies (the clipped double-Q of TD3), and a temperature alpha tuned so the policy's entropy
stays near ``target_entropy``. Each update

    critics:     minimize 0.5 * (Q_k(s, a) - y)^2,  y = r + gamma * (1 - terminated) * V'(s')
    actor:       minimize E_s[ -V(s) ] = E_s E_{a~pi}[ alpha * log pi(a|s) - min_k Q_k(s, a) ]
    temperature: minimize E_{a~pi}[ -alpha * (log pi(a|s) + target_entropy) ]

with the soft value ``V(s) = E_{a~pi}[min_k Q_k(s, a) - alpha * log pi(a|s)]``.

Box actions: a tanh-squashed Gaussian actor, sampled with the reparameterization trick
(eq. 11-13), with the tanh change-of-variables correction of the log-probability (appendix C
of Haarnoja et al., "Soft Actor-Critic", ICML 2018; ``core.distributions.SquashedGaussian``).
Discrete actions: Christodoulou, "Soft Actor-Critic for Discrete Action Settings"
(arXiv:1910.07207, 2019): the critics output Q(s, .) for every action and every expectation
over actions is computed exactly from pi(.|s) instead of being sampled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import gymnasium as gym
import torch
from torch import Tensor, nn

from policyopt.agent import Agent
from policyopt.config import OffPolicyConfig
from policyopt.core.nets import ACTIVATIONS, ActorCritic, ContinuousQ, EnsembleMLP, flat_dim
from policyopt.core.optim import adam, gradient_step, polyak_update, target_copy
from policyopt.core.returns import td_target


@dataclass
class SACConfig(OffPolicyConfig):
    learning_rate: float = 3e-4  # actor and temperature; also the critics' unless critic_learning_rate is set
    critic_learning_rate: float | None = None
    tau: float = 0.005
    policy_frequency: int = 1  # critic updates per actor (and temperature) update
    target_network_frequency: int = 1  # critic updates per Polyak update of the target critics
    autotune: bool = True  # learn alpha towards target_entropy
    alpha: float = 1.0  # initial temperature with autotune, the fixed one without
    target_entropy: float | None = None  # None: -dim(A) for Box, target_entropy_scale * log|A| for Discrete
    target_entropy_scale: float = 0.89  # CleanRL's value; Christodoulou 2019 (section 4) used 0.98
    hidden_sizes: tuple[int, ...] = (256, 256)
    activation: str = field(default="relu", metadata={"choices": tuple(ACTIVATIONS)})


def soft_state_value(q1: Tensor, q2: Tensor, logp: Tensor, alpha: Tensor | float, probs: Tensor | None = None) -> Tensor:
    """Soft state value with clipped double-Q.

    Box actions (Haarnoja et al. 2018b, eq. 3, one sample a ~ pi(.|s)):

        V(s) = min(Q1(s, a), Q2(s, a)) - alpha * log pi(a|s)         q1, q2, logp: [B]

    Discrete actions (Christodoulou 2019, eq. 10, the expectation taken exactly):

        V(s) = pi(.|s)^T [ min(Q1(s, .), Q2(s, .)) - alpha * log pi(.|s) ]
                                                   q1, q2, logp, probs: [B, n]

    Returns ``[B]``.
    """
    soft_q = torch.min(q1, q2) - alpha * logp
    return soft_q if probs is None else (probs * soft_q).sum(dim=-1)


def sac_critic_target(
    reward: Tensor,
    terminated: Tensor,
    next_q1: Tensor,
    next_q2: Tensor,
    next_logp: Tensor,
    alpha: Tensor | float,
    gamma: float,
    next_probs: Tensor | None = None,
) -> Tensor:
    """Soft Bellman target, Haarnoja et al. 2018b, eq. 3 and 5 (Christodoulou 2019, eq. 10):

        y = r + gamma * (1 - terminated) * V'(s'),   V' = ``soft_state_value`` of the target critics

    with a' ~ pi(.|s') from the current actor. ``reward, terminated``: ``[B]``; the ``next_*``
    tensors as in ``soft_state_value``. Returns ``[B]``.
    """
    return td_target(reward, terminated, soft_state_value(next_q1, next_q2, next_logp, alpha, next_probs), gamma)


def sac_actor_loss(q1: Tensor, q2: Tensor, logp: Tensor, alpha: Tensor | float, probs: Tensor | None = None) -> Tensor:
    """Policy loss, Haarnoja et al. 2018b, eq. 7 with the reparameterized action of eq. 11-12:

        J_pi = E_s[ alpha * log pi(a|s) - min(Q1(s, a), Q2(s, a)) ] = -E_s[ V(s) ],  a = f(eps; s)

    and its discrete form (Christodoulou 2019, eq. 12): J_pi = E_s[ pi(.|s)^T (alpha * log pi(.|s) - min Q(s, .)) ].
    Shapes as in ``soft_state_value``; returns a scalar.
    """
    return -soft_state_value(q1, q2, logp, alpha, probs).mean()


def sac_actor_loss_grad(q: Tensor, alpha: Tensor | float) -> tuple[Tensor, Tensor]:
    """The gradient of ``sac_actor_loss`` (Box actions) with respect to its inputs, ``q = [Q1, Q2]``
    at the actor's actions (``[2, B]``) and ``log pi`` (``[B]``):

        dJ_pi/dlog pi(a_i|s_i) = alpha / B,   dJ_pi/dQ_k(s_i, a_i) = -1/B where Q_k is the smaller, else 0

    and -1/(2B) to each critic on a tie, as ``torch.min``'s backward splits it: autograd's numbers
    (a power-of-two B scales exactly) in 7 small tensor ops instead of its 20.
    """
    batch = q.shape[1]
    first = (q[0] < q[1]) + 0.5 * (q[0] == q[1])  # share of the gradient that goes to Q1
    return torch.stack([first, 1.0 - first]) * (-1.0 / batch), (alpha / batch) * torch.ones_like(q[0])


def temperature_gradient(logp: Tensor, target_entropy: float, probs: Tensor | None = None) -> Tensor:
    """Automatic entropy tuning, Haarnoja et al. 2018b, eq. 18 (discrete: Christodoulou 2019, eq. 11):

        J(alpha) = E_{a~pi}[ -alpha * (log pi(a|s) + target_entropy) ]

    minimized over ``log_alpha`` with ``alpha`` replaced by ``log_alpha`` (as in the authors'
    softlearning code and SB3): the gradient has the same sign, so alpha rises while the
    entropy -E[log pi] is below ``target_entropy`` and falls above it, and the step size does
    not depend on alpha's scale. J is linear in ``log_alpha``; this returns its gradient

        dJ/dlog_alpha = -E[ log pi(a|s) + target_entropy ]       (J = log_alpha * dJ/dlog_alpha)

    with ``log pi`` taken as a constant. ``logp``: ``[B]`` (Box) or ``[B, n]`` with ``probs`` (Discrete).
    """
    expected_logp = logp if probs is None else (probs * logp).sum(dim=-1)
    return -(expected_logp.detach() + target_entropy).mean()


class Temperature(nn.Module):
    """alpha = exp(log_alpha), a module so it is saved with the networks."""

    def __init__(self, alpha: float):
        super().__init__()
        self.log_alpha = nn.Parameter(torch.tensor(math.log(alpha)))

    def forward(self) -> Tensor:
        return self.log_alpha.exp()


class SAC(Agent):
    """SAC: squashed-Gaussian actor for Box actions, categorical actor for Discrete ones."""

    name = "sac"
    Config = SACConfig
    loop = "off_policy"
    record_exploration = True
    action_spaces = (gym.spaces.Box, gym.spaces.Discrete)

    def build(self) -> None:
        cfg = self.config
        self.actor = ActorCritic(
            self.obs_dim,
            self.action_space,
            cfg.hidden_sizes,
            cfg.activation,
            policy="auto" if self.discrete else "squashed",
            ortho_init=False,
            value_head=False,
        ).to(self.device)
        if self.discrete:
            self.critic = EnsembleMLP(2, self.obs_dim, cfg.hidden_sizes, int(self.action_space.n), cfg.activation)
        else:
            self.critic = ContinuousQ(self.obs_dim, flat_dim(self.action_space), cfg.hidden_sizes, 2, cfg.activation)
        self.critic.to(self.device)
        self.critic_target = target_copy(self.critic)
        self.temperature = Temperature(cfg.alpha).to(self.device)
        self.target_entropy = self._target_entropy()
        self.nets = nn.ModuleDict(
            {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target, "temperature": self.temperature}
        )
        self.optimizers = {
            "actor": adam(self.actor.parameters(), lr=cfg.learning_rate),
            "critic": adam(self.critic.parameters(), lr=cfg.critic_learning_rate or cfg.learning_rate),
        }
        if cfg.autotune:
            self.optimizers["temperature"] = adam(self.temperature.parameters(), lr=cfg.learning_rate)

    def _target_entropy(self) -> float:
        cfg = self.config
        if cfg.target_entropy is not None:
            return cfg.target_entropy
        if self.discrete:
            return cfg.target_entropy_scale * math.log(int(self.action_space.n))
        return -float(flat_dim(self.action_space))  # -dim(A), Haarnoja et al. 2018b, section 5

    def act(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        dist = self.actor.dist(obs)
        return (dist.mode() if deterministic else dist.sample()), {}

    def _policy(self, obs: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(action or None, log-prob, probs or None) for the losses: a reparameterized sample
        and its log pi for Box; log pi(.|s) and pi(.|s) of every action for Discrete."""
        dist = self.actor.dist(obs)
        if self.discrete:
            return None, dist.logits, dist.probs
        action, logp = dist.rsample_with_log_prob()
        return action, logp, None

    def _q(self, critic: nn.Module, obs: Tensor, action: Tensor | None, detach_params: bool = False) -> Tensor:
        """Both critics: ``[2, B]`` at ``action`` (Box) or ``[2, B, n]`` over all actions (Discrete)."""
        return critic(obs, detach_params) if self.discrete else critic(obs, action, detach_params)

    def critic_probe(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        dist = self.actor.dist(obs)
        if self.discrete:
            action = dist.sample()
            logp = dist.log_prob(action)
            q = self.critic(obs).gather(-1, action.expand(2, -1).unsqueeze(-1)).squeeze(-1)
        else:
            action, logp = dist.rsample_with_log_prob()
            q = self.critic(obs, action)
        bonus = -self.temperature() * logp
        return action, {"q_estimate": q.min(dim=0).values, "q1_estimate": q[0]}, bonus

    def update(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        cfg = self.config
        obs, next_obs = self.normalize(batch["obs"]), self.normalize(batch["next_obs"])
        grads, metrics = self.recorded(self.critic_gradients, obs, batch["action"], batch["reward"], next_obs, batch["terminated"])
        gradient_step(self.optimizers["critic"], grads)
        if (self.num_updates + 1) % cfg.policy_frequency == 0:
            grads, actor_metrics = self.recorded(self.actor_gradients, obs)
            for name, net_grads in grads.items():
                gradient_step(self.optimizers[name], net_grads)
            metrics.update(actor_metrics)
        if (self.num_updates + 1) % cfg.target_network_frequency == 0:
            polyak_update(self.critic, self.critic_target, cfg.tau)
        return metrics

    def critic_gradients(
        self, obs: Tensor, action: Tensor, reward: Tensor, next_obs: Tensor, terminated: Tensor
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """The critics' gradient of J_Q (eq. 5, summed over both critics), and metrics."""
        alpha = self.temperature().detach()
        with torch.no_grad():
            next_action, next_logp, next_probs = self._policy(next_obs)
            next_q = self._q(self.critic_target, next_obs, next_action)
            target = sac_critic_target(reward, terminated, next_q[0], next_q[1], next_logp, alpha, self.config.gamma, next_probs)
        if self.discrete:
            q = self.critic(obs).gather(-1, action.long().expand(2, -1).unsqueeze(-1)).squeeze(-1)
        else:
            q = self.critic(obs, action.flatten(1))
        td_error = q - target
        critic_loss = 0.5 * td_error.pow(2).mean(dim=1).sum()
        # dJ_Q/dQ_k(s_i, a_i) = (Q_k(s_i, a_i) - y_i) / B, then autograd through the critics: the
        # same numbers as autograd's from critic_loss (a power-of-two B scales exactly), in 2 ops, not 10
        grads = torch.autograd.grad(q, list(self.critic.parameters()), grad_outputs=td_error / td_error.shape[1])
        return list(grads), {"loss/critic": critic_loss.detach(), "diag/q": q.detach().mean(), "diag/alpha": alpha}

    def actor_gradients(self, obs: Tensor) -> tuple[dict[str, list[Tensor]], dict[str, Tensor]]:
        """The actor's gradient of J_pi (eq. 7, through the critics at the actor's action), the
        temperature's of J(alpha) (eq. 18, ``temperature_gradient``) with ``autotune``, and metrics."""
        alpha = self.temperature().detach()
        action, logp, probs = self._policy(obs)
        q = self._q(self.critic, obs, action, detach_params=True)
        actor_loss = sac_actor_loss(q[0], q[1], logp, alpha, probs)
        if probs is None:  # dJ_pi/dQ and dJ_pi/dlog pi written out, then autograd through the actor
            outputs, grad_outputs = (q, logp), sac_actor_loss_grad(q, alpha)
        else:
            outputs, grad_outputs = (actor_loss,), None
        grads = {"actor": list(torch.autograd.grad(outputs, list(self.actor.parameters()), grad_outputs))}
        entropy = -(logp if probs is None else (probs * logp).sum(dim=-1)).detach().mean()
        metrics = {"loss/actor": actor_loss.detach(), "diag/entropy": entropy}
        if self.config.autotune:
            alpha_grad = temperature_gradient(logp, self.target_entropy, probs)
            grads["temperature"] = [alpha_grad]
            metrics["loss/alpha"] = self.temperature.log_alpha.detach() * alpha_grad
        return grads, metrics
