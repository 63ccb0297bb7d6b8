"""ReplayBuffer: bounded preallocated memory, exact contents, terminated vs truncated."""

import gc
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from policyopt.core.buffers import ReplayBuffer
from policyopt.core.returns import td_target


def rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096


def add_batch(buf: ReplayBuffer, rng: np.random.Generator, n: int, obs_dim: int) -> None:
    obs = rng.standard_normal((n, obs_dim)).astype(np.float32)
    buf.add(obs, rng.integers(0, 3, n), rng.standard_normal(n), obs + 1, rng.random(n) < 0.1, rng.random(n) < 0.1)


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the RSS from /proc")
def test_memory_is_allocated_once_and_never_grows():
    capacity, obs_dim, batch = 1_000, 1_024, 50
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(capacity, seed=0)
    tracemalloc.start()
    try:
        add_batch(buf, rng, batch, obs_dim)
        nbytes = buf.nbytes
        assert nbytes >= 2 * capacity * obs_dim * 4  # obs and next_obs preallocated at full capacity
        for _ in range(capacity // batch):  # fill once: every page of the arrays is now touched
            add_batch(buf, rng, batch, obs_dim)
        gc.collect()
        traced, rss = tracemalloc.get_traced_memory()[0], rss_bytes()
        for _ in range(10 * capacity // batch):  # 10 more times the capacity
            add_batch(buf, rng, batch, obs_dim)
            buf.sample(64)
        gc.collect()
        assert len(buf) == capacity and buf.nbytes == nbytes
        assert tracemalloc.get_traced_memory()[0] - traced < 1_000_000
        # growing with the data would add 10 x 8 MB; allow allocator noise only
        assert rss_bytes() - rss < 4_000_000
    finally:
        tracemalloc.stop()


def test_circular_overwrite_keeps_the_newest_transitions():
    buf = ReplayBuffer(5, seed=0)
    for start in range(0, 12, 3):
        obs = np.arange(start, start + 3, dtype=np.float32)[:, None]
        buf.add(obs, np.zeros(3, dtype=np.int64), np.zeros(3), obs + 0.5, np.zeros(3, bool), np.zeros(3, bool))
    assert len(buf) == 5 and buf.pos == 2
    assert sorted(buf.data["obs"][:, 0].tolist()) == [7.0, 8.0, 9.0, 10.0, 11.0]
    np.testing.assert_array_equal(buf.data["next_obs"], buf.data["obs"] + 0.5)


def test_terminated_and_truncated_are_stored_apart_and_sampled_exactly():
    buf = ReplayBuffer(4, seed=0)
    obs = np.arange(4, dtype=np.float32)[:, None]
    buf.add(obs, np.arange(4), np.arange(4) * 10.0, obs + 100, [True, False, False, False], [False, True, False, False])
    batch = buf.sample(256)
    assert set(batch) == set(ReplayBuffer.FIELDS)
    assert batch["terminated"].dtype == torch.bool and batch["reward"].dtype == torch.float32
    i = batch["obs"][:, 0].long()
    torch.testing.assert_close(batch["reward"], i.float() * 10.0)
    torch.testing.assert_close(batch["next_obs"][:, 0], i.float() + 100)
    assert torch.equal(batch["terminated"], i == 0) and torch.equal(batch["truncated"], i == 1)


def test_truncated_transitions_bootstrap_and_terminated_do_not():
    reward = torch.tensor([1.0, 1.0, 1.0])
    terminated = torch.tensor([True, False, False])  # the second one is truncated, the third inside an episode
    next_value = torch.tensor([5.0, 5.0, 5.0])
    torch.testing.assert_close(td_target(reward, terminated, next_value, 0.9), torch.tensor([1.0, 5.5, 5.5]))


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(1)
    a = ReplayBuffer(100, seed=3)
    for _ in range(7):
        add_batch(a, rng, 20, 4)
    b = ReplayBuffer(100, seed=99)
    b.load_state_dict(a.state_dict())
    assert (b.pos, len(b), b.nbytes) == (a.pos, len(a), a.nbytes)
    for x, y in zip(a.sample(32).values(), b.sample(32).values()):
        assert torch.equal(x, y)
