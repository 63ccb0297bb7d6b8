"""REINFORCE: the Monte-Carlo policy gradient.

Williams, "Simple Statistical Gradient-Following Algorithms for Connectionist Reinforcement
Learning" (Machine Learning 8, 1992), section 4 (episodic REINFORCE, eq. 9). One update is one
gradient step on the batch of episodes that ended since the last update:

    grad J = (1/E) sum_e w_e sum_t grad log pi(a_t|s_t) * (psi_t - b_t)

    psi_t = R(tau) = sum_k gamma^k r_k              reward_to_go=False (the whole-trajectory return)
    psi_t = G_t = sum_{k>=t} gamma^(k-t) r_k        reward_to_go=True (causality: an action cannot
                                                    change the rewards that came before it)

``baseline`` picks b_t (any b that does not depend on a_t keeps the estimate unbiased):
``none`` (b = 0), ``mean`` (the batch mean of psi), ``value`` (a learned V(s_t), fitted to G_t
by regression after each update; needs reward_to_go), or ``optimal``, the constant that
minimizes the total variance (the trace of the covariance) of the per-episode estimate
g_e = A_e - b * B_e, with A_e = sum_t grad log pi_t * psi_t and B_e = grad log pi(tau_e):

    b* = sum_e A_e . B_e / sum_e |B_e|^2      (= E[|g|^2 R] / E[|g|^2] for the whole return)

This is the scalar version (Williams 1992, section 7.2; Peters & Schaal, "Reinforcement
learning of motor skills with policy gradients", Neural Networks 2008, section 3.2 derive the
per-parameter one). It needs per-episode gradients, computed with ``torch.func`` (a vmap of
per-step score gradients, summed per episode); b* is estimated on the same batch it is applied
to, as in those papers, which adds an O(1/E) bias.

Whole episodes from fixed-length rollouts. The on-policy runner hands over ``num_steps`` steps
per env, cut anywhere in an episode. Each env's unfinished steps wait in ``EpisodeAssembler``
and are joined to the next rollout, so every episode is used exactly once, when it ends, and
no length is favoured (keeping only the episodes that fit inside one rollout would drop long
episodes). The price: the steps collected before the last update came from an older policy
mu. The importance weight of the episode corrects that exactly,

    w_e = prod_t pi(a_t|s_t) / mu(a_t|s_t)   (1 for an episode collected by the current policy)

with mu's log-probabilities stored at collection time (``logp``). ``diag/ess`` reports how much
the weights spread (1: all equal); it stays high when one update moves the policy little. A truncated episode (time limit) bootstraps its last step from V(final obs) only
when there is a critic (``baseline=value``); otherwise its return stops at the limit.

The gamma^t factor of the exact gradient of the discounted objective is left out of the
reward-to-go form, as in practice (Thomas, "Bias in Natural Actor-Critic Algorithms", ICML 2014).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.func import functional_call, grad, vmap

from policyopt.agent import ActorCriticAgent, ActorCriticConfig
from policyopt.core.buffers import RolloutBuffer
from policyopt.core.diagnostics import explained_variance, importance_ess
from policyopt.core.nets import ActorCritic
from policyopt.core.optim import adam, clip_and_step, fit_regression
from policyopt.core.returns import discounted_returns

BASELINES = ("none", "mean", "value", "optimal")


@dataclass
class REINFORCEConfig(ActorCriticConfig):
    num_envs: int = 8
    num_steps: int = 512  # steps per env per rollout; unfinished episodes carry over to the next
    learning_rate: float = 1e-3
    gamma: float = 0.99
    reward_to_go: bool = True
    baseline: str = field(default="value", metadata={"choices": BASELINES})
    critic_learning_rate: float = 1e-3
    value_epochs: int = 5  # passes of the V(s) regression per update (baseline=value)
    batch_size: int = 256  # minibatch size of the V(s) regression
    max_grad_norm: float | None = None

    def check(self) -> list[str]:
        if self.baseline == "value" and not self.reward_to_go:
            return ["baseline=value estimates the reward-to-go G_t; it needs reward_to_go=true"]
        return []


CARRIED = ("obs", "action", "reward", "terminated", "done", "final_value", "logp")


class EpisodeAssembler:
    """Whole episodes out of fixed-length rollouts; each env's unfinished episode waits for the next."""

    def __init__(self, num_envs: int):
        self.pending: list[dict[str, Tensor]] = [{} for _ in range(num_envs)]

    def take(self, buf: RolloutBuffer) -> dict[str, Tensor]:
        """Append ``buf`` to each env's pending steps; return every episode that has now ended.

        Episodes are laid end to end, env after env, each ending with ``done = 1``: ``[T, ...]``
        per field of ``CARRIED`` (``T = 0`` when none ended).
        """
        finished: dict[str, list[Tensor]] = {k: [] for k in CARRIED}
        for i, pending in enumerate(self.pending):
            steps = {k: torch.cat([pending[k], buf[k][:, i]]) if pending else buf[k][:, i] for k in CARRIED}
            ends = torch.nonzero(steps["done"]).flatten()
            cut = int(ends[-1]) + 1 if len(ends) else 0
            for k in CARRIED:
                finished[k].append(steps[k][:cut])
            self.pending[i] = {k: v[cut:].clone() for k, v in steps.items()}  # the buffer is reused
        return {k: torch.cat(v) for k, v in finished.items()}

    def state_dict(self) -> dict:
        return {"pending": self.pending}

    def load_state_dict(self, state: dict) -> None:
        self.pending = [dict(p) for p in state["pending"]]


