"""``runtime.tune_malloc``: freed activations stay in the heap instead of page-faulting back in."""

from __future__ import annotations

import subprocess
import sys

import pytest

from policyopt.runtime import tune_malloc

FAULTS_PER_SAC_UPDATES = """
import resource, sys, torch
from policyopt import SAC
from policyopt.runtime import tune_malloc
torch.set_num_threads(1)
if sys.argv[1] == "tune":
    assert tune_malloc()
agent = SAC("Pendulum-v1", seed=0)
batch = {"obs": torch.randn(256, 3), "next_obs": torch.randn(256, 3), "action": torch.rand(256, 1),
         "reward": torch.randn(256), "terminated": torch.zeros(256)}
for _ in range(10):  # warm-up: the optimizers' state, the heap's first growth
    agent.update(batch)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(80):
    agent.update(batch)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_malloc_stops_the_page_faults_of_an_off_policy_update():
    runs = [subprocess.Popen([sys.executable, "-c", FAULTS_PER_SAC_UPDATES, mode], stdout=subprocess.PIPE, text=True)
            for mode in ("tune", "default")]  # fresh processes, side by side
    tuned, default = (int(run.communicate()[0].split()[-1]) for run in runs)
    assert tuned * 5 < default, (tuned, default)  # here: 300-500 against 4,700-6,700


def test_the_users_own_glibc_thresholds_are_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert tune_malloc.__wrapped__() is False
