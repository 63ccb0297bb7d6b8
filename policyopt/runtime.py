"""Speed on CPU: settings applied by ``learn`` (``loops.train``), ``at_most_threads``, ``trace`` and ``record``.

``flush_denormals``: numbers below 2^-126 in float32 (denormals) take the CPU's slow path,
tens of times slower per operation. They arise in the Adam moments of weights whose gradient
has become zero (ReLU units that stopped firing): ``m`` shrinks by beta1 each step and spends
some 150 steps among the denormals before it reaches zero. In SAC on Pendulum about 40k of
the 131k first moments of the critic's hidden layer were denormal after 2000 updates; the
fused Adam step over the critic took 560 us instead of 70 us, and a training step 10.1 ms
instead of 8.3 ms. Flushed to zero, such values change nothing a float32 parameter can hold
(an update of ~1e-33 to a weight of ~1e-2 rounds away): a 3000-step SAC run gave the same
bits either way. TensorFlow and XLA flush denormals on CPU by default for this reason. The
mode covers all arithmetic on those threads, NumPy's and an env's C code included (float64
flushes below 2^-1022).

``tune_malloc``: PyTorch takes the memory of CPU tensors from ``malloc``. With glibc's
defaults a block freed at the top of the heap goes back to the kernel once more than the trim
threshold is free there (1 MiB after glibc's dynamic adjustment for 512 KiB blocks), and
blocks above the mmap threshold (128 KiB at first) are mapped and unmapped on every
allocation. Either way the next allocation of that memory page-faults fresh, zeroed pages back
in. An update of the off-policy algorithms allocates and frees dozens of ``[2, 256, 256]``
activations (512 KiB each): SAC's update on Pendulum took 60 to 80 page faults here, about
12% of its time. With the mmap threshold at 32 MiB and the trim threshold at 64 MiB, freed
blocks stay in the heap for the next update: no page faults, and at most 64 MiB of freed
memory kept by the process.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import Tensor, nn

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers, from glibc's malloc.h
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 64 << 20
GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


@functools.cache
def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds (see the module docstring), once per process.

    Does nothing where the C library is not glibc, or where the user chose the thresholds
    with glibc's ``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` environment
    variables. Returns whether it changed them.
    """
    if not sys.platform.startswith("linux") or any(name in os.environ for name in GLIBC_ENV):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # another C library (musl has no libc.so.6)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Flush denormal floats to zero while inside (see the module docstring), on this thread and
    on torch's intra-op threads, then return to the mode this thread had on entry. Each thread
    keeps its own mode (threads started later inherit their creator's)."""
    was_on = denormals_flushed()
    _set_flush_denormal(True)
    try:
        yield
    finally:
        _set_flush_denormal(was_on)


def _set_flush_denormal(on: bool) -> None:
    torch.set_flush_denormal(on)
    threads, openmp = torch.get_num_threads(), _openmp()
    if threads > 1 and openmp is not None:
        # a team of torch's size runs the setter on each of its threads: OpenMP keeps those
        # threads and runs torch's parallel regions on them
        openmp.GOMP_parallel(_FLUSH_SETTERS[on], None, threads, 0)


_TEAM_BODY = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_FLUSH_SETTERS = {on: _TEAM_BODY(lambda _, on=on: torch.set_flush_denormal(on)) for on in (False, True)}


@functools.cache
def _openmp() -> ctypes.CDLL | None:
    """The OpenMP runtime of torch's intra-op threads (the libgomp its Linux wheels ship), or None
    where that cannot be told: another parallel backend, no ``/proc``, no runtime in torch's folder."""
    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "omp" in line.rsplit("/", 1)[-1]}
    except OSError:
        return None
    ours = [path for path in paths if path.startswith(os.path.dirname(torch.__file__))]
    if len(ours) != 1:
        return None
    openmp = ctypes.CDLL(ours[0])
    if not hasattr(openmp, "GOMP_parallel"):
        return None
    openmp.GOMP_parallel.argtypes = [_TEAM_BODY, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    openmp.GOMP_parallel.restype = None
    return openmp


@contextlib.contextmanager
def at_most_threads(n: int) -> Iterator[None]:
    """At most ``n`` torch intra-op threads while inside, then as many as before."""
    before = torch.get_num_threads()
    torch.set_num_threads(min(n, before))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def denormals_flushed() -> bool:
    """Whether float arithmetic on this thread flushes denormal results to zero."""
    return (torch.tensor(2.0**-100) * 2.0**-30).item() == 0.0


def trace(module: nn.Module, inputs: tuple[Any, ...]) -> Callable[..., Any]:
    """``module`` recorded by ``torch.jit.trace`` at ``inputs``, to run without Python between its ops.

    The step of ``core.backprop`` is some 80 small tensor ops; run from Python each costs a few
    microseconds of interpreter and dispatch besides its arithmetic, and the recorded graph
    runs the same kernels on the same tensors (the same bits) about a third faster. The
    module's parameters are read live (in-place optimizer steps are seen). The record holds for
    inputs of the same shapes, dtypes and device, and takes every Python number it met as a
    constant: pass what changes between calls as tensors. PyTorch marks ``torch.jit.trace`` as
    deprecated in favour of ``torch.compile`` (which on CPU compiles C++ for seconds first);
    where tracing is unavailable this returns ``module``, run as it is.

    Tracing runs ``module`` once on ``inputs``: its random draws are undone here (the random
    number generator is restored), in-place changes to the inputs are not (trace on copies).
    CPU only: on a GPU, TorchScript fuses elementwise operations into kernels of its own, which
    round differently (and are untested here), so ``module`` is returned as it is.
    """
    tensors = [t for x in inputs for t in (x if isinstance(x, list | tuple) else [x]) if isinstance(t, torch.Tensor)]
    if any(t.device.type != "cpu" for t in tensors):
        return module
    try:
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore")  # the deprecation notice, and TracerWarnings about the constants
            traced = torch.jit.trace(_Flat(module), inputs, check_trace=False)
    except (AttributeError, RuntimeError):
        return module
    _store_numbers_cast(traced.forward.graph)
    return _Unoptimized(traced.forward) if hasattr(torch._C, "_set_graph_executor_optimize") else traced


# the arithmetic ops whose dtype promotion casts a number operand to the result's dtype first
_NUMBER_OPS = frozenset(f"aten::{op}{inplace}" for op in ("add", "sub", "mul", "div") for inplace in ("", "_")) | {"aten::rsub"}
_NUMBER_DTYPES = {"Float": torch.float32, "Double": torch.float64}  # the results whose numbers are stored cast


def _store_numbers_cast(graph: torch._C.Graph) -> None:
    """Rewrite a traced graph so that the Python numbers it took as constants are stored in the
    dtype they are computed in.

    The tracer keeps a number ``c`` of ``x * c`` as a 0-dim float64 (or int64) tensor, which
    the op casts to ``x``'s float32 at every call (an ``aten::to`` with its allocation and
    copy, some 3 us here): 11 of the ~90 ops of PPO's minibatch step on CartPole. A number
    passed to an op's ``Scalar`` form (``aten.div.Scalar(x, 256)``, ``rsub``: the backward ops of
    a ``runtime.record``) is kept as a plain number, which the op wraps into a tensor and casts
    the same way: 9 per SAC training step on Pendulum. The same number cast once, when the graph
    is built, as a tensor in the result's dtype, gives the op (its ``Tensor`` form there) the
    same operands, so the same bits. Only for the ops of ``_NUMBER_OPS`` with a float32 or
    float64 result (not for reduced-precision results, whose ops compute in float32 from the
    number as it is), and for a plain number only as the second operand (not ``alpha``)."""
    for user in list(graph.nodes()):
        if user.kind() not in _NUMBER_OPS or user.outputsSize() != 1 or user.output().type().kind() != "TensorType":
            continue
        dtype = _NUMBER_DTYPES.get(user.output().type().scalarType())
        if dtype is None:
            continue
        for offset, operand in enumerate(list(user.inputs())):
            if operand.node().kind() != "prim::Constant":
                continue
            kind = operand.type().kind()
            if kind == "TensorType":
                value = operand.node().t("value")
                if value.dim() != 0 or value.dtype not in (torch.float64, torch.int64) or value.dtype == dtype:
                    continue
            elif kind in ("IntType", "FloatType") and offset == 1:
                value = torch.tensor(operand.toIValue(), dtype=torch.float64 if kind == "FloatType" else torch.int64)
            else:
                continue
            cast = graph.create("prim::Constant")
            cast.t_("value", value.to(dtype))
            cast.output().inferTypeFrom(cast.t("value"))
            cast.insertBefore(user)
            user.replaceInput(offset, cast.output())
    torch._C._jit_pass_dce(graph)  # the constants no op reads now


def record(fn: Callable[..., Any], inputs: tuple[Tensor, ...]) -> Callable[..., Any]:
    """``fn`` with the backward passes it asks autograd for, recorded as one graph of ATen ops
    that runs without Python or the autograd engine between them (CPU).

    ``fn`` takes tensors and returns a tuple, list or dict (nested or not) of tensors; it may
    call ``torch.autograd.grad`` (the SAC update's gradients of its losses, say). ``make_fx``
    (``torch.fx``) runs it once on ``inputs`` and records every ATen op it executes, those that
    autograd runs for the gradients included; ``trace`` records that graph for TorchScript's
    interpreter. The record calls the same kernels in the same order on the same tensors (but
    for ``_simplify``'s rewrites, which keep the bits), so it returns the same bits as ``fn``,
    and its random draws come from the global generator in the same order (its first run is
    undone, as in ``trace``). The tensors ``fn`` reads without
    taking them as inputs (the networks' parameters and buffers) are read live, so in-place
    optimizer steps between calls are seen. What the record does not see: branches on values
    (it keeps the path taken), Python numbers read (kept as constants), ``fn``'s side effects
    (dropped: it must only return), and new input shapes (record again).

    SAC's update on Pendulum (256x256 twin critics, batch 256) spent about 1.5 ms of its 4.4 ms
    of loss-and-gradient computation outside the matmuls here; recorded, the same took 3.4 ms.
    Where the recording is unavailable (no ``torch.fx``, an op the tracer refuses, a GPU
    tensor), this returns ``fn`` itself.
    """
    if any(t.device.type != "cpu" for t in inputs):
        return fn
    spec = None

    def flat(*args: Tensor) -> list[Tensor]:
        nonlocal spec
        leaves, spec = pytree.tree_flatten(fn(*args))
        return leaves

    try:
        from torch.fx.experimental.proxy_tensor import make_fx

        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            graph = make_fx(flat)(*inputs)
        for node in reversed(graph.graph.nodes):  # the profiler's markers (Adam's, autograd's): no-ops here
            if node.op == "call_function" and str(node.target).startswith("profiler.") and not node.users:
                graph.graph.erase_node(node)
        _simplify(graph.graph)
        for node in graph.graph.nodes:  # tensors read from outside: buffers of the record, read live by ``trace``
            if node.op == "get_attr":
                tensor = getattr(graph, node.target)
                delattr(graph, node.target)
                graph.register_buffer(node.target, tensor)
        graph.recompile()
    except (ImportError, RuntimeError, TypeError):
        return fn
    traced = trace(graph, inputs)
    if traced is graph:
        return fn

    def run(*args: Tensor) -> Any:
        with torch.no_grad():
            return pytree.tree_unflatten(traced(*args), spec)

    return run


def _simplify(graph: torch.fx.Graph) -> None:
    """Take out of a ``make_fx`` record what does no arithmetic, and let ReLUs overwrite their input.

    The record runs under ``no_grad``, so its ``detach`` ops only make aliases, and a transpose of
    a transpose (autograd's backward of ``nn.Linear``) is the tensor itself: their users read the
    tensor instead (SAC's actor gradients on Pendulum held 28 detaches). A ReLU whose input is
    a matmul's output read by nothing else writes its result there (``relu_``): the backward reads
    the ReLU's output, never its input, and the graph keeps one ``[2, 256, 256]`` activation
    less in the caches per layer. The same kernels on the same numbers: the same bits. Measured
    on SAC's training steps (one process, blocks of steps alternated): 2.4% faster. Then
    ``_transpose_weight_grads``.
    """
    aten = torch.ops.aten
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        source = node.args[0] if node.args else None
        if node.target is aten.detach.default:
            node.replace_all_uses_with(source)
            graph.erase_node(node)
        elif node.target is aten.t.default and getattr(source, "target", None) is aten.t.default:
            node.replace_all_uses_with(source.args[0])
            graph.erase_node(node)
            if not source.users:
                graph.erase_node(source)
        elif node.target is aten.relu.default and getattr(source, "target", None) in _MATMULS and len(source.users) == 1:
            node.target = aten.relu_.default
    _transpose_weight_grads(graph)


def _transpose_weight_grads(graph: torch.fx.Graph) -> None:
    """Autograd's weight gradients of linear layers, ``mm(t(grad), inp)``, computed as
    ``t(mm(t(inp), grad))`` where ``nets.weight_grad`` computes them so (a first layer's, from
    few input features over many rows): the same bits, in MKL's fast layout. SAC's actor on
    Pendulum (3 observations, 256 rows into 256): 39 -> 6 us. The gradient is a transposed view."""
    from policyopt.core.nets import transposed_weight_grad  # nets imports optim, which imports this module

    aten = torch.ops.aten
    for node in list(graph.nodes):
        if node.target is not aten.mm.default:
            continue
        grad_t, inp = node.args
        shape = getattr(getattr(inp, "meta", {}).get("val"), "shape", ())
        if getattr(grad_t, "target", None) is not aten.t.default or len(shape) != 2 or not transposed_weight_grad(*shape):
            continue
        with graph.inserting_before(node):
            inp_t = graph.call_function(aten.t.default, (inp,))
            product = graph.call_function(aten.mm.default, (inp_t, grad_t.args[0]))
            node.replace_all_uses_with(graph.call_function(aten.t.default, (product,)))
        graph.erase_node(node)
        if not grad_t.users:
            graph.erase_node(grad_t)


_MATMULS = frozenset((torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default, torch.ops.aten.baddbmm.default))


class _Flat(nn.Module):
    """``module`` for ``torch.jit.trace`` with its parameters and buffers as attributes of one
    module: the tracer makes a TorchScript module of every module in the tree it is given (PPO's
    step: 17, ~37 ms of its ~50 ms trace here), and needs only the tensors (the graph reads them
    as attributes, live). The same ops on the same tensors, so the same graph."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.__dict__["module"] = module  # not a submodule
        for i, p in enumerate(module.parameters()):
            self.register_parameter(f"p{i}", p)
        for i, b in enumerate(module.buffers()):
            self.register_buffer(f"b{i}", b)

    def forward(self, *inputs: Any) -> Any:
        return self.module(*inputs)


class _Unoptimized:
    """Runs a traced graph in TorchScript's plain interpreter, not its profiling executor.

    The profiling executor runs a graph's first calls with profiling, then rewrites it with
    type guards for fusion, which on CPU (no fuser in this build) only adds work: with it PPO's
    first training iteration on CartPole took some 50 ms more here (the profiling runs and the
    rewrite of the two traced steps); later iterations were the same within noise. The
    executor's switch is process state, so it is turned off for the call and restored after.
    Same ops, same kernels, same bits.
    """

    def __init__(self, forward: Callable[..., Any]):
        self.forward = forward

    def __call__(self, *args: Any) -> Any:
        optimize = torch._C._get_graph_executor_optimize()
        torch._C._set_graph_executor_optimize(False)
        try:
            return self.forward(*args)
        finally:
            torch._C._set_graph_executor_optimize(optimize)
