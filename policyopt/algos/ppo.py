"""Proximal Policy Optimization.

Schulman et al., "Proximal Policy Optimization Algorithms" (arXiv:1707.06347, 2017).
Each iteration collects ``num_steps x num_envs`` transitions with the current policy,
estimates advantages with GAE, then runs ``update_epochs`` epochs of minibatch Adam steps on

    loss = policy_loss - ent_coef * entropy + vf_coef * value_loss

where ``policy_loss`` is one of the surrogate objectives compared in Table 1 of the paper,
picked by ``objective``: ``clip`` (eq. 7), ``adaptive_kl`` and ``fixed_kl`` (eq. 8), or
``none`` (the plain importance-weighted surrogate, eq. 6).

The implementation details follow Huang et al., "The 37 Implementation Details of PPO"
(ICLR blog track 2022); each one is a config flag.
The minibatch gradient comes from the backward pass written out in ``core.backprop`` where
that covers the network and objective (faster on CPU; autograd's result up to float rounding,
bit for bit with power-of-two minibatches and no Categorical entropy bonus), from autograd
elsewhere; ``closed_form_grad`` true or false forces one of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from policyopt.agent import ActorCriticAgent, ActorCriticConfig
from policyopt.config import ConfigError, minibatch_problems
from policyopt.core.backprop import ForwardPass, clipped_surrogate_with_grad, rows, unsupported, value_loss_with_grad
from policyopt.core.buffers import RolloutBuffer, minibatch_indices, num_minibatches
from policyopt.core.diagnostics import approx_kl, explained_variance, importance_ess
from policyopt.core.losses import clipped_surrogate_loss, dist_kl, value_loss
from policyopt.core.nets import ActorCritic
from policyopt.core.optim import FlatAdam, adam, clip_and_step, set_lr
from policyopt.core.returns import rollout_gae, standardize
from policyopt.runtime import trace

OBJECTIVES = ("clip", "adaptive_kl", "fixed_kl", "none")
CLOSED_FORM_OBJECTIVES = ("clip", "none")  # the objectives core.backprop differentiates


@dataclass
class PPOConfig(ActorCriticConfig):
    num_envs: int = 8
    num_steps: int = 256  # steps per env per rollout
    learning_rate: float = 3e-4
    anneal_lr: bool = False  # linear decay to 0 over the learn() call
    gamma: float = 0.99
    gae_lambda: float = 0.95
    batch_size: int = 64  # minibatch size (stable-baselines3's meaning)
    update_epochs: int = 10
    norm_adv: bool = True  # normalize advantages per minibatch
    objective: str = field(default="clip", metadata={"choices": OBJECTIVES})
    clip_coef: float = 0.2
    anneal_clip: bool = False  # linear decay of clip_coef, as in the SB3 zoo's lin_0.2
    clip_vloss: bool = False  # clip the value update around the old value, as in the PPO2 code
    kl_coef: float = 1.0  # beta, initial value for adaptive_kl
    kl_target: float = 0.01  # d_targ of adaptive_kl
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float | None = 0.5
    target_kl: float | None = None  # stop the update once a minibatch's KL exceeds 1.5 * target_kl
    adam_eps: float = 1e-5
    compile: bool = False  # torch.compile the minibatch loss and the Adam step (seconds of compiling first)
    # with env_backend=torch: record the whole iteration (rollout and update) once and replay it
    # (loops.GraphedOnPolicyRunner): a CUDA graph on a GPU; on the CPU an FX graph with the same
    # rules, slower than running the iteration itself (it is there to test the GPU's record)
    cuda_graph: bool = False
    # the minibatch gradient from core.backprop's written-out backward pass instead of autograd:
    # faster on CPU, autograd's result up to float rounding (MLP actor-critics with separate networks, a
    # Categorical or Gaussian policy, objective clip or none). None: wherever it applies.
    closed_form_grad: bool | None = None
    shared_network: bool = False
    normalize_reward: bool = False  # divide rewards by the running std of the discounted return

    def check(self) -> list[str]:
        problems = minibatch_problems(self)
        if self.closed_form_grad and self.objective not in CLOSED_FORM_OBJECTIVES:
            problems.append(f"closed_form_grad supports objective clip or none, not {self.objective!r}")
        if self.closed_form_grad and self.compile:
            problems.append("closed_form_grad and compile exclude each other: pick one")
        if self.cuda_graph:
            problems += graph_problems(self)
        return problems


def graph_problems(cfg: PPOConfig) -> list[str]:
    """What keeps an iteration from being recorded once and replayed (``cuda_graph``)."""
    problems = []
    if cfg.env_backend != "torch":
        problems.append(f"cuda_graph records device envs' rollouts: it needs env_backend=torch, not {cfg.env_backend!r}")
    if cfg.target_kl is not None:
        problems.append("cuda_graph cannot stop an update early (target_kl): a replay runs every minibatch")
    if cfg.compile or cfg.workers:
        problems.append("cuda_graph excludes compile and workers")
    return problems


def kl_penalty_loss(ratio: Tensor, adv: Tensor, kl: Tensor, kl_coef: float) -> Tensor:
    """PPO paper, eq. 8, negated:  L^KLPEN = E[ ratio * adv - kl_coef * KL[pi_old(.|s), pi(.|s)] ].

    With ``kl_coef = 0`` this is the unclipped surrogate of eq. 6 (the "no clipping or
    penalty" row of Table 1). ``ratio, adv, kl``: ``[B]``.
    """
    return -(ratio * adv).mean() + kl_coef * kl.mean()


def adapt_kl_coef(kl_coef: float, kl: float, kl_target: float) -> float:
    """PPO paper, section 4: halve beta when d < d_targ / 1.5, double it when d > d_targ * 1.5."""
    if kl < kl_target / 1.5:
        return kl_coef / 2.0
    if kl > kl_target * 1.5:
        return kl_coef * 2.0
    return kl_coef


class ClosedFormGrad(torch.nn.Module):
    """PPO's minibatch loss terms and their gradient in every parameter of ``policy``, from
    ``core.backprop``: ``forward`` returns ``[policy loss, value loss, entropy(, approx KL)]``
    followed by the gradients in ``policy.parameters()`` order (written into ``grad_out``, a
    tensor per parameter, where given). A module, so that ``trace`` reads the parameters as
    live attributes; ``clip_range = [1 - c, 1 + c, c]`` is an input, so that an annealed clip
    range needs no new trace."""

    def __init__(self, policy: ActorCritic, cfg: PPOConfig):
        super().__init__()
        self.policy, self.cfg = policy, cfg

    def forward(
        self,
        obs: Tensor,
        action: Tensor,
        logp_old: Tensor,
        adv: Tensor,
        v_target: Tensor,
        value_old: Tensor,
        clip_range: Tensor,
        *grad_out: Tensor,
    ) -> tuple[Tensor, ...]:
        cfg = self.cfg
        fp = ForwardPass(self.policy, obs, action)
        log_ratio = fp.logp - logp_old
        ratio = log_ratio.exp()
        low, high, clip = clip_range.unbind()  # one op in a trace, not three
        pg_loss, dlogp = clipped_surrogate_with_grad(ratio, adv, low, high)
        v_loss, dvalue = value_loss_with_grad(fp.value, v_target, value_old, clip if cfg.clip_vloss else None)
        out = dict(zip(self.policy.parameters(), grad_out, strict=True)) if grad_out else None
        grads = fp.grads(dlogp, -cfg.ent_coef / rows(ratio), cfg.vf_coef * dvalue, out)
        terms = [pg_loss, v_loss, fp.entropy.mean()]
        if cfg.target_kl is not None:
            terms.append(approx_kl(ratio, log_ratio))
        return torch.stack(terms), *(grads[p] for p in self.policy.parameters())


def _step_terms(terms: Tensor, grad_norm: Tensor) -> Tensor:
    """``ClosedFormGrad``'s ``[policy loss, value loss, entropy(, approx KL)]`` with the gradient norm
    put in fourth: ``[policy loss, value loss, entropy, grad norm(, approx KL)]``."""
    return torch.cat([terms[:3], grad_norm.reshape(1), terms[3:]])


class ClosedFormStep(torch.nn.Module):
    """A minibatch step without autograd: ``ClosedFormGrad``'s gradient, then the clipped Adam
    step of ``FlatAdam.kernel`` on it, in one graph for ``trace``. Takes ``ClosedFormGrad``'s
    inputs, then the kernel's (``FlatAdam.flat_step``), then the flat gradient and its view per
    parameter (``FlatAdam.grad_buffer``), which the gradient kernels write; returns
    ``[policy loss, value loss, entropy, grad norm(, approx KL)]``.

    With ``gather``, the six per-sample inputs are the whole batch's and one more input follows
    them, the minibatch's indices: the step selects its rows (and, with ``norm_adv``,
    normalizes their advantages) as ``PPO._minibatch`` does, inside the graph."""

    def __init__(self, grad: ClosedFormGrad, adam: torch.nn.Module, gather: bool = False, norm_adv: bool = False):
        super().__init__()
        self.grad, self.adam, self.gather, self.norm_adv = grad, adam, gather, norm_adv
        self.num_params = len(list(grad.policy.parameters()))

    def forward(self, *inputs: Any) -> Tensor:
        *grad_inputs, m, v, theta, scalars, flat_grad = inputs[: -self.num_params]
        grad_out = inputs[-self.num_params :]
        if self.gather:
            *fields, clip_range, idx = grad_inputs
            fields = [x.index_select(0, idx) for x in fields]
            if self.norm_adv:
                fields[3] = standardize(fields[3])
            grad_inputs = [*fields, clip_range]
        terms, *grads = self.grad(*grad_inputs, *grad_out)
        return _step_terms(terms, self.adam(m, v, theta, scalars, grads, flat_grad))


class PPO(ActorCriticAgent):
    """PPO for Discrete and Box action spaces (Gaussian, Beta or gSDE policies)."""

    name = "ppo"
    Config = PPOConfig
    loop = "on_policy"

    def build(self) -> None:
        cfg = self.config
        self.build_policy()
        self.params = list(self.policy.parameters())
        if cfg.compile:  # the learning rate as a tensor, so that annealing it does not recompile
            lr = torch.tensor(cfg.learning_rate, device=self.device)
            optimizer = torch.optim.Adam(self.params, lr=lr, eps=cfg.adam_eps, foreach=True, capturable=True)
        else:
            optimizer = adam(self.params, lr=cfg.learning_rate, eps=cfg.adam_eps, fused=False, capturable=cfg.cuda_graph)
        self.optimizers = {"policy": optimizer}
        self.kl_coef = cfg.kl_coef if cfg.objective != "none" else 0.0
        # (clip_coef, kl_coef) of the update: floats, or tensors that prepare_update fills in place
        # (so that neither a compiled loss nor a recorded iteration holds them as constants)
        self._coefs: tuple = (cfg.clip_coef, self.kl_coef)
        if cfg.compile or cfg.cuda_graph:
            self._coefs = tuple(torch.tensor(c, device=self.device) for c in self._coefs)
        if self._use_closed_form_grad():
            self.minibatch_step = self._closed_form_step
            self._traced_steps: dict[tuple, Callable[..., Tensor]] = {}  # ClosedFormStep, traced, by its constants
            self._clip_range: tuple[tuple[float, str] | None, Tensor | None] = (None, None)
        else:
            self.minibatch_step = self._autograd_step
            self.minibatch_loss = torch.compile(self._minibatch_loss) if cfg.compile else self._minibatch_loss
        self.apply_gradients = torch.compile(self._apply_gradients) if cfg.compile else self._apply_gradients

    def _use_closed_form_grad(self) -> bool:
        """``closed_form_grad``: as set, or (None) wherever ``core.backprop`` covers the policy,
        the objective and the update (not with ``compile=true``)."""
        cfg = self.config
        reason = unsupported(self.policy)
        if cfg.closed_form_grad is None:
            return reason is None and cfg.objective in CLOSED_FORM_OBJECTIVES and not cfg.compile
        if cfg.closed_form_grad and reason:
            raise ConfigError(f"closed_form_grad: {reason}")
        return cfg.closed_form_grad

    def extra_state(self) -> dict:
        return {"kl_coef": self.kl_coef}

    def load_extra_state(self, state: dict) -> None:
        self.kl_coef = float(state["kl_coef"])

    def _schedule(self, start: int) -> tuple[float, float]:
        """Learning rate and clip range of the update of the rollout that began at step ``start``,
        annealed by the progress there."""
        cfg = self.config
        first, last = self.schedule
        done = max(0, start - first) / max(1, last - first)
        frac = 1.0 - min(1.0, done)
        lr = cfg.learning_rate * (frac if cfg.anneal_lr else 1.0)
        clip = cfg.clip_coef * (frac if cfg.anneal_clip else 1.0)
        return lr, clip

    def update(self, buf: RolloutBuffer) -> dict[str, float]:
        lr, clip = self.prepare_update(self.global_step - buf.num_steps * buf.num_envs)
        return self.finish_update(self.update_tensors(buf), lr, clip)

    def prepare_update(self, start: int) -> tuple[float, float]:
        """Put the learning rate and clip range of the update of the rollout that began at step
        ``start`` where the update reads them (into tensors in place, where they are tensors);
        returns them. The host's part before ``update_tensors``."""
        lr, clip = self._schedule(start)
        optimizer, cfg = self.optimizers["policy"], self.config
        set_lr(optimizer, lr)
        if isinstance(optimizer, FlatAdam) and optimizer.capturable:  # the update's Adam scalars, from the host
            optimizer.plan(cfg.update_epochs * num_minibatches(cfg.num_steps * cfg.num_envs, cfg.batch_size), lr)
        if isinstance(self._coefs[0], Tensor):
            for tensor, value in zip(self._coefs, (clip, self.kl_coef)):
                tensor.fill_(value)
        else:
            self._coefs = (clip, self.kl_coef)
        if self.minibatch_step == self._closed_form_step:
            self._set_clip_range(clip)
        return lr, clip

    def update_tensors(self, buf: RolloutBuffer) -> dict[str, Tensor | int]:
        """The update on the rollout in ``buf`` (GAE, then ``update_epochs`` epochs of minibatch
        steps), with its metrics as tensors on the device: without ``target_kl`` it never waits
        on the device, so that ``loops.GraphedOnPolicyRunner`` can record it."""
        cfg = self.config
        data = buf.flat("obs", "action", "logp", "value")
        data["adv"], data["v_target"] = rollout_gae(buf, cfg.gamma, cfg.gae_lambda)
        n = data["adv"].shape[0]
        uses_kl = cfg.objective in ("adaptive_kl", "fixed_kl")
        old_params = {k: v.detach().clone() for k, v in self.policy.named_parameters()} if uses_kl else None

        sums = torch.zeros(4, device=self.device)  # policy loss, value loss, entropy, grad norm
        steps = 0
        epochs_run = 0
        stop = False
        whole = n <= cfg.batch_size  # each epoch's one minibatch is the whole batch
        if whole:  # used as it is: shuffling its rows would change only float rounding
            data["adv"] = self._normalized(data["adv"])
        for _ in range(cfg.update_epochs):
            epochs_run += 1
            minibatches = [None] if whole else minibatch_indices(n, cfg.batch_size, self.device, cfg.cuda_graph)
            for idx in minibatches:
                terms, approx_kl = self.minibatch_step(data, idx, self._coefs, old_params)
                sums += terms
                steps += 1
                if approx_kl is not None and approx_kl.item() > 1.5 * cfg.target_kl:
                    stop = True  # SB3's early stop, per minibatch
                    break
            if stop:
                break
        means = sums / steps
        out = {"loss/policy": means[0], "loss/value": means[1], "loss/entropy": means[2], "diag/grad_norm": means[3]}
        out["diag/explained_var"] = explained_variance(data["value"], data["v_target"])
        out.update(self._ratio_diagnostics(data, self._coefs[0], old_params))
        out["diag/epochs"] = epochs_run
        return out

    def finish_update(self, out: dict[str, Tensor | int], lr: float, clip: float) -> dict[str, float]:
        """``update_tensors``'s metrics as numbers (one read from the device) with the learning
        rate and clip range; adapts ``kl_coef`` for ``adaptive_kl``. The host's part after it."""
        cfg = self.config
        tensors = {k: v for k, v in out.items() if isinstance(v, Tensor)}
        metrics = dict(zip(tensors, torch.stack(list(tensors.values())).tolist()))
        metrics.update({k: v for k, v in out.items() if not isinstance(v, Tensor)})
        metrics["diag/lr"], metrics["diag/clip_coef"] = lr, clip
        if cfg.objective == "adaptive_kl":
            self.kl_coef = adapt_kl_coef(self.kl_coef, metrics["diag/kl"], cfg.kl_target)
        if "diag/kl" in metrics:  # a KL objective: the update measured KL[pi_old, pi]
            metrics["diag/kl_coef"] = self.kl_coef
        return metrics

    def _autograd_step(
        self, data: dict[str, Tensor], idx: Tensor | None, coefs: tuple, old_params: dict[str, Tensor] | None
    ) -> tuple[Tensor, Tensor | None]:
        """One clipped Adam step on the loss of minibatch ``idx`` of ``data`` (None: all of it), by
        autograd: ``([policy loss, value loss, entropy, grad norm], approx KL or None)``."""
        mb = self._minibatch(data, idx)
        loss, terms, approx_kl = self.minibatch_loss(mb, coefs, old_params)
        for p in self.params:  # optimizer.zero_grad(set_to_none=True), minus its profiler hook
            p.grad = None
        loss.backward()
        return torch.cat([terms, self.apply_gradients().reshape(1)]), approx_kl

    def _apply_gradients(self) -> Tensor:
        """Clip the gradient norm to ``max_grad_norm`` and take the Adam step; returns the norm
        before clipping. Compiled with ``compile=true``."""
        return clip_and_step(self.optimizers["policy"], self.config.max_grad_norm).detach()

    def _minibatch_loss(
        self, mb: dict[str, Tensor], coefs: tuple, old_params: dict[str, Tensor] | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(loss, [policy loss, value loss, entropy], approx KL or None)`` of one minibatch.

        ``coefs = (clip_coef, kl_coef)`` of this update. The approximate KL is computed only for
        ``target_kl``. With ``compile=true`` this function runs through ``torch.compile``.
        """
        cfg = self.config
        clip, kl_coef = coefs
        dist, value = self.policy.dist_and_value(mb["obs"])
        log_ratio = dist.log_prob(mb["action"]) - mb["logp"]
        ratio = log_ratio.exp()
        adv = mb["adv"]
        if cfg.objective == "clip":
            pg_loss = clipped_surrogate_loss(ratio, adv, clip)
        else:
            kl = dist_kl(self.policy, old_params, mb["obs"], dist) if old_params is not None else torch.zeros_like(ratio)
            pg_loss = kl_penalty_loss(ratio, adv, kl, kl_coef)
        v_loss = value_loss(value, mb["v_target"], mb["value"], clip if cfg.clip_vloss else None)
        entropy = dist.entropy().mean()
        loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
        return loss, torch.stack([pg_loss.detach(), v_loss.detach(), entropy.detach()]), self._approx_kl(ratio, log_ratio)

    @torch.no_grad()
    def _closed_form_step(
        self, data: dict[str, Tensor], idx: Tensor | None, coefs: tuple, old_params: None
    ) -> tuple[Tensor, Tensor | None]:
        """``_autograd_step`` with the gradient written out by ``core.backprop``: ``ClosedFormStep``,
        traced once per minibatch size and set of loss coefficients (the clip range is an input:
        ``_set_clip_range``)."""
        cfg, optimizer = self.config, self.optimizers["policy"]
        adam = optimizer.flat_step()
        if adam is None:  # parameters that stepped apart (a checkpoint's optimizer state): Adam's own step
            mb = self._minibatch(data, idx)
            terms, *grads = ClosedFormGrad(self.policy, cfg)(*self._grad_inputs(mb))
            for p, g in zip(self.params, grads):
                p.grad = g
            out = _step_terms(terms, self.apply_gradients())
        else:
            # the trace holds 1/B and the config's coefficients as constants: one per minibatch size and
            # coefficients (a callback may change ent_coef, say, between updates)
            gather = idx is not None
            inputs = (*self._grad_inputs(data), *([idx] if gather else []))
            flat_grad, grad_views = optimizer.grad_buffer()
            buffers = (*adam, flat_grad, *grad_views)  # what the step writes
            size = idx.shape[0] if gather else data["obs"].shape[0]
            coefficients = (cfg.norm_adv, cfg.ent_coef, cfg.vf_coef, cfg.max_grad_norm, cfg.clip_vloss, cfg.target_kl is None)
            key = (size, data["obs"].shape[0], gather, *coefficients)
            if key not in self._traced_steps:  # traced on copies of what the step changes: tracing runs it once
                max_norm = math.inf if cfg.max_grad_norm is None else cfg.max_grad_norm
                norm_adv = cfg.norm_adv and size > 1
                step = ClosedFormStep(ClosedFormGrad(self.policy, cfg), optimizer.kernel(max_norm), gather, norm_adv)
                self._traced_steps[key] = trace(step, (*inputs, *[x.clone() for x in buffers]))
            with torch.inference_mode():  # no autograd to pass through: ~7% of the update here (its output is read only)
                out = self._traced_steps[key](*inputs, *buffers)
        return out[:4], out[4] if cfg.target_kl is not None else None

    def _set_clip_range(self, clip: float) -> None:
        """``ClosedFormGrad``'s ``clip_range`` input ``[1 - c, 1 + c, c]`` for clip coefficient ``c``
        (rounded from floats as the loss rounds them), written into the same tensor each time."""
        objective = self.config.objective
        if self._clip_range[0] == (clip, objective):
            return
        outer = clip if objective == "clip" else math.inf
        values = torch.tensor([1.0 - outer, 1.0 + outer, clip])
        tensor = values.to(self.device) if self._clip_range[1] is None else self._clip_range[1].copy_(values)
        self._clip_range = ((clip, objective), tensor)

    def _grad_inputs(self, mb: dict[str, Tensor]) -> tuple[Tensor, ...]:
        """``ClosedFormGrad``'s inputs from a minibatch (or the whole batch)."""
        return mb["obs"], mb["action"], mb["logp"], mb["adv"], mb["v_target"], mb["value"], self._clip_range[1]

    def _minibatch(self, data: dict[str, Tensor], idx: Tensor | None) -> dict[str, Tensor]:
        """The rows ``idx`` of ``data``, with their advantages normalized; ``data`` itself for
        ``idx=None`` (the whole batch, normalized once per update)."""
        if idx is None:
            return data
        mb = {k: v.index_select(0, idx) for k, v in data.items()}
        mb["adv"] = self._normalized(mb["adv"])
        return mb

    def _normalized(self, adv: Tensor) -> Tensor:
        """A minibatch's advantages, normalized to mean 0 and std 1 with ``norm_adv``."""
        if self.config.norm_adv and adv.shape[0] > 1:
            adv = standardize(adv)
        return adv

    def _approx_kl(self, ratio: Tensor, log_ratio: Tensor) -> Tensor | None:
        """The k3 estimate of KL[pi_old, pi] for ``target_kl``'s early stop; None without it."""
        if self.config.target_kl is None:
            return None
        return approx_kl(ratio, log_ratio).detach()

    @torch.no_grad()
    def _ratio_diagnostics(self, data: dict[str, Tensor], clip: float | Tensor, old_params: dict | None) -> dict[str, Tensor]:
        """Statistics of pi / pi_old over the whole batch after the update, as 0-dim tensors."""
        dist = self.policy.dist(data["obs"])
        log_ratio = dist.log_prob(data["action"]) - data["logp"]
        ratio = log_ratio.exp()
        out = {
            "diag/approx_kl": approx_kl(ratio, log_ratio),
            "diag/clip_frac": ((ratio - 1.0).abs() > clip).float().mean(),
            "diag/ess": importance_ess(ratio),
            "diag/entropy": dist.entropy().mean(),
        }
        if old_params is not None:
            out["diag/kl"] = dist_kl(self.policy, old_params, data["obs"], dist).mean()
        return out
