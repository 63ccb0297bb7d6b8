"""Network builders: MLPs with orthogonal initialization and the policy heads.

Orthogonal init with gain sqrt(2) on hidden layers, 0.01 on the policy output and 1 on the
value output follows "The 37 Implementation Details of PPO" (Huang et al., ICLR blog 2022),
detail 2, which traces it to the OpenAI baselines code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from policyopt import mkl_dispatch
from policyopt.core.distributions import (
    Beta,
    Categorical,
    DiagGaussian,
    Distribution,
    SquashedGaussian,
    StateDependentGaussian,
)
from policyopt.core.optim import polyak_update, target_copy
from policyopt.envs.vector import EnvError

POLICIES = ("auto", "gaussian", "beta", "gsde")  # the ``policy`` choices of the on-policy configs
ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU}


def _tanh_by_sigmoid(x: Tensor) -> Tensor:
    return torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)


class _Tanh(torch.autograd.Function):
    """``tanh`` under autograd, with the backward of ``torch.tanh``: dx = (1 - y^2) dy."""

    generate_vmap_rule = True  # for torch.func (REINFORCE's per-episode gradients)

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return _tanh_by_sigmoid(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def sigmoid_tanh(x: Tensor) -> Tensor:
    """tanh(x) = 2 sigmoid(2x) - 1 on PyTorch's own vectorized sigmoid, with ``torch.tanh``'s
    gradient formula on the output under autograd (as ``core.backprop`` writes it)."""
    if x.requires_grad and torch.is_grad_enabled():
        return _Tanh.apply(x)
    return _tanh_by_sigmoid(x)


def tanh(x: Tensor) -> Tensor:
    """The activation of ``nn.Tanh`` layers in ``MLP``: ``torch.tanh``, or ``sigmoid_tanh`` on CPU
    where MKL runs its generic kernels (see ``policyopt.mkl_dispatch``).

    ``torch.tanh`` on CPU calls MKL's ``vsTanh``. Where MKL runs its generic code (AMD CPUs,
    unless ``mkl_dispatch`` took MKL past its vendor check) it took 40 us for a 256x64 float32
    tensor on the 2-core AMD EPYC dev VM, a third of PPO's update, against 14 us for
    ``sigmoid_tanh`` (5 us with MKL's AVX-512 kernels). The two differ by float32 rounding, in
    about half the values, by at most 1.8e-7 (three float32 ulps of 1/2). Under ``torch.compile``
    it is ``torch.tanh``: the compiler writes its own kernel, and MKL's version query is not traced.
    """
    if torch.compiler.is_compiling() or not x.is_cpu or mkl_dispatch.code_path() != mkl_dispatch.GENERIC_PATH:
        return torch.tanh(x)
    return sigmoid_tanh(x)


_FUNCTIONAL = {nn.Tanh: tanh, nn.ReLU: F.relu, nn.ELU: F.elu, nn.SiLU: F.silu}


def affine(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear(x, weight, bias)``: ``x W^T + b``. For a batch of rows into a narrow output
    (2 to 8 features: a policy's head) it is computed as ``(W x^T + b)^T``, with the narrow
    dimension as the matmul's rows: MKL's kernel for ``x W^T`` at such shapes took 33 us for
    256 rows of 256 features into 2 here (6.9 us transposed), and 12 us (5.3) from 64 features.
    One output feature (a value head) goes to a matrix-vector kernel either way and stays as
    it is. The result is a transposed view, and each of its columns is contiguous. In training
    steps (16 pairs of blocks alternated in one process): SAC 1.011x (9 of 16 faster), PPO
    CartPole 1.009x (12 of 16) with the zoo's config, 1.003x (8 of 16) with CleanRL's."""
    if bias is not None and x.dim() == 2 and x.shape[0] >= 64 and 1 < weight.shape[0] <= 8:
        return torch.addmm(bias.unsqueeze(1), weight, x.t()).t()
    return F.linear(x, weight, bias)


def transposed_weight_grad(rows: int, in_features: int) -> bool:
    """Whether ``weight_grad`` computes a layer's weight gradient from ``rows`` samples of
    ``in_features`` as the transpose of ``inp^T grad``: few input features (at most 8, an
    observation) over 128 rows or more."""
    return in_features <= 8 and rows >= 128


def weight_grad(grad: Tensor, inp: Tensor, out: Tensor | None = None) -> Tensor:
    """A linear layer's weight gradient ``grad^T inp``, ``[out_features, in_features]`` (into
    ``out`` where given). From few input features over many rows (``transposed_weight_grad``:
    a first layer's) it is computed as ``(inp^T grad)^T``, with the narrow dimension as the
    matmul's rows, as in ``affine``: MKL's kernel for ``grad^T inp`` took 8.7 us for 256 rows of
    4 inputs into 64 here (6.0 us transposed and copied into ``out``), 29 us (8.8) for 256 rows
    of 3 into 256; under 128 rows it is the slower one (3.8 us, 5.1 at 64). The same bits at
    every shape tried (8 to 2048 rows, 1 to 17 inputs, 64 and 256 outputs, one and two threads).
    In training steps (16 pairs of blocks alternated in one process): PPO CartPole 1.013x (10 of
    16 faster) with the zoo's config, 1.017x (11 of 16) with CleanRL's; SAC Pendulum (by
    ``runtime.record``'s rewrite) 0.99x to 1.05x in four runs, 1.015x on their mean."""
    if transposed_weight_grad(*inp.shape):
        product = torch.mm(inp.t(), grad).t()
        return product if out is None else out.copy_(product)
    return torch.mm(grad.t(), inp) if out is None else torch.mm(grad.t(), inp, out=out)


def linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)`` without the module call (~30 us of Python per call on CPU, as much as the
    matmul itself at RL sizes), by ``affine``, unless something hooks the layer (K-FAC reads
    its inputs)."""
    if layer._forward_hooks or layer._forward_pre_hooks:
        return layer(x)
    return affine(x, layer.weight, layer.bias)


class MLP(nn.Sequential):
    """``nn.Sequential`` of ``nn.Linear`` and activation modules, evaluated with functional calls
    (see ``linear``); same parameters, state_dict and hooks as the plain Sequential."""

    def forward(self, x: Tensor) -> Tensor:
        for layer in self:
            x = linear(layer, x) if isinstance(layer, nn.Linear) else _FUNCTIONAL[type(layer)](x)
        return x


def layer_init(layer: nn.Linear, gain: float = math.sqrt(2), bias: float = 0.0, ortho: bool = True) -> nn.Linear:
    if ortho:
        nn.init.orthogonal_(layer.weight, gain)
        nn.init.constant_(layer.bias, bias)
    return layer


def mlp(
    in_dim: int,
    hidden_sizes: Sequence[int],
    out_dim: int | None = None,
    activation: str = "tanh",
    out_gain: float = 1.0,
    ortho_init: bool = True,
) -> MLP:
    """in_dim -> hidden_sizes (each followed by ``activation``) -> out_dim (linear, if given)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    last = in_dim
    for size in hidden_sizes:
        layers += [layer_init(nn.Linear(last, size), ortho=ortho_init), ACTIVATIONS[activation]()]
        last = size
    if out_dim is not None:
        layers.append(layer_init(nn.Linear(last, out_dim), gain=out_gain, ortho=ortho_init))
    return MLP(*layers)


