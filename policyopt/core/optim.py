"""Optimization helpers shared by algorithms: target networks, Adam over flat buffers
(``FlatAdam``, with gradient clipping folded in), flat parameter vectors, and (for the
natural-gradient family) conjugate gradient, Fisher-vector products, line search and K-FAC.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.adam import adam as torch_adam

from policyopt.core.buffers import minibatch_indices
from policyopt.runtime import trace


def target_copy(online: nn.Module) -> nn.Module:
    """A frozen deep copy of ``online``: a target network, moved only by ``polyak_update``."""
    return copy.deepcopy(online).requires_grad_(False)


@torch.no_grad()
def polyak_update(online: nn.Module, target: nn.Module, tau: float) -> None:
    """target <- tau * online + (1 - tau) * target, parameters and buffers alike.

    Lillicrap et al., "Continuous control with deep reinforcement learning" (DDPG, 2016),
    Algorithm 1. ``tau = 1`` is the hard copy of DQN (Mnih et al., 2015).

    The two modules' tensors are listed at the first call for a pair and kept (``_TARGET_TENSORS``):
    SAC's training step on Pendulum was 1.4% faster without listing them at every update
    (measured in one process, blocks of steps alternated). The lists hold the tensor objects,
    which optimizer steps and ``load_state_dict`` change in place; a tensor object replaced
    afterwards (a new parameter, or a buffer moved by ``.to()``, which makes a new one) is not seen.
    """
    known = _TARGET_TENSORS.get(target)
    if known is None or known[0]() is not online:
        online_tensors = [*online.parameters(), *online.buffers()]
        target_tensors = [*target.parameters(), *target.buffers()]
        if len(target_tensors) != len(online_tensors):
            raise ValueError(f"the target has {len(target_tensors)} tensors, the online module {len(online_tensors)}")
        floats = [i for i, t in enumerate(target_tensors) if t.is_floating_point()]
        known = (weakref.ref(online), target_tensors, online_tensors, [target_tensors[i] for i in floats], [online_tensors[i] for i in floats])
        _TARGET_TENSORS[target] = known
    _, target_tensors, online_tensors, target_floats, online_floats = known
    if tau == 1.0:
        torch._foreach_copy_(target_tensors, online_tensors)
    elif target_floats:
        torch._foreach_lerp_(target_floats, online_floats, tau)


_TARGET_TENSORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # polyak_update's lists, by target module


def adam(params: Iterable[Tensor], lr: float, fused: bool = True, **kwargs) -> torch.optim.Optimizer:
    """Adam without PyTorch's default per-tensor Python loop, which dominates the step for
    networks of RL size on CPU. ``fused=True``: one kernel over all parameters, about 3-4x
    faster than the loop. ``fused=False``: ``FlatAdam``, bit-identical to the loop (the fused
    kernel rounds differently in the last bit); the on-policy algorithms use it so that their
    measured results stay reproducible."""
    if fused:
        return FusedAdam(params, lr=lr, **kwargs)
    return FlatAdam(params, lr=lr, **kwargs)


class FusedAdam(torch.optim.Adam):
    """``torch.optim.Adam(fused=True)`` whose steps call the fused kernel directly.

    Once every parameter has its state and a gradient, a step is what PyTorch's fused Adam
    runs: ``_foreach_add_`` of one on the step counts (here of a tensor one, which the counts
    need not cast), then ``torch._fused_adam_`` (``_fused_adamw_`` with decoupled weight decay)
    over each parameter group, with the same arguments: the same kernels, the same bits. It
    skips the Python around them in ``Adam.step``: the profiling and hook wrapper of
    ``torch.optim.Optimizer``, the per-parameter checks of ``_init_group``, the grouping of the
    tensors by device and dtype (here checked once, as the groups are added), and the lookup of
    each parameter's state (the state's tensors are listed once, at the first direct step, and
    anew after ``load_state_dict``, which replaces them, or a copy). ``step_with(grads)`` takes
    the gradients as a list instead of from ``.grad`` (``gradient_step``: SAC, TD3, DDPG). SAC's
    update takes three steps (critics, actor, temperature); between the update's graphs, with
    the caches cold, that Python cost about 5% of a training step on Pendulum here, and listing
    the state once and passing the gradients directly gained 4% more (one process, 16 pairs of
    200-step blocks alternated, twice: 1.042x and 1.041x, 13 of 16 pairs faster each time).
    Anything else (the first step, which makes the state; a parameter without a gradient; a
    closure; a tensor learning rate or betas; a ``GradScaler``'s ``grad_scale``) goes through
    ``Adam.step``. Like ``FlatAdam.step``, ``step`` is not wrapped with the optimizer's
    profiling and step hooks.
    """

    def __init__(self, params: Iterable[Tensor], lr: float, **kwargs):
        super().__init__(params, lr=lr, fused=True, **kwargs)
        self._one: Tensor | None = None  # what the step counts are raised by, a tensor of their dtype

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self._plan_anew()

    def __setstate__(self, state: dict[str, Any]) -> None:
        """``load_state_dict`` (new state tensors), unpickling and ``copy.deepcopy`` come through here."""
        super().__setstate__(state)
        self._one = None
        self._plan_anew()

    def _plan_anew(self) -> None:
        kinds = {(p.device, p.dtype) for group in self.param_groups for p in group["params"]}
        self._direct = len(kinds) == 1 and next(iter(kinds))[0].type in ("cpu", "cuda")
        self._states: list[tuple[dict, dict[str, list[Tensor]]]] | None = None  # listed at the next direct step

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        if closure is None and self._direct_step([p.grad for group in self.param_groups for p in group["params"]]):
            return None
        # Adam.step(fused=True) has the same flaw as the kernel, below: hand it contiguous gradients
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and not p.grad.is_contiguous():
                    p.grad = p.grad.contiguous()
        return super().step(closure)

    step.hooked = True  # as FlatAdam.step: no profiling and hook wrapper from torch.optim.Optimizer

    def step_with(self, grads: Sequence[Tensor]) -> None:
        """One step with ``grads`` as the gradients of the parameters (in the order of the
        groups), as if they were their ``.grad``, which is left as it was."""
        if self._direct_step(list(grads)):
            return
        params = [p for group in self.param_groups for p in group["params"]]
        kept = [p.grad for p in params]
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        try:
            self.step()
        finally:
            for p, g in zip(params, kept):
                p.grad = g

    def _direct_step(self, grads: list[Tensor | None]) -> bool:
        """The step with ``grads`` by the fused kernel itself; False (nothing done) where
        ``Adam.step`` must take it."""
        groups = self._states or self._list_states()
        scaled = getattr(self, "grad_scale", None) is not None or getattr(self, "found_inf", None) is not None
        if groups is None or scaled or any(g is None for g in grads):
            return False
        num_params = sum(len(group["params"]) for group, _ in groups)
        if len(grads) != num_params:
            raise ValueError(f"{len(grads)} gradients for {num_params} parameters")
        for group, _ in groups:
            if not isinstance(group["lr"], float) or not all(isinstance(b, float) for b in group["betas"]):
                return False
        # the fused kernel reads every gradient as flat memory: with a transposed one it would step
        # the wrong elements, without an error (torch 2.13's Adam(fused=True) on CPU does). backward()
        # lays gradients out like their parameters; one from autograd.grad, or set by hand, may not be
        grads = [g if g.is_contiguous() else g.contiguous() for g in grads]
        start = 0
        with torch.no_grad():
            for group, state in groups:
                counts = state["step"]
                group_grads = grads[start : start + len(counts)]
                start += len(counts)
                if self._one is None:
                    self._one = torch.ones((), dtype=counts[0].dtype, device=counts[0].device)
                torch._foreach_add_(counts, [self._one] * len(counts))  # a number 1 would be cast for each count
                kernel = torch._fused_adamw_ if group["decoupled_weight_decay"] else torch._fused_adam_
                beta1, beta2 = group["betas"]
                kernel(
                    group["params"],
                    group_grads,
                    state["exp_avg"],
                    state["exp_avg_sq"],
                    state["max_exp_avg_sq"] if group["amsgrad"] else [],
                    counts,
                    amsgrad=group["amsgrad"],
                    lr=group["lr"],
                    beta1=beta1,
                    beta2=beta2,
                    weight_decay=group["weight_decay"],
                    eps=group["eps"],
                    maximize=group["maximize"],
                    grad_scale=None,
                    found_inf=None,
                )
        return True

    def _list_states(self) -> list[tuple[dict, dict[str, list[Tensor]]]] | None:
        """Per group, its state tensors by name, listed in the order of its parameters; None
        before every parameter has its state (Adam.step makes it at the first step)."""
        if not self._direct:
            return None
        groups = []
        for group in self.param_groups:
            states = [self.state.get(p) for p in group["params"]]
            if not all(states):
                return None
            names = ("step", "exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group["amsgrad"] else ())
            groups.append((group, {name: [st[name] for st in states] for name in names}))
        self._states = groups
        return groups


class FlatAdam(torch.optim.Optimizer):
    """Adam (Kingma & Ba, 2015, Algorithm 1) over all parameters as one flat tensor, with
    gradient-norm clipping folded in (``clip_and_step``).

    The arithmetic is ``clip_grad_norm_`` followed by PyTorch's multi-tensor Adam, element for
    element (the same ops in the same order, so the same bits), but each op runs once over all
    parameters instead of once per parameter tensor. For RL-sized networks on CPU the
    per-tensor dispatch costs more than the arithmetic: for PPO's 64x64 CartPole networks, clip
    plus step took 210 us here against 540 us for ``clip_grad_norm_`` plus ``Adam(foreach=True)``,
    and about 100 us once traced (``runtime.trace``). From the first step on the parameters'
    data are views into one flat tensor ``theta`` (``p.data`` is re-pointed; a parameter whose
    data is replaced later is noticed, and ``theta`` is built anew), so the step updates them in
    place, with no copy in or out.

        m <- m + (1 - beta1) (g - m)                    v <- beta2 v + (1 - beta2) g^2
        theta <- theta - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    The state has ``torch.optim.Adam``'s format (per parameter ``step``, ``exp_avg``,
    ``exp_avg_sq``; here views into the flat buffers), so checkpoints load either way. A step
    in which some parameters have no gradient skips them, as Adam does, through PyTorch's own
    multi-tensor Adam on the others. ``step`` is not wrapped with the optimizer profiling and
    step hooks of ``torch.optim.Optimizer``; that wrapper cost about 50 us a step here.

    ``capturable=True`` keeps the step count and the learning rate (``set_lr`` fills it in place)
    as tensors on the parameters' device and computes each step's scalars there, so that a
    recorded step (a CUDA graph, ``graphs.GraphedCall``) counts its steps and reads the current rate
    when replayed. Its bias corrections come from the device's ``pow``: on the CPU the same bits
    as the host's (tested), on a GPU possibly not in the last bit. A caller that knows how many
    steps come next and at what rate (PPO's update) can ``plan`` them instead: the host computes
    their scalars, as a plain FlatAdam does, and the steps read them from a device table, which
    saves a recorded step its ten scalar kernels.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        capturable: bool = False,
    ):
        # torch.optim.Adam's group keys, for its state format; FlatAdam implements only these values
        adam_defaults = {"weight_decay": 0.0, "amsgrad": False, "maximize": False, "foreach": True, "capturable": capturable,
                         "differentiable": False, "fused": None, "decoupled_weight_decay": False}
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, **adam_defaults})
        if len(self.param_groups) != 1:
            raise ValueError("FlatAdam takes one parameter group")
        self.params: list[Tensor] = self.param_groups[0]["params"]
        if len({(p.dtype, p.device) for p in self.params}) > 1:
            raise ValueError("FlatAdam needs all parameters on one device, with one dtype")
        self.capturable = capturable
        self.param_groups[0]["lr"] = self._lr(lr)
        self._flat: tuple[Tensor, Tensor, Tensor] | None = None  # m, v, theta (the parameters' storage)
        self._addresses: list[int] = []  # where each parameter's data starts in theta
        self._step: Tensor | None = None  # the step count every parameter shares, while they all step together
        self._kernels: dict[tuple, Callable[..., Tensor]] = {}  # _ClippedAdamStep, traced, by its constants
        self._grad: tuple[Tensor, list[Tensor]] | None = None  # grad_buffer(): built at its first call
        self._planned: Tensor | None = None  # plan(): [steps, 2] scalars on the device, read in turn
        self._plan_next = self._plan_end = 0  # the row the next step reads; the plan's length

    def _build(self) -> None:
        states = [self.state[p] for p in self.params]
        for p, st in zip(self.params, states):
            if not st:
                st.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        sizes = [p.numel() for p in self.params]
        flats = []
        for key in ("exp_avg", "exp_avg_sq"):
            flat = torch.cat([st[key].reshape(-1) for st in states])
            for st, part, p in zip(states, flat.split(sizes), self.params):
                st[key] = part.view_as(p)
            flats.append(flat)
        theta = torch.cat([p.detach().reshape(-1) for p in self.params])
        for p, part in zip(self.params, theta.split(sizes)):
            p.data = part.view_as(p)  # the parameters live in theta from here on
        self._flat = (flats[0], flats[1], theta)
        self._grad = None
        self._plan_next = self._plan_end = 0  # a plan counted from the old step count is void
        self._addresses = [p.data_ptr() for p in self.params]
        steps = {float(st["step"]) for st in states}
        device = self.params[0].device if self.capturable else None
        self._step = torch.tensor(steps.pop(), device=device) if len(steps) == 1 else None
        if self._step is not None:
            for st in states:
                st["step"] = self._step

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()  # one step tensor per parameter, as Adam expects, not the shared one
        state["state"] = {k: {**v, "step": v["step"].clone()} for k, v in state["state"].items()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        group = self.param_groups[0]  # the rate as this optimizer keeps it, whichever kind saved it
        group["lr"] = self._lr(group["lr"])
        self._build()

    def _lr(self, lr: float | Tensor) -> float | Tensor:
        """A learning rate as this optimizer keeps it: a float64 tensor on the parameters' device
        where ``capturable``, else a float."""
        if self.capturable:
            return torch.tensor(float(lr), dtype=torch.float64, device=self.params[0].device)
        return float(lr)

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            self._update(None)
        return loss

    step.hooked = True  # marked as wrapped already, so torch.optim.Optimizer does not add its profiling hooks

    @torch.no_grad()
    def clip_and_step(self, max_norm: float | None) -> Tensor:
        """``clip_grad_norm_(params, max_norm)`` then ``step()``; returns the gradient norm before
        clipping. ``max_norm=None`` does not clip."""
        return self._update(float("inf") if max_norm is None else max_norm)

    def _update(self, max_norm: float | None) -> Tensor | None:
        params = self.params
        adam = None if any(p.grad is None for p in params) else self.flat_step()
        if adam is None:
            if self._flat is None:
                self._build()
            return self._partial_update(max_norm)
        grads = [p.grad for p in params]
        group = self.param_groups[0]
        key = (max_norm, *group["betas"], group["eps"])
        if key not in self._kernels:  # traced on copies: tracing runs the step once
            self._kernels[key] = trace(self.kernel(max_norm), (*[x.clone() for x in adam], [g.clone() for g in grads]))
        grad_norm = self._kernels[key](*adam, grads)
        return None if max_norm is None else grad_norm

    def kernel(self, max_norm: float | None) -> _ClippedAdamStep:
        """The arithmetic of a step with this optimizer's constants, for a caller that runs it
        inside a graph of its own (on the inputs from ``flat_step``)."""
        group = self.param_groups[0]
        return _ClippedAdamStep(max_norm, *group["betas"], group["eps"])

    def flat_step(self) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """Count a step and return ``(m, v, theta, scalars)``, the inputs of ``kernel`` for it; None
        while the parameters step apart (see ``_partial_update``), and then nothing is counted."""
        self._build_if_stale()
        if self._step is None:
            return None
        group = self.param_groups[0]
        lr, (beta1, beta2) = group["lr"], group["betas"]
        self._step += 1
        if self._plan_next < self._plan_end:  # planned: the host's numbers, put on the device by plan()
            self._plan_next += 1
            return (*self._flat, self._planned[self._plan_next - 1])
        if self.capturable:  # the same formulas on the device, in float64 there
            t = self._step.double()
            scalars = torch.stack([(1 - beta2**t).sqrt(), lr / (1 - beta1**t) * -1])
            return (*self._flat, scalars.to(self._flat[0].dtype))
        # rounded to the parameters' dtype as Adam's kernels round them; a CPU tensor, which kernels on
        # any device read as a scalar argument (no copy)
        return (*self._flat, torch.tensor(self._host_scalars(float(self._step), lr), dtype=self._flat[0].dtype))

    def _build_if_stale(self) -> None:
        """``_build`` at the first step, or where a parameter's data was replaced (``.data =``,
        ``.to()``): theta anew."""
        if self._flat is None or any(p.data_ptr() != a for p, a in zip(self.params, self._addresses)):
            self._build()

    def _host_scalars(self, t: float, lr: float) -> list[float]:
        """Step ``t``'s two changing scalars ``[sqrt(1 - beta2^t), -lr / (1 - beta1^t)]``, in Python floats."""
        beta1, beta2 = self.param_groups[0]["betas"]
        return [(1 - beta2**t) ** 0.5, (lr / (1 - beta1**t)) * -1]

    def plan(self, num_steps: int, lr: float) -> None:
        """``capturable`` only: compute the scalars of the next ``num_steps`` steps at rate ``lr`` on
        the host (the bits of a plain FlatAdam's steps) into a device table, which those steps read
        row by row; a step past them computes its own. Called outside a record, before the steps
        (it reads the step count from the device). The table is made once and filled in place, so
        that a recorded step keeps reading it; a longer plan than the first makes it anew, which a
        record made before would not see, so plans of one length are what a recorded loop takes."""
        if not self.capturable:
            raise RuntimeError("plan() is for a capturable FlatAdam")
        self._build_if_stale()
        self._plan_next = self._plan_end = 0
        if self._step is None:  # the parameters step apart: no shared count to plan from
            return
        start = int(self._step.item())
        rows = [self._host_scalars(float(t), lr) for t in range(start + 1, start + num_steps + 1)]
        table = torch.tensor(rows, dtype=self._flat[0].dtype)
        if self._planned is None or len(self._planned) < num_steps:
            self._planned = torch.empty_like(table, device=self._flat[0].device)
        self._planned[:num_steps].copy_(table)
        self._plan_end = num_steps

    def grad_buffer(self) -> tuple[Tensor, list[Tensor]]:
        """A flat gradient laid out as ``theta`` and a view of it shaped as each parameter, for a
        caller that writes the gradients there itself (``out=``) and passes both to ``kernel``:
        the step then reads the flat gradient as it is, without concatenating the parameters'."""
        if self._grad is None:
            flat = torch.zeros_like(self._flat[2])
            self._grad = (flat, [part.view_as(p) for p, part in zip(self.params, flat.split([p.numel() for p in self.params]))])
        return self._grad

    def _partial_update(self, max_norm: float | None) -> Tensor | None:
        """PyTorch's clipping and multi-tensor Adam on the parameters that have a gradient. Their
        step counts part from the others', so from here on each parameter keeps its own."""
        if self._step is not None:
            for p in self.params:
                self.state[p]["step"] = self._step.clone()
            self._step = None
        grad_norm = None if max_norm is None else torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        live = [p for p in self.params if p.grad is not None]
        states = [self.state[p] for p in live]
        group = self.param_groups[0]
        torch_adam(
            live,
            [p.grad for p in live],
            [st["exp_avg"] for st in states],
            [st["exp_avg_sq"] for st in states],
            [],
            [st["step"] for st in states],
            foreach=True,
            amsgrad=False,
            beta1=group["betas"][0],
            beta2=group["betas"][1],
            lr=float(group["lr"]),
            weight_decay=0.0,
            eps=group["eps"],
            maximize=False,
        )
        return grad_norm


class _ClippedAdamStep(nn.Module):
    """The arithmetic of one ``FlatAdam`` step, as tensor operations only (for ``trace``):
    ``clip_grad_norm_`` to ``max_norm`` (None: no clipping) on the gradients, then Adam on the
    flat moments ``m``, ``v`` and parameters ``theta``. ``scalars = [sqrt(1 - beta2^t), -lr / (1 -
    beta1^t)]``; returns the norm before clipping (the norm is not computed without clipping:
    then the flat gradient). ``flat_grad``: the gradients laid out as ``theta``, where ``grads``
    are views of it (``FlatAdam.grad_buffer``); None: they are concatenated here."""

    def __init__(self, max_norm: float | None, beta1: float, beta2: float, eps: float):
        super().__init__()
        self.max_norm, self.beta1, self.beta2, self.eps = max_norm, beta1, beta2, eps

    def forward(
        self, m: Tensor, v: Tensor, theta: Tensor, scalars: Tensor, grads: list[Tensor], flat_grad: Tensor | None = None
    ) -> Tensor:
        grad = torch.cat([g.reshape(-1) for g in grads]) if flat_grad is None else flat_grad
        out = grad
        if self.max_norm is not None:  # clip_grad_norm_: the norm of the per-tensor norms
            out = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
            grad.mul_(torch.clamp(self.max_norm / (out + 1e-6), max=1.0))
        m.lerp_(grad, 1 - self.beta1)
        v.mul_(self.beta2)
        v.addcmul_(grad, grad, value=1 - self.beta2)
        root_bias_correction2, step_size = scalars.unbind()
        denom = v.sqrt()
        denom.div_(root_bias_correction2)
        denom.add_(self.eps)
        theta.addcdiv_(m * step_size, denom)  # theta + step * m / denom, rounded as addcdiv's value= rounds
        return out


def clip_and_step(optimizer: torch.optim.Optimizer, max_norm: float | None) -> Tensor:
    """Clip the gradient norm of the optimizer's parameters to ``max_norm`` (``None``: no
    clipping) and step; returns the norm before clipping. ``FlatAdam`` does both in one pass."""
    if isinstance(optimizer, FlatAdam):
        return optimizer.clip_and_step(max_norm)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf") if max_norm is None else max_norm)
    optimizer.step()
    return grad_norm


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate (in place where it is a tensor, as for a
    compiled step, so the compiled code keeps reading the same tensor)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def gradient_step(optimizer: torch.optim.Optimizer, grads: Sequence[Tensor], max_grad_norm: float | None = None) -> Tensor | None:
    """One step of ``optimizer`` with ``grads`` as the gradients of its parameters, in their order
    (computed apart, e.g. by ``torch.autograd.grad`` in a ``runtime.record``), clipped to a total
    norm of ``max_grad_norm`` first if given; returns the norm before clipping then."""
    if max_grad_norm is None and isinstance(optimizer, FusedAdam):
        optimizer.step_with(grads)  # the gradients straight to the kernel; .grad is left as it was
        return None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    norm = None if max_grad_norm is None else torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    return norm


def flat_params(params: Iterable[Tensor]) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


@torch.no_grad()
def set_flat_params(params: Iterable[Tensor], flat: Tensor) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        p.copy_(flat[offset : offset + n].view_as(p))
        offset += n


def flat_grad(output: Tensor, params: list[Tensor], *, create_graph: bool = False, retain_graph: bool | None = None) -> Tensor:
    """d output / d params as one flat vector (zeros for parameters the output does not touch)."""
    grads = torch.autograd.grad(output, params, create_graph=create_graph, retain_graph=retain_graph, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


# --- natural gradient: conjugate gradient, Fisher-vector products, line search -----------


def conjugate_gradient(Avp: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10, residual_tol: float = 1e-10) -> Tensor:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` given only ``v -> A v``.

    Hestenes & Stiefel (1952); used by TRPO as in Schulman et al., "Trust Region Policy
    Optimization" (ICML 2015), Appendix C, so that ``F^-1 g`` never needs ``F`` itself:

        r_0 = p_0 = b, x_0 = 0
        alpha_k = r_k^T r_k / p_k^T A p_k
        x_{k+1} = x_k + alpha_k p_k,   r_{k+1} = r_k - alpha_k A p_k
        p_{k+1} = r_{k+1} + (r_{k+1}^T r_{k+1} / r_k^T r_k) p_k

    Stops after ``iters`` steps or once ``r^T r < residual_tol``. In exact arithmetic it
    solves an n-dimensional system in n steps. ``b: [n]``; returns ``x: [n]``.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr < residual_tol:
            break
        Ap = Avp(p)
        alpha = rr / (p @ Ap)
        x += alpha * p
        r -= alpha * Ap
        rr_next = r @ r
        p = r + (rr_next / rr) * p
        rr = rr_next
    return x


def fisher_vector_product(kl_grad: Tensor, params: list[Tensor], v: Tensor, damping: float = 0.0) -> Tensor:
    """(F + damping * I) v, with F the Hessian of the mean KL, by double backpropagation.

    Schulman et al. (TRPO, 2015), Appendix C.1: at theta = theta_old the Hessian of

        mean_kl(theta) = mean_s KL[pi_old(.|s) || pi_theta(.|s)]

    is the Fisher information matrix F = E_s E_a[grad log pi grad log pi^T] (Kakade 2002,
    "A Natural Policy Gradient"), so F v = grad_theta (grad_theta mean_kl . v) costs two
    backward passes and never forms F. ``kl_grad`` is ``flat_grad(mean_kl, params,
    create_graph=True)`` with pi_old detached (computed once per update, reused for every v).
    ``damping`` regularizes the CG solve (Appendix C: "we use 0.1 F^-1 ... damping").
    ``v: [n]``; returns ``[n]``.
    """
    return flat_grad(kl_grad @ v, params, retain_graph=True) + damping * v


def natural_gradient_step(
    objective: Tensor, mean_kl: Tensor, params: list[Tensor], max_kl: float, cg_iters: int, damping: float
) -> tuple[Tensor, Tensor, float]:
    """The largest step along the natural gradient whose quadratic KL estimate is ``max_kl``.

    Kakade (2002) direction x = F^-1 g, solved by ``conjugate_gradient`` with damped
    Fisher-vector products of ``mean_kl`` (KL[pi_old || pi] with pi_old detached), scaled as in
    TRPO (Schulman et al. 2015, Appendix C) and NPG (Rajeswaran et al., "Towards Generalization
    and Simplicity in Continuous Control", NeurIPS 2017, Algorithm 1):

        g = grad objective,   x = (F + damping I)^-1 g
        step = sqrt(2 * max_kl / (x^T F x)) * x          so that 0.5 * step^T F step = max_kl

    ``objective`` is the scalar to *increase*. Returns ``(step, g, step_size)`` with ``step,
    g: [n]`` and ``step_size = sqrt(2 * max_kl / x^T F x)``.
    """
    g = flat_grad(objective, params, retain_graph=True)
    kl_grad = flat_grad(mean_kl, params, create_graph=True)

    def Avp(v: Tensor) -> Tensor:
        return fisher_vector_product(kl_grad, params, v, damping)

    x = conjugate_gradient(Avp, g, cg_iters)
    step_size = torch.sqrt(2.0 * max_kl / (x @ Avp(x)).clamp_min(1e-12))
    return (step_size * x).detach(), g.detach(), step_size.item()


@dataclass
class LineSearchResult:
    """What ``backtracking_line_search`` did: ``accepted`` is False when it restored theta_old."""

    accepted: bool
    backtracks: int  # step shrinks tried before acceptance (max_iter when none was accepted)
    step_fraction: float  # fraction of the full step taken (0 when none was accepted)
    kl: float  # mean KL of the accepted step (0 when none was accepted)
    improvement: float  # surrogate gain of the accepted step (0 when none was accepted)


@torch.no_grad()
def backtracking_line_search(
    params: list[Tensor],
    full_step: Tensor,
    evaluate: Callable[[], tuple[float, float]],
    surrogate_old: float,
    max_kl: float,
    shrink: float = 0.8,
    max_iter: int = 10,
) -> LineSearchResult:
    """Shrink ``full_step`` until the new policy both keeps mean KL <= ``max_kl`` and improves.

    Schulman et al. (TRPO, 2015), Appendix C: try theta = theta_old + shrink^k * full_step for
    k = 0, 1, ..., max_iter - 1 and accept the first one with

        mean_kl(theta) <= max_kl   and   surrogate(theta) - surrogate_old > 0

    which enforces the trust-region constraint exactly rather than by its quadratic model.
    When no step is accepted the parameters are restored to theta_old bit for bit.

    ``evaluate()`` returns ``(surrogate, mean_kl)`` at the parameters currently set.
    """
    old = flat_params(params)
    fraction = 1.0
    for k in range(max_iter):
        set_flat_params(params, old + fraction * full_step)
        surrogate, kl = evaluate()
        improvement = surrogate - surrogate_old
        if kl <= max_kl and improvement > 0:
            return LineSearchResult(True, k, fraction, kl, improvement)
        fraction *= shrink
    set_flat_params(params, old)
    return LineSearchResult(False, max_iter, 0.0, 0.0, 0.0)


def fit_regression(
    predict: Callable[[Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    inputs: Tensor,
    targets: Tensor,
    epochs: int,
    batch_size: int,
) -> float:
    """Minimize 0.5 * mean((predict(inputs) - targets)^2) by ``epochs`` passes of shuffled minibatches.

    The value-function fit of TRPO/NPG (Schulman et al. 2015, section 8; GAE paper section 5
    fits V by regression onto the lambda-returns between policy steps).
    ``inputs: [B, ...]``, ``targets: [B]``; returns the mean loss over the last epoch.
    """
    total, count = 0.0, 0
    for _ in range(epochs):
        total, count = 0.0, 0
        for idx in minibatch_indices(targets.shape[0], batch_size, targets.device):
            loss = 0.5 * (predict(inputs[idx]) - targets[idx]).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            count += len(idx)
    return total / count


# --- K-FAC ----------------------------------------------------------------------------------


class KFAC:
    """Kronecker-factored natural-gradient steps for every ``nn.Linear`` of a model, with a trust region.

    Martens & Grosse, "Optimizing Neural Networks with Kronecker-factored Approximate
    Curvature" (ICML 2015), section 3: for a linear layer s = W_aug a_aug (a_aug = [a, 1], the
    bias folded into W_aug = [W | b]) the Fisher block is approximated by

        F_layer ~= A (x) G,    A = E[a_aug a_aug^T],    G = E[g g^T],   g = d(-log p(y|x)) / ds

    with y sampled from the model's own predictive distribution (the true Fisher, section 5;
    Wu et al., "Scalable trust-region method for deep reinforcement learning using
    Kronecker-factored approximation" (ACKTR, NeurIPS 2017), section 3.1). A and G are running
    averages with decay min(1 - 1/k, stats_decay) at update k (section 5). The preconditioned
    gradient of a layer is

        Delta = (A (x) G + damping * I)^-1 grad   =   Q_G [(Q_G^T grad Q_A) / (l_G l_A^T + damping)] Q_A^T

    computed exactly from the eigendecompositions A = Q_A diag(l_A) Q_A^T, G = Q_G diag(l_G) Q_G^T
    (Tikhonov damping of the whole Kronecker product, so the update is the exact solve of a
    damped system, rather than the factored approximation of the damping in section 6.3).

    Trust region (ACKTR, section 3.2; Ba et al., "Distributed Second-order Optimization using
    Kronecker-Factored Approximations", ICLR 2017): the step size is

        eta = min(lr, sqrt(2 * kl_clip / (Delta^T F Delta)))

    so the quadratic KL estimate 0.5 * eta^2 * Delta^T F Delta stays <= kl_clip. Here
    Delta^T F Delta is taken as Delta^T grad = Delta^T (F + damping I) Delta, which includes the
    damping and so errs on the small side. The step then goes through SGD with momentum
    written as an exponential average, buf = momentum * buf + (1 - momentum) * eta * Delta,
    theta -= buf (as in the OpenAI baselines ACKTR code; ``momentum = 0`` takes eta * Delta).

    Parameters outside any ``nn.Linear`` (e.g. the state-independent log-std of a Gaussian
    policy) get an identity Fisher block: their step is plain SGD on the gradient, inside the
    same trust-region rescaling (their ``Delta^T grad`` term is ``|grad|^2``).

    Use: run the forward pass inside ``with kfac.track():``, call ``update_factors(fisher_loss)``
    with the batch mean of per-sample negative log-likelihoods of model-sampled targets, then
    ``loss.backward()`` and ``step()``. Each tracked layer must be applied once per forward.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.25,
        momentum: float = 0.9,
        damping: float = 0.01,
        kl_clip: float = 0.001,
        stats_decay: float = 0.95,
    ):
        self.lr = lr
        self.damping = damping
        self.kl_clip = kl_clip
        self.stats_decay = stats_decay
        self.layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        in_layers = {id(p) for layer in self.layers for p in layer.parameters()}
        self.other_params = [p for p in model.parameters() if id(p) not in in_layers]
        self.A: list[Tensor | None] = [None] * len(self.layers)
        self.G: list[Tensor | None] = [None] * len(self.layers)
        self.updates = 0
        self.sgd = torch.optim.SGD(model.parameters(), lr=1.0, momentum=momentum, dampening=momentum)
        self._tracking = False
        self._captured: dict[int, tuple[Tensor, Tensor]] = {}
        for i, layer in enumerate(self.layers):
            layer.register_forward_hook(self._capture_hook(i))

    def _capture_hook(self, index: int) -> Callable[..., None]:
        def hook(layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if self._tracking:
                self._captured[index] = (inputs[0].detach(), output)

        return hook

    @contextmanager
    def track(self) -> Iterator[None]:
        """Record the input and pre-activation output of every linear layer in this forward pass."""
        self._captured = {}
        self._tracking = True
        try:
            yield
        finally:
            self._tracking = False

    @staticmethod
    def _augmented(layer: nn.Linear, a: Tensor) -> Tensor:
        a = a.reshape(-1, layer.in_features)
        return torch.cat([a, torch.ones_like(a[:, :1])], dim=1) if layer.bias is not None else a

    @staticmethod
    def _running_average(old: Tensor | None, new: Tensor, decay: float) -> Tensor:
        return new if old is None else decay * old + (1.0 - decay) * new

    def update_factors(self, fisher_loss: Tensor) -> None:
        """Update A and G from the tracked forward pass and ``fisher_loss = mean_i -log p(y_i|x_i)``.

        The per-sample pre-activation gradient g_i is B times the gradient of the batch mean.
        """
        indices = sorted(self._captured)
        outputs = [self._captured[i][1] for i in indices]
        grads = torch.autograd.grad(fisher_loss, outputs, retain_graph=True, allow_unused=True)
        self.updates += 1
        decay = min(1.0 - 1.0 / self.updates, self.stats_decay)
        for i, grad in zip(indices, grads):
            if grad is None:
                continue
            layer = self.layers[i]
            a = self._augmented(layer, self._captured[i][0])
            batch = a.shape[0]
            g = grad.detach().reshape(-1, layer.out_features) * batch
            self.A[i] = self._running_average(self.A[i], a.T @ a / batch, decay)
            self.G[i] = self._running_average(self.G[i], g.T @ g / batch, decay)
        self._captured = {}

    def precondition(self, index: int, grad: Tensor) -> Tensor:
        """(A (x) G + damping I)^-1 applied to a layer's ``[out, in (+1)]`` gradient."""
        A, G = self.A[index], self.G[index]
        if A is None or G is None:
            return grad
        eig_a, Q_a = torch.linalg.eigh(A)
        eig_g, Q_g = torch.linalg.eigh(G)
        rotated = Q_g.T @ grad @ Q_a
        return Q_g @ (rotated / (eig_g.clamp_min(0).unsqueeze(1) * eig_a.clamp_min(0).unsqueeze(0) + self.damping)) @ Q_a.T

    @torch.no_grad()
    def step(self) -> dict[str, float]:
        """Replace every ``.grad`` by its natural gradient, rescale into the trust region, step."""
        quad = 0.0  # Delta^T grad over all parameters
        for i, layer in enumerate(self.layers):
            if layer.weight.grad is None:
                continue
            grad = layer.weight.grad
            if layer.bias is not None:
                grad = torch.cat([grad, layer.bias.grad.unsqueeze(1)], dim=1)
            natural = self.precondition(i, grad)
            quad += (natural * grad).sum().item()
            layer.weight.grad.copy_(natural[:, : layer.in_features])
            if layer.bias is not None:
                layer.bias.grad.copy_(natural[:, -1])
        for p in self.other_params:
            if p.grad is not None:
                quad += p.grad.pow(2).sum().item()
        eta = min(self.lr, math.sqrt(2.0 * self.kl_clip / max(quad, 1e-20)))
        for p in self.sgd.param_groups[0]["params"]:
            if p.grad is not None:
                p.grad.mul_(eta)
        self.sgd.step()  # lr 1: the momentum buffer averages the already scaled steps eta * Delta
        return {"step_size": eta, "quad_kl": 0.5 * eta**2 * quad}

    def state_dict(self) -> dict[str, Any]:
        return {"A": list(self.A), "G": list(self.G), "updates": self.updates, "sgd": self.sgd.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.A = list(state["A"])
        self.G = list(state["G"])
        self.updates = int(state["updates"])
        self.sgd.load_state_dict(state["sgd"])
