import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads: small solves (tabular DP) are fastest on one thread

import policyopt  # noqa: E402, F401  (before torch, as in the CLI: see policyopt/mkl_dispatch.py)
import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("MUJOCO_GL", "egl")


@pytest.fixture(autouse=True)
def _single_thread():
    """Tests run tiny networks; one intra-op thread is fastest and keeps results reproducible."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for every test marked ``ray`` (starting one takes seconds)."""
    from policyopt.distributed import connect

    ray = connect(num_cpus=2)
    yield ray
    ray.shutdown()