def flat_dim(space: gym.Space) -> int:
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gym.spaces.Box):
        return int(np.prod(space.shape))
    raise TypeError(f"unsupported space {space}")


def _bounds(space: gym.spaces.Box) -> tuple[Tensor, Tensor]:
    low = torch.as_tensor(space.low, dtype=torch.float32).flatten()
    high = torch.as_tensor(space.high, dtype=torch.float32).flatten()
    return low, high


class CategoricalHead(nn.Module):
    def __init__(self, in_dim: int, n: int, ortho_init: bool = True):
        super().__init__()
        self.logits = layer_init(nn.Linear(in_dim, n), gain=0.01, ortho=ortho_init)

    def forward(self, features: Tensor) -> Categorical:
        return Categorical(linear(self.logits, features))


class GaussianHead(nn.Module):
    """Mean from the network, state-independent learned log-std (as in TRPO/PPO for MuJoCo)."""

    def __init__(self, in_dim: int, action_dim: int, log_std_init: float = 0.0, ortho_init: bool = True):
        super().__init__()
        self.mean = layer_init(nn.Linear(in_dim, action_dim), gain=0.01, ortho=ortho_init)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))

    def forward(self, features: Tensor) -> DiagGaussian:
        return DiagGaussian(linear(self.mean, features), self.log_std)


