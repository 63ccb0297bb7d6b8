"""policyopt/mkl_dispatch.py: the in-memory shared object, and MKL's kernel choice after ``import policyopt``."""

import json
import os
import platform
import subprocess
import sys

import pytest

from policyopt import mkl_dispatch

LINUX_X86_64 = sys.platform.startswith("linux") and platform.machine() == "x86_64"
linux_x86_64 = pytest.mark.skipif(not LINUX_X86_64, reason="the shared object is x86-64 ELF")
amd_with_mkl = pytest.mark.skipif(
    not mkl_dispatch._amd_cpu() or mkl_dispatch.code_path() is None, reason="needs an AMD CPU and torch built with MKL"
)

PROBE = """
import json, sys
{first}
import torch
from policyopt import mkl_dispatch
a, b = torch.randn(300, 200, dtype=torch.float64), torch.randn(200, 100, dtype=torch.float64)
error = (a.float() @ b.float() - a @ b).abs().max().item()
print(json.dumps({{"status": mkl_dispatch.STATUS, "kernels": mkl_dispatch.code_path(), "error": error}}))
"""


def probe(first: str, **env: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(first=first)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    )
    return {**json.loads(out.stdout), "stderr": out.stderr}


@linux_x86_64
def test_shared_object_exports_each_name_and_runs_its_code():
    lib = mkl_dispatch.load(mkl_dispatch.shared_object((b"first_name", b"second")))
    assert lib.first_name() == 1 and lib.second() == 1
    seven = bytes.fromhex("b807000000c3")  # mov eax, 7; ret
    assert mkl_dispatch.load(mkl_dispatch.shared_object((b"seven",), seven)).seven() == 7
    with pytest.raises(AttributeError):
        lib.not_exported  # noqa: B018


@linux_x86_64
@amd_with_mkl
def test_import_policyopt_first_gives_mkl_its_fast_kernels_with_the_same_results():
    on = probe("import policyopt", **{mkl_dispatch.ENV_VAR: ""})
    assert on["status"] == "on"
    assert on["kernels"] != mkl_dispatch.GENERIC_PATH
    off = probe("import policyopt", **{mkl_dispatch.ENV_VAR: "keep"})
    assert off["status"] == "off: POLICYOPT_MKL_VENDOR_CHECK=keep"
    assert off["kernels"] == mkl_dispatch.GENERIC_PATH
    # float32 against float64 over sums of 200 products of N(0, 1) numbers: rounding only
    assert on["error"] < 1e-4 and off["error"] < 1e-4


def test_torch_imported_first_is_reported():
    late = probe("import torch, policyopt", **{mkl_dispatch.ENV_VAR: ""})
    assert late["status"].startswith("off:")
    if LINUX_X86_64 and mkl_dispatch._amd_cpu():
        assert late["status"] == "off: torch was imported before policyopt"
    # the warning, where MKL runs its generic kernels because of the import order
    assert ("import policyopt first" in late["stderr"]) == (late["kernels"] == mkl_dispatch.GENERIC_PATH)


FIRST_TANH = """
import policyopt, torch
torch.set_num_threads(2)
x = torch.linspace(-3, 3, 256 * 64)  # PPO's hidden activations in one update minibatch
print(torch.equal(torch.tanh(x), torch.tanh(x)))
"""


@pytest.mark.slow
def test_a_fresh_process_first_large_tanh_gives_the_bits_of_the_second():
    """MKL's vector-math kernels are chosen before torch's threads first use them (``resolve_vml``):
    without that, the first tanh split over 2 threads ran a low-accuracy kernel on one thread's
    half in 8 of 30 processes here (with ``enable``; one process at a time, so that both its
    threads run at once), and 24 clean ones would be luck (about 0.1%)."""
    runs = [subprocess.run([sys.executable, "-c", FIRST_TANH], capture_output=True, text=True, check=True) for _ in range(24)]
    assert [run.stdout.strip() for run in runs] == ["True"] * 24
