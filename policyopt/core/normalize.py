"""Running mean/std normalizers kept as module buffers, so ``state_dict`` saves them.

Forgetting to save the observation statistics with the model is a classic way to ship a
policy that fails at evaluation time; here they live inside the agent's modules.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class RunningMeanStd(nn.Module):
    """Streaming mean and variance (Chan et al., 1979, parallel combination of moments)."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4):
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(epsilon, dtype=torch.float64))

    @torch.no_grad()
    def update(self, batch: Tensor) -> None:
        batch = batch.to(torch.float64)
        self.combine(batch.mean(0), batch.var(0, unbiased=False), batch.shape[0])

    @torch.no_grad()
    def combine(self, batch_mean: Tensor, batch_var: Tensor, n: float | Tensor) -> None:
        """Merge the moments of ``n`` more samples (mean, biased variance) into these."""
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean += delta * n / total
        m2 = self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / total
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    @torch.no_grad()
    def added_since(self, earlier: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(mean, var, n) of the samples merged in since ``earlier`` (a ``state_dict``): ``combine`` inverted.

        A rollout worker starts from the learner's statistics and reports only what it added,
        so the learner's normalizer counts every observation once, whatever the number of workers.
        """
        n = self.count - earlier["count"]
        if n <= 0:
            return torch.zeros_like(self.mean), torch.zeros_like(self.var), torch.zeros_like(n)
        batch_mean = (self.mean * self.count - earlier["mean"] * earlier["count"]) / n
        delta = batch_mean - earlier["mean"]
        m2 = self.var * self.count - earlier["var"] * earlier["count"] - delta.pow(2) * earlier["count"] * n / self.count
        return batch_mean, (m2 / n).clamp(min=0.0), n


class ObsNormalizer(nn.Module):
    """obs_norm = clip((obs - mean) / sqrt(var + eps), -clip, clip)."""

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, epsilon: float = 1e-8):
        super().__init__()
        self.rms = RunningMeanStd(shape)
        self.clip = clip
        self.epsilon = epsilon

    def update(self, obs: Tensor) -> None:
        self.rms.update(obs)

    def forward(self, obs: Tensor) -> Tensor:
        mean = self.rms.mean.to(obs.dtype)
        std = torch.sqrt(self.rms.var + self.epsilon).to(obs.dtype)
        return ((obs - mean) / std).clamp(-self.clip, self.clip)


class RewardScaler(nn.Module):
    """Divide rewards by the running std of the discounted return (no mean subtraction).

    The scheme of OpenAI baselines' VecNormalize, examined in Engstrom et al., "Implementation
    Matters in Deep Policy Gradients" (ICLR 2020), section 3: keep a per-env discounted return
    ``ret = ret * gamma + r`` (reset at episode ends) and scale ``r / sqrt(Var[ret] + eps)``.
    """

    def __init__(self, num_envs: int, gamma: float, clip: float = 10.0, epsilon: float = 1e-8):
        super().__init__()
        self.rms = RunningMeanStd(())
        self.register_buffer("ret", torch.zeros(num_envs, dtype=torch.float64))
        self.gamma = gamma
        self.clip = clip
        self.epsilon = epsilon

    @torch.no_grad()
    def forward(self, reward: Tensor, done: Tensor) -> Tensor:
        self.ret.mul_(self.gamma).add_(reward.to(torch.float64))
        self.rms.update(self.ret)
        self.ret.masked_fill_(done.bool(), 0.0)
        scaled = reward / torch.sqrt(self.rms.var + self.epsilon).to(reward.dtype)
        return scaled.clamp(-self.clip, self.clip)