class StateDependentNoiseHead(nn.Module):
    """gSDE (``core.distributions.StateDependentGaussian``): mean from the network and a learned
    ``log_sigma: [in_dim, d]``; std_k(s) = sqrt(sum_j z_j^2 sigma_jk^2 + 1e-6) from the detached
    features ``z`` (the features are not trained through the std, the paper's default).

    ``reset_noise(n)`` draws the exploration matrices ``W: [n, in_dim, d]``, one per env,
    W_jk ~ N(0, sigma_jk^2); until the next reset, a batch of ``n`` observations explores with
    ``noise_i = z(s_i)^T W_i``. The matrices are not saved: a resumed run draws new ones at
    its next rollout, as every rollout does.
    """

    def __init__(self, in_dim: int, action_dim: int, log_std_init: float = -2.0, ortho_init: bool = True):
        super().__init__()
        self.mean = layer_init(nn.Linear(in_dim, action_dim), gain=0.01, ortho=ortho_init)
        self.log_sigma = nn.Parameter(torch.full((in_dim, action_dim), float(log_std_init)))
        self.weights: Tensor | None = None

    def reset_noise(self, n: int) -> None:
        with torch.no_grad():
            sigma = self.log_sigma.exp()
            self.weights = sigma * torch.randn((n, *sigma.shape), device=sigma.device)

    def forward(self, features: Tensor) -> StateDependentGaussian:
        z = features.detach()
        log_std = 0.5 * (z.pow(2) @ self.log_sigma.mul(2).exp() + 1e-6).log()
        noise = None
        if self.weights is not None and self.weights.shape[0] == z.shape[0]:
            noise = torch.bmm(z.unsqueeze(1), self.weights).squeeze(1)
        return StateDependentGaussian(linear(self.mean, features), log_std, noise)


class BetaHead(nn.Module):
    """alpha, beta = 1 + softplus(.) so both exceed 1 and the density is unimodal."""

    def __init__(self, in_dim: int, space: gym.spaces.Box, ortho_init: bool = True):
        super().__init__()
        action_dim = flat_dim(space)
        self.params = layer_init(nn.Linear(in_dim, 2 * action_dim), gain=0.01, ortho=ortho_init)
        low, high = _bounds(space)
        self.register_buffer("low", low)
        self.register_buffer("high", high)

    def forward(self, features: Tensor) -> Beta:
        alpha, beta = (1.0 + F.softplus(linear(self.params, features))).chunk(2, dim=-1)
        return Beta(alpha, beta, self.low, self.high)


class SquashedGaussianHead(nn.Module):
    """State-dependent mean and log-std, tanh-squashed into the action bounds (SAC)."""

    LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

    def __init__(self, in_dim: int, space: gym.spaces.Box):
        super().__init__()
        action_dim = flat_dim(space)
        self.params = nn.Linear(in_dim, 2 * action_dim)
        low, high = _bounds(space)
        self.register_buffer("loc", (high + low) / 2.0)
        self.register_buffer("scale", (high - low) / 2.0)

    def forward(self, features: Tensor) -> SquashedGaussian:
        mean, log_std = linear(self.params, features).chunk(2, dim=-1)
        # squash log_std smoothly into [LOG_STD_MIN, LOG_STD_MAX], as in CleanRL's SAC
        log_std = self.LOG_STD_MIN + 0.5 * (self.LOG_STD_MAX - self.LOG_STD_MIN) * (torch.tanh(log_std) + 1.0)
        return SquashedGaussian(mean, log_std, self.loc, self.scale)


def policy_head(
    in_dim: int, action_space: gym.Space, kind: str = "auto", log_std_init: float = 0.0, ortho_init: bool = True
) -> nn.Module:
    """The head that turns features into pi(.|s) for ``action_space``.

    ``kind``: ``auto`` (Categorical for Discrete, Gaussian for Box), ``gaussian``, ``beta``,
    ``gsde`` (Gaussian with state-dependent exploration; start with ``log_std_init`` about -2),
    ``squashed`` (tanh Gaussian).
    """
    if isinstance(action_space, gym.spaces.Discrete):
        if kind not in ("auto", "categorical"):
            raise EnvError(f"policy {kind!r} needs a Box action space, the env's is {action_space}")
        return CategoricalHead(in_dim, int(action_space.n), ortho_init)
    if not isinstance(action_space, gym.spaces.Box):
        raise EnvError(f"unsupported action space {action_space}")
    if kind in ("auto", "gaussian"):
        return GaussianHead(in_dim, flat_dim(action_space), log_std_init, ortho_init)
    if kind == "beta":
        return BetaHead(in_dim, action_space, ortho_init)
    if kind == "gsde":
        return StateDependentNoiseHead(in_dim, flat_dim(action_space), log_std_init, ortho_init)
    if kind == "squashed":
        return SquashedGaussianHead(in_dim, action_space)
    raise ValueError(f"unknown policy kind {kind!r}; choose auto, gaussian, beta or squashed")


