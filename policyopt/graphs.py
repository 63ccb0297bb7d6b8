"""A training iteration recorded once and replayed: a CUDA graph on a GPU.

With ``env_backend=torch`` the envs, the policy and the update are all small tensor operations
on the device: a PPO iteration on 2048 CartPoles is a few thousand kernels of a few
microseconds each, and launching each one from Python (the interpreter, then PyTorch's
dispatch) takes longer than running it. A CUDA graph records the kernels of one call once and
launches them all again with one call (``torch.cuda.CUDAGraph``), with no Python in between.

A record keeps what Python computed while recording: every Python number (a learning rate, a
step count) is a constant of the replay, and a value read back from the device (``.item()``,
``bool(t)``, a boolean mask's row count) cannot be recorded at all. What changes between calls
must live in tensors that the caller updates in place before each call. A record also reads
and writes the same memory on every replay: the tensors an iteration starts from must be the
tensors it ends in, so state that the code keeps by replacing tensors (``env.state = new``)
is named in ``carry``, and the record copies the new tensors into the old ones at its end.

Off the GPU the same rules hold for a record made with ``make_fx`` (``torch.fx``): every ATen
operation of one call, replayed from a graph. That makes the CPU a test bench for the GPU's
record (``tests/test_graphs.py``: replays equal eager iterations bit for bit), and the record
refuses the operations a CUDA graph cannot hold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

# ATen operations that read a value back to the host or build a tensor from Python values: a
# CUDA graph cannot record the first kind and would keep the second as a constant
UNRECORDABLE = ("aten._local_scalar_dense", "aten.nonzero", "aten.masked_select", "aten.lift_fresh")


def recording() -> bool:
    """Whether a ``make_fx`` record (or another dispatch mode) is watching the tensor operations
    now: code with a NumPy shortcut takes the tensor path then, so that the record holds it."""
    return is_in_torch_dispatch_mode()


class GraphedCall:
    """``body()`` run eagerly for the first ``warmup`` calls, recorded at the next call, and
    replayed at every call after that; each call returns what ``body`` returns (a tuple, list
    or dict of tensors, nested or not), which the host reads before the next call.

    Python values among the outputs (not tensors) are those of the recording call.

    ``carry``: ``(object, attribute)`` pairs naming the tensors that ``body`` replaces with new
    ones (the state it starts from and leaves for the next call). ``generators``: the
    ``torch.Generator`` objects that ``body`` draws from besides the device's default one (a
    CUDA graph must register them to replay their draws).

    Warm-up runs first, off the recording: lazily built state (optimizer moments, cached
    constants, a decision made on the first rollout) must exist before the record, and on a GPU
    PyTorch recommends warming up on a side stream. The recording call also runs the
    iteration: a CUDA graph is recorded without running, then replayed once; ``make_fx`` runs
    it while recording.
    """

    def __init__(
        self,
        body: Callable[[], Any],
        device: torch.device,
        carry: Sequence[tuple[object, str]] = (),
        generators: Sequence[torch.Generator] = (),
        warmup: int = 2,
    ):
        self.body, self.device = body, torch.device(device)
        self.carry, self.generators = list(carry), list(generators)
        self.warmup = warmup
        self._replay: Callable[[], Any] | None = None

    @property
    def recorded(self) -> bool:
        return self._replay is not None

    def __call__(self) -> Any:
        if self._replay is not None:
            return self._replay()
        if self.warmup > 0:
            self.warmup -= 1
            return self._warm_up()
        return self._record_cuda() if self.device.type == "cuda" else self._record_fx()

    def _warm_up(self) -> Any:
        if self.device.type != "cuda":
            return self.body()
        stream, main = torch.cuda.Stream(self.device), torch.cuda.current_stream(self.device)
        stream.wait_stream(main)
        with torch.cuda.stream(stream):
            out = self.body()
        main.wait_stream(stream)
        return out

    def _carried_body(self) -> Any:
        """``body()``, then the carried tensors copied into the ones it started from, and the
        attributes pointed back at those: the next call starts from the same memory."""
        start = [getattr(obj, name) for obj, name in self.carry]
        out = self.body()
        for (obj, name), tensor in zip(self.carry, start):
            tensor.copy_(getattr(obj, name))
            setattr(obj, name, tensor)
        return out

    def _record_cuda(self) -> Any:
        graph = torch.cuda.CUDAGraph()
        for generator in self.generators:
            graph.register_generator_state(generator)
        try:
            with torch.cuda.graph(graph):
                out = self._carried_body()
        except RuntimeError as error:
            raise RuntimeError(f"recording the iteration as a CUDA graph failed ({error}); "
                               "with cuda_graph=false it runs eagerly") from error
        graph.replay()

        def replay() -> Any:
            graph.replay()
            return out

        self._replay = replay
        return out

    def _record_fx(self) -> Any:
        from torch.fx.experimental.proxy_tensor import make_fx

        spec, first = None, None

        def flat() -> list[Tensor]:
            nonlocal spec, first
            first, spec = pytree.tree_flatten(self._carried_body())
            return [x for x in first if isinstance(x, Tensor)]

        graph = make_fx(flat)()
        refused = sorted({str(n.target) for n in graph.graph.nodes if str(n.target).startswith(UNRECORDABLE)})
        if refused:
            raise RuntimeError(f"an iteration cannot be recorded with {', '.join(refused)} in it (see policyopt/graphs.py)")

        def replay() -> Any:
            with torch.no_grad():  # the record updates parameters in place
                tensors = iter(graph())
            return pytree.tree_unflatten([next(tensors) if isinstance(x, Tensor) else x for x in first], spec)

        self._replay = replay
        return pytree.tree_unflatten(first, spec)
