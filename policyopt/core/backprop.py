"""The backward pass of the actor-critic losses written out, without autograd.

The on-policy losses depend on the network only through three per-sample quantities, the
log-probability of the taken action, the entropy of pi(.|s) and the value:

    L = sum_i l_i(logp_i, v_i) - ent_coef * mean_i H_i

so dL/dtheta is the chain rule through three stages, each a few matrix operations:

1. the loss terms give ``dlogp_i = dL/dlogp_i``, ``dent_i = dL/dH_i`` and ``dvalue_i = dL/dv_i``
   (``clipped_surrogate_with_grad`` and ``value_loss_with_grad`` below; the entropy term gives
   ``dent_i = -ent_coef / B``);
2. the policy head turns them into the gradient of its outputs:
   Categorical, with ``lp = log softmax(z)``, ``p = exp(lp)``, ``H = -sum_j p_j lp_j``:
       dlogp_i/dlp_ij = 1[j = a_i],   dH_i/dlp_ij = -p_ij (lp_ij + 1),   then through log softmax
       dL/dz_ij = dL/dlp_ij - p_ij sum_k dL/dlp_ik   (so dlogp_i/dz_ij = 1[j = a_i] - p_ij and
       dH_i/dz_ij = -p_ij (lp_ij + H_i))
   diagonal Gaussian, with ``u = (a - mu) / sigma``:
       dlogp_i/dmu_ik = u_ik / sigma_k,        dlogp_i/dlog sigma_k = u_ik^2 - 1,   dH_i/dlog sigma_k = 1
3. each MLP layer ``z_k = h_{k-1} W_k^T + b_k, h_k = act(z_k)``, from the top down:
       dz_k = dh_k * act'(z_k),   dW_k = dz_k^T h_{k-1},   db_k = sum_i dz_k,   dh_{k-1} = dz_k W_k

The forward pass is the same sequence of operations as the module's own (``nets.MLP``, the
heads, ``core.distributions``), so ``logp``, ``entropy`` and ``value`` are bit-identical to
those of ``ActorCritic.dist_and_value``. The gradients equal autograd's up to float rounding
(the tests compare them for every supported network), and are autograd's bit for bit in PPO
with power-of-two minibatches and no entropy bonus on a Categorical policy: every product and
sum is then rounded as autograd rounds it (a PPO run is the same with either; tested). The
exceptions: a 1/B that is not a power of two scales in another order, and the Categorical
entropy gradient is a formula of its own. At the small networks of RL the
autograd engine's per-node bookkeeping costs as much as the arithmetic: PPO's update on the
CartPole zoo configuration (20 clipped Adam steps on 256 samples, 64x64 networks) took 32 ms
here against 41-45 ms with autograd.

Supported: ``ActorCritic`` with separate actor and critic MLPs (``tanh`` or ``relu``), a
Categorical or a diagonal Gaussian head (``unsupported`` says why another network is not).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policyopt.core.distributions import LOG_SQRT_2PI, Categorical, DiagGaussian, action_index
from policyopt.core.nets import MLP, ActorCritic, CategoricalHead, GaussianHead, affine, tanh, weight_grad

# activation: (forward, backward(dL/d out, out) -> dL/d in), the kernels autograd uses
_ACTIVATIONS = {
    nn.Tanh: (tanh, torch.ops.aten.tanh_backward),
    nn.ReLU: (F.relu, lambda grad, out: torch.ops.aten.threshold_backward(grad, out, 0)),
}
_HEADS = (CategoricalHead, GaussianHead)


def unsupported(policy: nn.Module) -> str | None:
    """Why the closed-form gradient cannot be used for ``policy``; None when it can."""
    if not isinstance(policy, ActorCritic):
        return f"{type(policy).__name__} is not an ActorCritic"
    if policy.shared or policy.critic is None:
        return "it needs separate actor and critic networks (shared_network=false)"
    if not isinstance(policy.actor_head, _HEADS):
        return f"it supports Categorical and Gaussian policies, not {type(policy.actor_head).__name__}"
    for layer in (*policy.actor_body, *policy.critic):
        if not isinstance(layer, nn.Linear) and type(layer) not in _ACTIVATIONS:
            return f"it supports tanh and relu activations, not {type(layer).__name__}"
    return None


def _layer_calls(net: MLP) -> list[tuple[Callable[..., Tensor], tuple[Tensor, ...]]]:
    """``net``'s layers as ``(function, parameters)``: ``nets.affine`` or the activation."""
    return [(affine, (layer.weight, layer.bias)) if isinstance(layer, nn.Linear) else (_ACTIVATIONS[type(layer)][0], ()) for layer in net]