class ActorCritic(nn.Module):
    """pi(a|s) and V(s) from separate MLPs, or from one shared trunk when ``shared=True``.

    ``dist(obs)`` returns the action distribution (no hidden state), ``value(obs)`` a ``[B]``
    tensor, ``dist_and_value(obs)`` both from one pass over the trunk.
    """

    def __init__(
        self,
        obs_dim: int,
        action_space: gym.Space,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: str = "tanh",
        policy: str = "auto",
        shared: bool = False,
        log_std_init: float = 0.0,
        ortho_init: bool = True,
        value_head: bool = True,
    ):
        super().__init__()
        self.shared = shared
        feat = hidden_sizes[-1] if hidden_sizes else obs_dim
        self.actor_body = mlp(obs_dim, hidden_sizes, activation=activation, ortho_init=ortho_init)
        self.actor_head = policy_head(feat, action_space, policy, log_std_init, ortho_init)
        self.critic: nn.Module | None = None
        if value_head:
            if shared:
                self.critic = layer_init(nn.Linear(feat, 1), gain=1.0, ortho=ortho_init)
            else:
                self.critic = mlp(obs_dim, hidden_sizes, 1, activation, out_gain=1.0, ortho_init=ortho_init)

    @classmethod
    def from_config(cls, obs_dim: int, action_space: gym.Space, config: Any, **overrides: Any) -> ActorCritic:
        """Built from the fields an algorithm config shares: hidden_sizes, activation, policy,
        log_std_init, ortho_init and (where the config has it) shared_network; ``overrides`` win."""
        kwargs = dict(
            hidden_sizes=config.hidden_sizes,
            activation=config.activation,
            policy=config.policy,
            shared=getattr(config, "shared_network", False),
            log_std_init=config.log_std_init,
            ortho_init=config.ortho_init,
        )
        return cls(obs_dim, action_space, **{**kwargs, **overrides})

    def dist(self, obs: Tensor) -> Distribution:
        return self.actor_head(self.actor_body(obs))

    forward = dist

    def value(self, obs: Tensor) -> Tensor:
        if self.critic is None:
            return torch.zeros(obs.shape[0], device=obs.device)
        return self._critic(self.actor_body(obs) if self.shared else obs)

    def dist_and_value(self, obs: Tensor) -> tuple[Distribution, Tensor]:
        features = self.actor_body(obs)
        dist = self.actor_head(features)
        if self.critic is None:
            return dist, torch.zeros(obs.shape[0], device=obs.device)
        return dist, self._critic(features if self.shared else obs)

    def _critic(self, x: Tensor) -> Tensor:
        out = linear(self.critic, x) if isinstance(self.critic, nn.Linear) else self.critic(x)
        return out.squeeze(-1)

    def reset_noise(self, num_envs: int) -> None:
        """New gSDE exploration matrices, one per env (nothing for the other policy heads)."""
        if isinstance(self.actor_head, StateDependentNoiseHead):
            self.actor_head.reset_noise(num_envs)

    def actor_parameters(self) -> list[nn.Parameter]:
        return [*self.actor_body.parameters(), *self.actor_head.parameters()]

    def critic_parameters(self) -> list[nn.Parameter]:
        if self.critic is None:
            return []
        return list(self.critic.parameters())