def episode_ids(done: Tensor) -> Tensor:
    """Episode index of each step of whole episodes laid end to end. ``done: [T]`` -> ``[T]`` long."""
    ends = done.long()
    return torch.cumsum(ends, 0) - ends


def episode_returns(ep: dict[str, Tensor], gamma: float) -> Tensor:
    """G_t = r_t + gamma * G_{t+1} inside each episode of ``EpisodeAssembler.take``'s output.

    At the last step G_T = r_T, plus gamma * final_value where the episode was truncated
    (``final_value`` is V(final obs) with a critic, else 0). Every field ``[T]``; returns ``[T]``.
    """
    column = {k: ep[k].unsqueeze(1) for k in ("reward", "final_value", "terminated", "done")}
    return discounted_returns(column["reward"], column["final_value"], column["terminated"], column["done"], gamma)[:, 0]


def trajectory_returns(returns: Tensor, episode: Tensor) -> Tensor:
    """R(tau) = G_0 of the step's episode, at every step. ``returns, episode: [T]`` -> ``[T]``."""
    first = torch.ones_like(episode, dtype=torch.bool)
    first[1:] = episode[1:] != episode[:-1]
    return returns[first][episode]


def episode_weights(logp: Tensor, logp_behavior: Tensor, episode: Tensor, num_episodes: int) -> Tensor:
    """w_e = prod_t pi(a_t|s_t) / mu(a_t|s_t) over the steps of episode e. ``[T]`` -> ``[E]``."""
    log_w = torch.zeros(num_episodes, dtype=logp.dtype, device=logp.device)
    return log_w.index_add_(0, episode, logp - logp_behavior).exp()


def reinforce_loss(logp: Tensor, psi: Tensor, baseline: Tensor | float, weights: Tensor, episode: Tensor) -> Tensor:
    """Williams (1992), eq. 9, negated; its gradient is the estimate in the module docstring.

        loss = -(1/E) sum_e w_e sum_t logp_t * (psi_t - b_t)

    ``logp, psi, episode: [T]``; ``baseline``: ``[T]`` or a number; ``weights: [E]``.
    """
    return -(weights[episode] * logp * (psi - baseline)).sum() / weights.numel()


def per_step_scores(policy: ActorCritic, obs: Tensor, action: Tensor) -> Tensor:
    """grad_theta log pi(a_t|s_t) for every step, flattened over the actor's parameters: ``[T, P]``."""
    params = {k: v.detach() for k, v in policy.named_parameters() if k.startswith("actor_")}

    def logp(p: dict[str, Tensor], o: Tensor, a: Tensor) -> Tensor:
        return functional_call(policy, p, (o.unsqueeze(0),)).log_prob(a.unsqueeze(0)).squeeze(0)

    scores = vmap(grad(logp), in_dims=(None, 0, 0))(params, obs, action)
    return torch.cat([g.reshape(obs.shape[0], -1) for g in scores.values()], dim=1)


