"""Intel MKL's fast kernels on AMD CPUs (imported by ``policyopt/__init__.py`` before torch).

PyTorch's x86-64 wheels compute float32 matmuls and ``tanh``/``exp``/``log`` with Intel MKL,
which picks its code by CPU vendor before instruction set: on an AMD CPU it runs generic
kernels whatever the CPU supports. On the 2-core AMD EPYC (Zen 5, AVX-512) this project is
measured on, one thread:

    256x256 @ 256x256 float32    350 us  (95 GFLOP/s)   with MKL's AVX-512 kernels 160 us
    256x64 @ 64x64                25 us                                              11-14 us
    tanh of 256x64                44 us                                               5 us

MKL asks functions of its own, ``mkl_serv_intel_cpu_true`` (its kernel dispatch) and
``mkl_serv_intel_cpu`` (its version report), whether the CPU is Intel's. libtorch exports them
and calls them through the dynamic linker's symbol lookup, so a shared object that defines
functions of those names and is in the process's global scope before torch loads takes their
place: the ``LD_PRELOAD`` technique, done from Python. MKL then chooses its kernels by the
instruction sets the CPU reports (cpuid), as it does on an Intel CPU with the same instruction
sets (AVX-512 with bfloat16 on this one; ``code_path()`` names them). The answers are the same
up to float32 rounding (tests/test_mkl_dispatch.py compares a matmul with a float64 one); the
rounding differs from the generic kernels', so runs differ from runs without it, as they do
between any two MKL code paths (``MKL_CBWR``, which still works). It holds for the whole
process: other libraries' torch computations in it run on the same kernels.

The shared object is written here, a few hundred bytes of ELF: one function, ``mov eax, 1;
ret``, exported under both names. It is loaded from memory (``memfd_create``) with
``RTLD_GLOBAL``.

It is done only on Linux x86-64, on AMD CPUs, before torch is imported (loaded after torch, it
changed nothing here) and when ``POLICYOPT_MKL_VENDOR_CHECK`` is not ``keep``. ``STATUS`` says
whether it was done and why not; a run directory's config.json records it with ``code_path()``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import struct
import sys
import warnings

ENV_VAR = "POLICYOPT_MKL_VENDOR_CHECK"  # "keep": leave MKL's vendor check alone
# MKL's vendor checks: the one its kernel dispatch asks, and the one behind its version report
SYMBOLS = (b"mkl_serv_intel_cpu_true", b"mkl_serv_intel_cpu")
RETURN_ONE = bytes.fromhex("b801000000c3")  # x86-64: mov eax, 1; ret
GENERIC_PATH = "Intel(R) Architecture processors"  # MKL's name for its generic kernels

_loaded: list[ctypes.CDLL] = []  # keeps the object referenced for the life of the process
STATUS = "not tried"


def shared_object(names: tuple[bytes, ...] = SYMBOLS, code: bytes = RETURN_ONE) -> bytes:
    """An x86-64 ELF shared object that exports one function, whose machine code is ``code``,
    under each of ``names``.

    Two segments, as the dynamic linker wants them: read+execute (headers, symbol hash table,
    symbol table, string table, code) on the first page, read+write (the dynamic section, which
    the linker relocates in place) on the second; and a non-executable stack (PT_GNU_STACK).
    """
    page, ehdr_size, phdr_size, sym_size = 0x1000, 64, 56, 24
    phnum, nsyms = 4, len(names) + 1  # symbol 0 is the null symbol
    # SysV hash table with one bucket: bucket[0] = symbol 1, chain[i] = i + 1, the last one 0
    chains = [0, *range(2, nsyms), 0]
    hash_table = struct.pack(f"<{3 + nsyms}I", 1, nsyms, 1, *chains)
    hash_off = ehdr_size + phnum * phdr_size
    sym_off = (hash_off + len(hash_table) + 7) // 8 * 8
    strtab = b"\0" + b"".join(name + b"\0" for name in names)
    str_off = sym_off + nsyms * sym_size
    code_off = (str_off + len(strtab) + 15) // 16 * 16
    text_end = code_off + len(code)
    # every name: GLOBAL FUNC, default visibility, in a section (any but undefined or absolute)
    name_offsets = [1 + sum(len(n) + 1 for n in names[:i]) for i in range(len(names))]
    symtab = bytes(sym_size) + b"".join(struct.pack("<IBBHQQ", at, 0x12, 0, 1, code_off, len(code)) for at in name_offsets)
    dt_hash, dt_strtab, dt_symtab, dt_strsz, dt_syment = 4, 5, 6, 10, 11
    dynamic = b"".join(
        struct.pack("<qQ", tag, value)
        for tag, value in (
            (dt_hash, hash_off),
            (dt_strtab, str_off),
            (dt_symtab, sym_off),
            (dt_strsz, len(strtab)),
            (dt_syment, sym_size),
            (0, 0),
        )
    )
    pt_load, pt_dynamic, pt_gnu_stack = 1, 2, 0x6474E551
    r, w, x = 4, 2, 1
    phdrs = b"".join(
        struct.pack("<IIQQQQQQ", kind, flags, offset, offset, offset, size, size, align)
        for kind, flags, offset, size, align in (
            (pt_load, r | x, 0, text_end, page),
            (pt_load, r | w, page, len(dynamic), page),
            (pt_dynamic, r | w, page, len(dynamic), 8),
            (pt_gnu_stack, r | w, 0, 0, 16),
        )
    )
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little-endian, version 1, System V ABI
    et_dyn, em_x86_64 = 3, 62
    ehdr = ident + struct.pack(
        "<HHIQQQIHHHHHH", et_dyn, em_x86_64, 1, 0, ehdr_size, 0, 0, ehdr_size, phdr_size, phnum, 64, 0, 0
    )
    text = bytearray(text_end)
    for offset, part in ((0, ehdr), (ehdr_size, phdrs), (hash_off, hash_table), (sym_off, symtab), (str_off, strtab)):
        text[offset : offset + len(part)] = part
    text[code_off:text_end] = code
    return bytes(text) + bytes(page - text_end) + dynamic


def load(data: bytes) -> ctypes.CDLL:
    """dlopen a shared object held in memory, into the global symbol scope.

    The memory file stays open: the loader knows an object by its path, ``/proc/self/fd/N``,
    and would take a later object loaded from a reused ``N`` for this one.
    """
    fd = os.memfd_create("policyopt-shared-object")
    os.write(fd, data)
    try:
        return ctypes.CDLL(f"/proc/self/fd/{fd}", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        os.close(fd)
        raise


def _amd_cpu() -> bool:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):  # the first CPU's
                    return "AuthenticAMD" in line
    except OSError:
        pass
    return False


def enable() -> str:
    """Take MKL past its vendor check where the module docstring says; returns (and sets) ``STATUS``."""
    global STATUS
    if not _loaded:
        STATUS = _enable()
    return STATUS


def _enable() -> str:
    if os.environ.get(ENV_VAR) == "keep":
        return f"off: {ENV_VAR}=keep"
    if not sys.platform.startswith("linux") or platform.machine() != "x86_64":
        return "off: not Linux on x86-64"
    if not _amd_cpu():
        return "off: not an AMD CPU"
    if "torch" in sys.modules:
        if code_path() == GENERIC_PATH:
            warnings.warn(
                "torch was imported before policyopt, so Intel MKL runs its generic kernels on this AMD CPU "
                "(float32 matmuls about 2x slower here); import policyopt first for the CPU's own kernels "
                f"(policyopt/mkl_dispatch.py), or set {ENV_VAR}=keep to leave MKL as it is",
                stacklevel=3,
            )
        return "off: torch was imported before policyopt"
    try:
        _loaded.append(load(shared_object()))
    except (OSError, AttributeError) as error:  # no memfd_create, no /proc, a loader that refuses it
        return f"off: {error}"
    return "on"


class _Version(ctypes.Structure):  # MKL's MKLVersion
    _fields_ = [
        *((field, ctypes.c_int) for field in ("major", "minor", "update")),
        *((field, ctypes.c_char_p) for field in ("status", "build", "processor", "platform")),
    ]


@functools.cache
def code_path() -> str | None:
    """The kernels MKL runs, as MKL names them (``GENERIC_PATH`` or an instruction set); None
    where torch does not use MKL. Imports torch. MKL's choice is fixed for the process once
    libtorch has loaded, so the answer is computed once."""
    import torch

    if not torch.backends.mkl.is_available():
        return None
    try:
        libtorch = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        get_version = libtorch.mkl_serv_get_version
    except (OSError, AttributeError):
        return None
    version = _Version()
    get_version(ctypes.byref(version))
    return version.processor.decode()


# ATen's float unary ops that call MKL's vector math (VML) on CPU (aten/src/ATen/cpu/vml.h)
VML_OPS = (
    "acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "log", "log10", "log2", "sin", "sqrt", "tan", "tanh", "trunc"
)


@functools.cache
def resolve_vml() -> None:
    """Call each of MKL's vector-math functions once, on this thread, for float32 and float64.

    MKL picks a VML function's kernel on its first call. When torch's intra-op threads make that
    first call together (a fresh process's first large ``tanh``, ``exp``, ``cos``...: ATen splits
    ops over 2048 elements between its threads), a thread can run a low-accuracy kernel for its
    whole share of that one call, although torch asks for the high-accuracy one (pytorch/pytorch
    issue 188792). Here, with MKL past its vendor check (``enable``) and 2 threads, the first
    ``tanh`` of a 256x64 float32 batch (PPO's first update) differed from the second in 4 and 8
    of 30 fresh processes (two runs), the first ``cos`` of 8192 float64 numbers (the torch envs'
    CartPole) in 10 of 40, by up to ~1e-8 relative: a run then differs from the same run in
    another process. One call per function on a single element, before any op large enough to
    be split, settles the choice: 0 of 120 after it. Nothing where torch does not use MKL."""
    import torch

    if not torch.backends.mkl.is_available():
        return
    for dtype in (torch.float32, torch.float64):
        x = torch.full((1,), 0.5, dtype=dtype)
        for name in VML_OPS:
            getattr(torch, name)(x)