def _run(calls: list[tuple[Callable[..., Tensor], tuple[Tensor, ...]]], x: Tensor) -> Tensor:
    for fn, params in calls:
        x = fn(x, *params)
    return x


def _mlp_forward(net: MLP, x: Tensor) -> list[Tensor]:
    """``[x, h_1, ..., h_n]``: the input and each layer's output (after its activation, if any)."""
    outs = [x]
    for fn, params in _layer_calls(net):
        outs.append(fn(outs[-1], *params))
    return outs


def _into(out: dict[nn.Parameter, Tensor] | None, param: nn.Parameter) -> dict[str, Tensor]:
    """``out=`` for the kernel that computes ``param``'s gradient, where ``out`` names its tensor."""
    return {} if out is None else {"out": out[param]}


def _mlp_backward(
    net: MLP, outs: list[Tensor], grad: Tensor, grads: dict[nn.Parameter, Tensor], out: dict[nn.Parameter, Tensor] | None
) -> Tensor:
    """Stage 3 for every layer of ``net``, top down; ``grad = dL/d(output)``. Fills ``grads``
    with dL/dW and dL/db (written into ``out``'s tensors, see ``ForwardPass.grads``) and returns
    dL/d(input)."""
    layers = list(net)
    for k in range(len(layers) - 1, -1, -1):
        layer, act_out, inp = layers[k], outs[k + 1], outs[k]
        if not isinstance(layer, nn.Linear):
            grad = _ACTIVATIONS[type(layer)][1](grad, act_out)
            continue
        grads[layer.weight] = weight_grad(grad, inp, **_into(out, layer.weight))
        grads[layer.bias] = torch.sum(grad, 0, **_into(out, layer.bias))
        if k > 0:
            grad = grad.mm(layer.weight)
    return grad


class FunctionalPolicy:
    """``dist(obs)`` and ``dist_and_value(obs)`` of a supported policy, what the policy's methods
    of these names compute, by the same ops (the same bits) as functional calls over a list of
    its layers made once: no module call and no per-layer lookup. ``agent.SampleStep`` calls it
    at every rollout step, where the Python between two env steps runs with cold CPU caches
    (a lookup costs several times what it costs in a loop). The list holds the parameters
    themselves, which optimizers update in place (``FlatAdam`` re-points their ``data``)."""

    def __init__(self, policy: ActorCritic):
        self.actor, self.critic = (_layer_calls(net) for net in (policy.actor_body, policy.critic))
        head = policy.actor_head
        self.categorical = isinstance(head, CategoricalHead)
        out = head.logits if self.categorical else head.mean
        self.head, self.log_std = (out.weight, out.bias), None if self.categorical else head.log_std

    def dist(self, obs: Tensor) -> Categorical | DiagGaussian:
        z = affine(_run(self.actor, obs), *self.head)
        return Categorical(z) if self.categorical else DiagGaussian(z, self.log_std)

    def dist_and_value(self, obs: Tensor) -> tuple[Categorical | DiagGaussian, Tensor]:
        return self.dist(obs), _run(self.critic, obs).squeeze(-1)


