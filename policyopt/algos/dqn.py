"""Deep Q-Network and Double DQN.

Mnih et al., "Human-level control through deep reinforcement learning" (Nature 2015):
Q-learning with a neural network, experience replay, and a target network Q_target that is
a periodic copy of the online one. Actions are epsilon-greedy with epsilon decayed linearly.
Each update regresses Q(s, a) on the one-step target of ``dqn_target`` with the Huber loss.

``double_q=True`` is Double DQN (van Hasselt, Guez and Silver, "Deep Reinforcement Learning
with Double Q-learning", AAAI 2016): the online network picks the next action, the target
network evaluates it, which removes most of the max operator's overestimation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import torch
import torch.nn.functional as F
from torch import Tensor

from policyopt.agent import Agent
from policyopt.config import OffPolicyConfig
from policyopt.core.nets import ACTIVATIONS, mlp
from policyopt.core.optim import adam, gradient_step, polyak_update, target_copy
from policyopt.core.returns import td_target


@dataclass
class DQNConfig(OffPolicyConfig):
    learning_rate: float = 1e-4
    buffer_size: int = 100_000
    batch_size: int = 64
    train_frequency: int = 4
    double_q: bool = False  # Double DQN targets
    target_network_frequency: int = 1000  # gradient steps between target updates
    tau: float = 1.0  # 1 = hard copy (DQN); < 1 = Polyak averaging
    start_e: float = 1.0  # epsilon at the start of learn()
    end_e: float = 0.05
    exploration_fraction: float = 0.1  # fraction of learn() over which epsilon decays
    max_grad_norm: float = 10.0
    hidden_sizes: tuple[int, ...] = (64, 64)
    activation: str = field(default="relu", metadata={"choices": tuple(ACTIVATIONS)})


def dqn_target(reward: Tensor, terminated: Tensor, next_q_target: Tensor, gamma: float, next_q_online: Tensor | None = None) -> Tensor:
    """Q-learning target with a target network.

    DQN (Mnih et al. 2015, Methods, "Training algorithm for deep Q-networks"):

        y = r + gamma * (1 - terminated) * max_a' Q_target(s', a')

    Double DQN (van Hasselt et al. 2016, eq. 4), when ``next_q_online`` is given:

        y = r + gamma * (1 - terminated) * Q_target(s', argmax_a' Q_online(s', a'))

    ``reward, terminated``: ``[B]``; ``next_q_target, next_q_online``: ``[B, n_actions]``.
    """
    if next_q_online is None:
        next_value = next_q_target.max(dim=-1).values
    else:
        best = next_q_online.argmax(dim=-1, keepdim=True)
        next_value = next_q_target.gather(-1, best).squeeze(-1)
    return td_target(reward, terminated, next_value, gamma)


def linear_epsilon(start_e: float, end_e: float, exploration_fraction: float, progress: float) -> float:
    """Epsilon decayed linearly from ``start_e`` to ``end_e`` over the first ``exploration_fraction``
    of training, then held (Mnih et al. 2015, Extended Data Table 1)."""
    return start_e + (end_e - start_e) * min(1.0, progress / exploration_fraction)


class DQN(Agent):
    """DQN / Double DQN for Discrete action spaces."""

    name = "dqn"
    Config = DQNConfig
    loop = "off_policy"
    action_spaces = (gym.spaces.Discrete,)

    def build(self) -> None:
        cfg = self.config
        n_actions = int(self.action_space.n)
        self.q_net = mlp(self.obs_dim, cfg.hidden_sizes, n_actions, cfg.activation, ortho_init=False).to(self.device)
        self.q_target = target_copy(self.q_net)
        self.nets = torch.nn.ModuleDict({"q": self.q_net, "q_target": self.q_target})
        self.optimizers = {"q": adam(self.q_net.parameters(), lr=cfg.learning_rate)}

    @property
    def epsilon(self) -> float:
        cfg = self.config
        return linear_epsilon(cfg.start_e, cfg.end_e, cfg.exploration_fraction, self.progress)

    def act(self, obs: Tensor, deterministic: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
        greedy = self.q_net(obs).argmax(dim=-1)
        if deterministic:
            return greedy, {}
        explore = torch.rand(greedy.shape, device=obs.device) < self.epsilon
        random = torch.randint(int(self.action_space.n), greedy.shape, device=obs.device)
        return torch.where(explore, random, greedy), {}

    def critic_probe(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        q = self.q_net(obs)
        best = q.max(dim=-1)
        return best.indices, {"q_estimate": best.values}, torch.zeros_like(best.values)

    def update(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        cfg = self.config
        obs, next_obs = self.normalize(batch["obs"]), self.normalize(batch["next_obs"])
        grads, metrics = self.recorded(self.q_gradients, obs, batch["action"], batch["reward"], next_obs, batch["terminated"])
        metrics["diag/grad_norm"] = gradient_step(self.optimizers["q"], grads, cfg.max_grad_norm)
        if (self.num_updates + 1) % cfg.target_network_frequency == 0:
            polyak_update(self.q_net, self.q_target, cfg.tau)
        return {**metrics, "diag/epsilon": self.epsilon}

    def q_gradients(
        self, obs: Tensor, action: Tensor, reward: Tensor, next_obs: Tensor, terminated: Tensor
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """The Q-network's gradient of the Huber loss to the (double) DQN target, and metrics."""
        with torch.no_grad():
            next_q_online = self.q_net(next_obs) if self.config.double_q else None
            target = dqn_target(reward, terminated, self.q_target(next_obs), self.config.gamma, next_q_online)
        q = self.q_net(obs).gather(-1, action.long().unsqueeze(-1)).squeeze(-1)
        loss = F.smooth_l1_loss(q, target)  # Huber loss: the error clipping of Mnih et al. 2015, Methods
        grads = torch.autograd.grad(loss, list(self.q_net.parameters()))
        return list(grads), {"loss/q": loss.detach(), "diag/q": q.detach().mean()}