class EnsembleMLP(nn.Module):
    """``num_members`` independent MLPs evaluated together: one ``torch.baddbmm`` per layer.

    Layer ``i`` stores the weights of every member stacked, ``[K, in_i, out_i]``, and the
    biases ``[K, 1, out_i]``, so twin critics cost one batched matmul per layer instead of two
    matmuls and two module calls. A layer with one output (a Q-value) multiplies and sums
    instead: a batched matmul into one column gets no matrix-vector kernel, and took 31 us for
    twin 256-feature heads on 256 rows here (the product and sum 15 us; the weights' gradient
    31 us as a matmul, 13 us as a sum; SAC's training step 1.015x, 12 of 16 pairs of blocks
    alternated in one process). Input ``[B, in]`` (shared by all members) or ``[K, B, in]``;
    output ``[K, B, out]``. Each member starts like ``nn.Linear`` (uniform in +-1/sqrt(fan_in)),
    the default of the off-policy critics in SB3 and CleanRL.

    ``detach_params=True`` evaluates with the parameters cut from the graph: gradients still
    flow to the input (the actor's action), not to the critic, which saves the weight-gradient
    half of the backward pass in actor updates.
    """

    def __init__(self, num_members: int, in_dim: int, hidden_sizes: Sequence[int], out_dim: int, activation: str = "relu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self.num_members = num_members
        sizes = [in_dim, *hidden_sizes, out_dim]
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(num_members, a, b)) for a, b in zip(sizes, sizes[1:]))
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(num_members, 1, b)) for b in sizes[1:])
        self.activation = ACTIVATIONS[activation]()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for weight, bias in zip(self.weights, self.biases):
            bound = 1.0 / math.sqrt(weight.shape[1])
            weight.uniform_(-bound, bound)
            bias.uniform_(-bound, bound)

    def forward(self, x: Tensor, detach_params: bool = False) -> Tensor:
        h = x.expand(self.num_members, *x.shape) if x.dim() == 2 else x
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            if detach_params:
                weight, bias = weight.detach(), bias.detach()
            if weight.shape[-1] == 1:  # one output: multiply and sum (see the class docstring)
                h = (h * weight.transpose(1, 2)).sum(-1, keepdim=True) + bias
            else:
                h = torch.baddbmm(bias, h, weight)
            if i < last:
                h = self.activation(h)
        return h


class ContinuousQ(nn.Module):
    """``num_critics`` action-value functions Q_k(s, a) for Box actions, fused: ``[K, B]``."""

    def __init__(
        self, obs_dim: int, action_dim: int, hidden_sizes: Sequence[int], num_critics: int = 2, activation: str = "relu"
    ):
        super().__init__()
        self.net = EnsembleMLP(num_critics, obs_dim + action_dim, hidden_sizes, 1, activation)

    def forward(self, obs: Tensor, action: Tensor, detach_params: bool = False) -> Tensor:
        return self.net(torch.cat([obs, action], dim=-1), detach_params).squeeze(-1)


class DeterministicActor(nn.Module):
    """mu(s) = loc + scale * tanh(mlp(s)): a deterministic policy inside the Box bounds (DDPG, TD3)."""

    def __init__(self, obs_dim: int, space: gym.spaces.Box, hidden_sizes: Sequence[int], activation: str = "relu"):
        super().__init__()
        self.net = mlp(obs_dim, hidden_sizes, flat_dim(space), activation, ortho_init=False)
        low, high = _bounds(space)
        self.register_buffer("low", low)
        self.register_buffer("high", high)
        self.register_buffer("loc", (high + low) / 2.0)
        self.register_buffer("scale", (high - low) / 2.0)

    def forward(self, obs: Tensor) -> Tensor:
        return self.loc + self.scale * torch.tanh(self.net(obs))

    def explore(self, action: Tensor, noise: float) -> Tensor:
        """clip(mu(s) + eps, low, high), eps ~ N(0, (noise * scale)^2): the Gaussian exploration
        of DDPG and TD3 (Fujimoto et al. 2018, section 6.1). ``action: [B, d]``."""
        return (action + noise * self.scale * torch.randn_like(action)).clamp(self.low, self.high)


class DeterministicActorCritic(nn.Module):
    """A deterministic actor mu(s), ``num_critics`` fused critics Q_k(s, a), and a target copy of
    each (DDPG: one critic, TD3: two). ``update_targets(tau)`` moves both targets by Polyak averaging."""

    def __init__(
        self, obs_dim: int, space: gym.spaces.Box, hidden_sizes: Sequence[int], num_critics: int, activation: str = "relu"
    ):
        super().__init__()
        self.actor = DeterministicActor(obs_dim, space, hidden_sizes, activation)
        self.critic = ContinuousQ(obs_dim, flat_dim(space), hidden_sizes, num_critics, activation)
        self.actor_target = target_copy(self.actor)
        self.critic_target = target_copy(self.critic)

    def act(self, obs: Tensor, deterministic: bool, noise: float) -> Tensor:
        action = self.actor(obs)
        return action if deterministic else self.actor.explore(action, noise)

    def update_targets(self, tau: float) -> None:
        polyak_update(self.actor, self.actor_target, tau)
        polyak_update(self.critic, self.critic_target, tau)


def dist_under(policy: nn.Module, params: dict[str, Tensor], obs: Tensor) -> Distribution:
    """pi(.|s) computed with ``params`` in place of the policy's own (e.g. pi_old for a KL).

    ``policy.forward`` must return the distribution, as ``ActorCritic.forward`` does.
    """
    return functional_call(policy, params, (obs,))