class NumpyActor:
    """The logits ``z`` of a supported Categorical policy's actor (see ``unsupported``), computed
    by NumPy on views of its float32 CPU parameters: ``agent.SampleStep`` acts through it in
    rollouts of host envs. Between two env steps a torch op costs several microseconds of
    dispatch with the CPU's caches cold, a NumPy call about a third of that: for 8 CartPole envs
    a step's sampling took 16-17 us here against 32-37 us through ``FunctionalPolicy``, and
    CleanRL's PPO config trained about 1.1x faster. NumPy's float32 matmul and ``tanh`` round
    on their own: the logits differ from the torch module's in the last bit (at most 1.2e-7
    on CartPole's), so a rollout's actions and log-probabilities are the policy's up to that
    rounding; the update computes its own with torch. The parameters are read live (in-place
    optimizer steps are seen); where one has been re-pointed to new memory (``FlatAdam``'s
    first step), the views are made anew."""

    _ACTIVATIONS = {nn.Tanh: lambda x: np.tanh(x, out=x), nn.ReLU: lambda x: np.maximum(x, 0, out=x)}

    def __init__(self, policy: ActorCritic):
        self.layers = [*policy.actor_body, policy.actor_head.logits]
        self.params = [p for layer in self.layers for p in layer.parameters()]
        self.pointers: list[int] = []
        self.calls: list[tuple[np.ndarray, np.ndarray] | Callable[[np.ndarray], np.ndarray]] = []

    @staticmethod
    def applies(policy: nn.Module) -> bool:
        """Whether ``policy`` is a supported Categorical policy with float32 parameters on the CPU."""
        return (
            unsupported(policy) is None
            and isinstance(policy.actor_head, CategoricalHead)
            and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in policy.parameters())
        )

    def _views(self) -> None:
        self.pointers = [p.data_ptr() for p in self.params]
        self.calls = [
            (layer.weight.detach().numpy().T, layer.bias.detach().numpy())
            if isinstance(layer, nn.Linear)
            else self._ACTIVATIONS[type(layer)]
            for layer in self.layers
        ]

    def logits(self, obs: np.ndarray) -> np.ndarray:
        """``z`` for a batch of observations ``[B, obs_dim]`` (float32): ``[B, n]``, a new array."""
        if [p.data_ptr() for p in self.params] != self.pointers:
            self._views()
        x = obs
        for call in self.calls:
            if isinstance(call, tuple):
                x = x @ call[0]
                x += call[1]
            else:
                x = call(x)
        return x


class ForwardPass:
    """One forward pass of an ``ActorCritic`` at ``(obs, action)``, kept for ``grads``.

    ``logp, entropy, value``: ``[B]``, as ``dist.log_prob(action)``, ``dist.entropy()`` and the
    value of ``policy.dist_and_value(obs)``.
    """

    def __init__(self, policy: ActorCritic, obs: Tensor, action: Tensor):
        self.policy = policy
        self.index = action_index(action)  # [B, 1], for gather and scatter
        self.actor = _mlp_forward(policy.actor_body, obs)
        self.critic = _mlp_forward(policy.critic, obs)
        self.value = self.critic[-1].squeeze(-1)
        head, features = policy.actor_head, self.actor[-1]
        if isinstance(head, CategoricalHead):
            logits = affine(features, head.logits.weight, head.logits.bias)
            self.log_probs = logits.log_softmax(dim=-1)
            self.probs = self.log_probs.exp()
            self.logp = self.log_probs.gather(-1, self.index).squeeze(-1)
            self.entropy = -(self.probs * self.log_probs).sum(-1)
        else:
            self.mean = affine(features, head.mean.weight, head.mean.bias)
            log_std = head.log_std.expand_as(self.mean)
            self.std = log_std.exp()
            self.u = (action - self.mean) / self.std
            self.logp = (-0.5 * self.u.pow(2) - log_std - LOG_SQRT_2PI).sum(-1)
            self.entropy = (log_std + 0.5 + LOG_SQRT_2PI).sum(-1)

    def grads(
        self, dlogp: Tensor, dent: float, dvalue: Tensor, out: dict[nn.Parameter, Tensor] | None = None
    ) -> dict[nn.Parameter, Tensor]:
        """dL/dtheta for every parameter of the policy, from ``dlogp = dL/dlogp: [B]``,
        ``dent = dL/dH_i`` (the same for every sample) and ``dvalue = dL/dv: [B]``. With ``out``
        (a tensor per parameter, e.g. views of one flat gradient), each gradient is written by
        its last kernel into its tensor there, with the same bits."""
        grads: dict[nn.Parameter, Tensor] = {}
        head = self.policy.actor_head
        dlogp = dlogp.unsqueeze(-1)
        if isinstance(head, CategoricalHead):  # stage 2, Categorical
            # dL/dlp, then through log_softmax with the kernel autograd uses, for autograd's rounding
            dlp = torch.zeros_like(self.log_probs).scatter_add_(-1, self.index, dlogp)
            if dent:
                dlp = dlp - dent * self.probs * (self.log_probs + 1.0)
            dz = torch.ops.aten._log_softmax_backward_data(dlp, self.log_probs, -1, dlp.dtype)
            out_layer = head.logits
        else:  # stage 2, diagonal Gaussian
            dz = dlogp * self.u / self.std
            # dlogp (u^2 - 1) + dent, summed in autograd's order (the path through sigma first,
            # then the direct terms), which makes it autograd's result bit for bit
            through_sigma = -(dlogp * -0.5 * (2 * self.u)) * (self.u / self.std) * self.std
            grads[head.log_std] = torch.sum(through_sigma + (dent - dlogp), 0, **_into(out, head.log_std))
            out_layer = head.mean
        features = self.actor[-1]
        grads[out_layer.weight] = weight_grad(dz, features, **_into(out, out_layer.weight))
        grads[out_layer.bias] = torch.sum(dz, 0, **_into(out, out_layer.bias))
        _mlp_backward(self.policy.actor_body, self.actor, dz.mm(out_layer.weight), grads, out)
        _mlp_backward(self.policy.critic, self.critic, dvalue.unsqueeze(-1), grads, out)
        return grads


