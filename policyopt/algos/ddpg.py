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
from policyopt.core.optim import adam, minimize
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
        cfg, ac = self.config, self.ac
        obs, next_obs = self.normalize(batch["obs"]), self.normalize(batch["next_obs"])
        with torch.no_grad():
            next_q = ac.critic_target(next_obs, ac.actor_target(next_obs))[0]
            target = td_target(batch["reward"], batch["terminated"], next_q, cfg.gamma)
        q = ac.critic(obs, batch["action"].flatten(1))[0]
        critic_loss = (q - target).pow(2).mean()  # L = 1/N sum_i (y_i - Q(s_i, a_i))^2, Algorithm 1
        minimize(self.optimizers["critic"], critic_loss)
        # J = -1/N sum_i Q(s_i, mu(s_i)): its gradient through Q's action input is the
        # deterministic policy gradient of Algorithm 1 (Silver et al. 2014, eq. 6)
        actor_loss = -ac.critic(obs, ac.actor(obs), detach_params=True)[0].mean()
        minimize(self.optimizers["actor"], actor_loss)
        ac.update_targets(cfg.tau)
        return {"loss/critic": critic_loss.detach(), "loss/actor": actor_loss.detach(), "diag/q": q.detach().mean()}
