"""Deep Deterministic Policy Gradient.

Lillicrap et al., "Continuous control with deep reinforcement learning" (ICLR 2016),
Algorithm 1: a deterministic actor mu(s) and a critic Q(s, a), both with slowly tracking
target copies (Polyak averaging with rate ``tau``). Each update

    critic: minimize  (Q(s, a) - y)^2,   y = r + gamma * (1 - terminated) * Q'(s', mu'(s'))
    actor:  maximize  Q(s, mu(s))                   (the deterministic policy gradient)

Exploration adds Gaussian noise of std ``exploration_noise * (high - low) / 2`` to mu(s); the
paper's Ornstein-Uhlenbeck noise is replaced by uncorrelated Gaussian noise, which Fujimoto
et al. (2018, section 6.1) found works as well.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import torch
from torch import Tensor

from policyopt.agent import Agent
from policyopt.config import OffPolicyConfig
from policyopt.core.nets import ACTIVATIONS, DeterministicActorCritic
from policyopt.core.optim import adam, gradient_step
from policyopt.core.returns import td_target


@dataclass
class DDPGConfig(OffPolicyConfig):
    learning_rate: float = 1e-3  # actor; also the critic's unless critic_learning_rate is set
    critic_learning_rate: float | None = None
    tau: float = 0.005
    exploration_noise: float = 0.1  # std of the action noise, as a fraction of the half action range
    hidden_sizes: tuple[int, ...] = (256, 256)
    activation: str = field(default="relu", metadata={"choices": tuple(ACTIVATIONS)})


class DDPG(Agent):
    """DDPG for Box action spaces."""

    name = "ddpg"
    Config = DDPGConfig
    loop = "off_policy"
    record_exploration = True
    action_spaces = (gym.spaces.Box,)

    def build(self) -> None:
        cfg = self.config
        self.ac = DeterministicActorCritic(self.obs_dim, self.action_space, cfg.hidden_sizes, 1, cfg.activation).to(self.device)
        self.nets = torch.nn.ModuleDict({"actor_critic": self.ac})
        self.optimizers = {
            "actor": adam(self.ac.actor.parameters(), lr=cfg.learning_rate),
            "critic": adam(self.ac.critic.parameters(), lr=cfg.critic_learning_rate or cfg.learning_rate),
        }

    def act(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        return self.ac.act(obs, deterministic, self.config.exploration_noise), {}

    def critic_probe(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        action = self.ac.actor(obs)
        q = self.ac.critic(obs, action)[0]
        return action, {"q_estimate": q}, torch.zeros_like(q)

    def update(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        obs, next_obs = self.normalize(batch["obs"]), self.normalize(batch["next_obs"])
        grads, metrics = self.recorded(self.critic_gradients, obs, batch["action"], batch["reward"], next_obs, batch["terminated"])
        gradient_step(self.optimizers["critic"], grads)
        grads, metrics["loss/actor"] = self.recorded(self.actor_gradients, obs)
        gradient_step(self.optimizers["actor"], grads)
        self.ac.update_targets(self.config.tau)
        return metrics

    def critic_gradients(
        self, obs: Tensor, action: Tensor, reward: Tensor, next_obs: Tensor, terminated: Tensor
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """The critic's gradient of L = 1/N sum_i (y_i - Q(s_i, a_i))^2 (Algorithm 1), and metrics."""
        ac = self.ac
        with torch.no_grad():
            next_q = ac.critic_target(next_obs, ac.actor_target(next_obs))[0]
            target = td_target(reward, terminated, next_q, self.config.gamma)
        q = ac.critic(obs, action.flatten(1))[0]
        critic_loss = (q - target).pow(2).mean()
        grads = torch.autograd.grad(critic_loss, list(ac.critic.parameters()))
        return list(grads), {"loss/critic": critic_loss.detach(), "diag/q": q.detach().mean()}

    def actor_gradients(self, obs: Tensor) -> tuple[list[Tensor], Tensor]:
        """The actor's gradient of J = -1/N sum_i Q(s_i, mu(s_i)), and J: its gradient through Q's
        action input is the deterministic policy gradient of Algorithm 1 (Silver et al. 2014, eq. 6).
        Q is the first critic of ``self.ac`` (DDPG's only one; TD3's Q1)."""
        actor_loss = -self.ac.critic(obs, self.ac.actor(obs), detach_params=True)[0].mean()
        return list(torch.autograd.grad(actor_loss, list(self.ac.actor.parameters()))), actor_loss.detach()