def rows(x: Tensor) -> int:
    """The batch size as a plain int: a constant for ``runtime.trace`` (which records a step per
    minibatch size), where ``x.shape[0]`` would be recorded as ops on a tensor made of it."""
    return int(x.shape[0])


def clipped_surrogate_with_grad(
    ratio: Tensor, adv: Tensor, low: float | Tensor, high: float | Tensor
) -> tuple[Tensor, Tensor]:
    """``losses.clipped_surrogate_loss`` (a scalar) with the clip range ``[low, high] = [1 - clip_coef,
    1 + clip_coef]``, and its derivative in logp, ``[B]`` (ratio = exp(logp - logp_old)):

        dL/dlogp_i = -adv_i * ratio_i / B   where the unclipped term is the minimum, else 0

    Where the two terms are equal the ratio is inside the clip range and the gradient is the
    unclipped one; where the clipped term is smaller it is constant. ``clip_coef=inf`` gives
    the unclipped surrogate (PPO's ``objective=none``). The bounds may be 0-dim tensors (a
    traced step takes them as inputs), computed as floats first for the loss's own rounding.
    """
    unclipped = ratio * adv
    clipped = ratio.clamp(low, high) * adv
    loss = -torch.min(unclipped, clipped).mean()
    return loss, torch.where(unclipped <= clipped, unclipped, 0.0) * (-1.0 / rows(ratio))


def value_loss_with_grad(
    value: Tensor, v_target: Tensor, value_old: Tensor, clip_coef: float | Tensor | None
) -> tuple[Tensor, Tensor]:
    """``losses.value_loss`` (a scalar) and its derivative in V, ``[B]``: ``(V - v_target) / B``;
    with ``clip_coef``, zero where the clipped term is the larger one (it is then constant in V)."""
    err = value - v_target
    sq = err.pow(2)
    if clip_coef is None:
        return 0.5 * sq.mean(), err / rows(value)
    clipped = value_old + (value - value_old).clamp(-clip_coef, clip_coef)
    sq_clipped = (clipped - v_target).pow(2)
    loss = 0.5 * torch.max(sq, sq_clipped).mean()
    return loss, torch.where(sq >= sq_clipped, err, 0.0) / rows(value)