def per_episode_gradients(
    policy: ActorCritic, obs: Tensor, action: Tensor, psi: Tensor, episode: Tensor, num_episodes: int, chunk: int = 1024
) -> tuple[Tensor, Tensor]:
    """A_e = sum_t grad log pi_t * psi_t and B_e = sum_t grad log pi_t, each ``[E, P]``.

    The per-episode REINFORCE estimate with a constant baseline b is A_e - b * B_e.
    Steps are processed ``chunk`` at a time to bound the ``[chunk, P]`` score matrix.
    """
    A = B = None
    for start in range(0, obs.shape[0], chunk):
        sl = slice(start, start + chunk)
        scores = per_step_scores(policy, obs[sl], action[sl])
        if A is None:
            A = scores.new_zeros(num_episodes, scores.shape[1])
            B = scores.new_zeros(num_episodes, scores.shape[1])
        A.index_add_(0, episode[sl], scores * psi[sl, None])
        B.index_add_(0, episode[sl], scores)
    return A, B


def optimal_baseline(A: Tensor, B: Tensor) -> Tensor:
    """b* = sum_e A_e . B_e / sum_e |B_e|^2, minimizing sum_e |A_e - b B_e|^2. ``A, B: [E, P]``."""
    return (A * B).sum() / B.pow(2).sum().clamp_min(1e-12)


class REINFORCE(ActorCriticAgent):
    """REINFORCE for Discrete and Box action spaces (Gaussian, Beta or gSDE policies)."""

    name = "reinforce"
    Config = REINFORCEConfig
    loop = "on_policy"

    def build(self) -> None:
        cfg = self.config
        value_head = cfg.baseline == "value"
        self.build_policy(value_head=value_head)
        self.optimizers = {"policy": adam(self.policy.actor_parameters(), lr=cfg.learning_rate, fused=False)}
        if cfg.baseline == "value":
            self.optimizers["value"] = adam(self.policy.critic_parameters(), lr=cfg.critic_learning_rate, fused=False)
        self.episodes = EpisodeAssembler(cfg.num_envs)

    def extra_state(self) -> dict:
        return {"episodes": self.episodes.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.episodes.load_state_dict(state["episodes"])

    def update(self, buf: RolloutBuffer) -> dict[str, float]:
        cfg = self.config
        ep = self.episodes.take(buf)
        if ep["done"].numel() == 0:
            return {"diag/episodes": 0.0}
        episode = episode_ids(ep["done"])
        num_episodes = int(episode[-1]) + 1
        returns = episode_returns(ep, cfg.gamma)
        psi = returns if cfg.reward_to_go else trajectory_returns(returns, episode)

        dist = self.policy.dist(ep["obs"])
        logp = dist.log_prob(ep["action"])
        weights = episode_weights(logp.detach(), ep["logp"], episode, num_episodes)
        baseline, values = self._baseline(ep, psi, episode, num_episodes, weights)

        loss = reinforce_loss(logp, psi, baseline, weights, episode)
        optimizer = self.optimizers["policy"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = clip_and_step(optimizer, cfg.max_grad_norm)

        metrics = {
            "loss/policy": loss.item(),
            "diag/grad_norm": grad_norm.item(),
            "diag/entropy": dist.entropy().mean().item(),
            "diag/baseline": float(torch.as_tensor(baseline).float().mean()),
            "diag/ess": importance_ess(weights),
            "diag/episodes": float(num_episodes),
        }
        if values is not None:
            metrics["diag/explained_var"] = explained_variance(values, returns)
            metrics["loss/value"] = fit_regression(
                self.policy.value, self.optimizers["value"], ep["obs"], returns, cfg.value_epochs, cfg.batch_size
            )
        return metrics

    def _baseline(
        self, ep: dict[str, Tensor], psi: Tensor, episode: Tensor, num_episodes: int, weights: Tensor
    ) -> tuple[Tensor | float, Tensor | None]:
        """b_t for ``reinforce_loss``, and V(s_t) when the baseline is the critic."""
        kind = self.config.baseline
        if kind == "mean":
            return psi.mean(), None
        if kind == "value":
            with torch.no_grad():
                values = self.policy.value(ep["obs"])
            return values, values
        if kind == "optimal":
            A, B = per_episode_gradients(self.policy, ep["obs"], ep["action"], psi, episode, num_episodes)
            return optimal_baseline(weights[:, None] * A, weights[:, None] * B), None
        return 0.0, None
