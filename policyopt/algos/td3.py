"""Twin Delayed Deep Deterministic policy gradient (TD3).

Fujimoto, van Hoof and Meger, "Addressing Function Approximation Error in Actor-Critic
Methods" (ICML 2018), Algorithm 1. DDPG with three changes against overestimation and
variance:

- clipped double-Q learning (section 4.2): two critics, both regressed on the smaller of
  their two target estimates (``td3_target``);
- delayed policy updates (section 5.2): the actor and the target networks move once every
  ``policy_frequency`` critic updates;
- target policy smoothing (section 5.3): the target action gets clipped Gaussian noise
  (``smoothed_target_action``), so the target averages Q over a small action neighbourhood.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import torch
from torch import Tensor

from policyopt.agent import Agent
from policyopt.algos.ddpg import DDPG
from policyopt.config import OffPolicyConfig
from policyopt.core.nets import ACTIVATIONS, DeterministicActorCritic
from policyopt.core.optim import adam, gradient_step
from policyopt.core.returns import td_target


@dataclass
class TD3Config(OffPolicyConfig):
    learning_rate: float = 1e-3  # actor; also the critics' unless critic_learning_rate is set
    critic_learning_rate: float | None = None
    tau: float = 0.005
    policy_frequency: int = 2  # d: critic updates per actor and target update
    exploration_noise: float = 0.1  # std of the behaviour noise, as a fraction of the half action range
    policy_noise: float = 0.2  # sigma~ of target policy smoothing, same unit
    noise_clip: float = 0.5  # c, same unit
    hidden_sizes: tuple[int, ...] = (256, 256)
    activation: str = field(default="relu", metadata={"choices": tuple(ACTIVATIONS)})


def smoothed_target_action(target_action: Tensor, noise: Tensor, noise_clip: Tensor | float, low: Tensor, high: Tensor) -> Tensor:
    """TD3 paper, section 5.3, eq. 15 (with the action bounds of Algorithm 1):

        a~ = clip(mu'(s') + clip(noise, -noise_clip, noise_clip), low, high),  noise ~ N(0, sigma~^2)

    ``target_action, noise``: ``[B, d]``; ``noise_clip, low, high``: scalars or ``[d]``.
    """
    return (target_action + noise.clamp(-noise_clip, noise_clip)).clamp(low, high)


def td3_target(reward: Tensor, terminated: Tensor, next_q1: Tensor, next_q2: Tensor, gamma: float) -> Tensor:
    """Clipped double-Q target, TD3 paper, section 4.2, eq. 10:

        y = r + gamma * (1 - terminated) * min(Q1'(s', a~), Q2'(s', a~))

    Every argument ``[B]``; both critics regress on the same ``y``.
    """
    return td_target(reward, terminated, torch.min(next_q1, next_q2), gamma)


class TD3(Agent):
    """TD3 for Box action spaces."""

    name = "td3"
    Config = TD3Config
    loop = "off_policy"
    record_exploration = True
    action_spaces = (gym.spaces.Box,)

    def build(self) -> None:
        cfg = self.config
        self.ac = DeterministicActorCritic(self.obs_dim, self.action_space, cfg.hidden_sizes, 2, cfg.activation).to(self.device)
        self.nets = torch.nn.ModuleDict({"actor_critic": self.ac})
        critic_lr = cfg.critic_learning_rate or cfg.learning_rate
        self.optimizers = {"actor": adam(self.ac.actor.parameters(), lr=cfg.learning_rate), "critic": adam(self.ac.critic.parameters(), lr=critic_lr)}

    def act(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        return self.ac.act(obs, deterministic, self.config.exploration_noise), {}

    def critic_probe(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        action = self.ac.actor(obs)
        q = self.ac.critic(obs, action)
        return action, {"q_estimate": q.min(dim=0).values, "q1_estimate": q[0]}, torch.zeros_like(q[0])

    def update(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        cfg = self.config
        obs, next_obs = self.normalize(batch["obs"]), self.normalize(batch["next_obs"])
        grads, metrics = self.recorded(self.critic_gradients, obs, batch["action"], batch["reward"], next_obs, batch["terminated"])
        gradient_step(self.optimizers["critic"], grads)
        if (self.num_updates + 1) % cfg.policy_frequency == 0:  # delayed policy update, then both targets move (Algorithm 1)
            grads, metrics["loss/actor"] = self.recorded(self.actor_gradients, obs)
            gradient_step(self.optimizers["actor"], grads)
            self.ac.update_targets(cfg.tau)
        return metrics

    def critic_gradients(
        self, obs: Tensor, action: Tensor, reward: Tensor, next_obs: Tensor, terminated: Tensor
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """The critics' gradient of the sum of both critics' MSE to the clipped double-Q target
        with target policy smoothing (Algorithm 1), and metrics."""
        cfg, ac = self.config, self.ac
        scale = ac.actor.scale
        with torch.no_grad():
            next_mean = ac.actor_target(next_obs)
            noise = cfg.policy_noise * scale * torch.randn_like(next_mean)
            next_action = smoothed_target_action(next_mean, noise, cfg.noise_clip * scale, ac.actor.low, ac.actor.high)
            next_q = ac.critic_target(next_obs, next_action)
            target = td3_target(reward, terminated, next_q[0], next_q[1], cfg.gamma)
        q = ac.critic(obs, action.flatten(1))
        critic_loss = (q - target).pow(2).mean(dim=1).sum()
        grads = torch.autograd.grad(critic_loss, list(ac.critic.parameters()))
        return list(grads), {"loss/critic": critic_loss.detach(), "diag/q": q.detach().mean()}

    # DDPG's deterministic policy gradient, through the first critic Q1 only (Algorithm 1)
    actor_gradients = DDPG.actor_gradients
