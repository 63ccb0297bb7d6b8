"""RolloutBuffer: steps added as tensors or NumPy arrays, read back as time-major tensors."""

import numpy as np
import pytest
import torch

from policyopt.core.buffers import RolloutBuffer


def fill(buf: RolloutBuffer, steps: int) -> list[dict]:
    added = []
    for t in range(steps):
        fields = {
            "obs": torch.full((buf.num_envs, 3), float(t)),
            "reward": np.arange(buf.num_envs, dtype=np.float32) + t,
            "done": np.array([t % 2 == 1] * buf.num_envs),
            "action": torch.arange(buf.num_envs) * t,
        }
        buf.add(**fields)
        added.append(fields)
    return added


def test_fields_are_stacked_time_major_with_their_dtypes():
    buf = RolloutBuffer(4, 2)
    added = fill(buf, 4)
    assert buf.full
    assert buf["obs"].shape == (4, 2, 3) and buf["obs"].dtype == torch.float32
    assert buf["reward"].dtype == torch.float32 and buf["done"].dtype == torch.bool and buf["action"].dtype == torch.int64
    for t, fields in enumerate(added):
        for name, value in fields.items():
            np.testing.assert_array_equal(buf[name][t].numpy(), np.asarray(value))
    flat = buf.flat("obs", "reward")
    assert flat["obs"].shape == (8, 3) and flat["reward"].tolist() == [0, 1, 1, 2, 2, 3, 3, 4]


def test_set_fields_join_the_stacked_ones_and_reset_empties_the_buffer():
    buf = RolloutBuffer(3, 2)
    fill(buf, 3)
    buf["next_value"] = torch.ones(3, 2)
    assert "next_value" in buf and "obs" in buf and buf["obs"].shape == (3, 2, 3)
    buf.reset()
    assert buf.step == 0 and "obs" not in buf
    fill(buf, 3)
    assert buf["obs"][2, 0, 0] == 2.0 and "next_value" not in buf


def test_a_partly_filled_buffer_reads_the_steps_added_so_far():
    buf = RolloutBuffer(5, 2)
    fill(buf, 2)
    assert buf["obs"].shape == (2, 2, 3)
    fill(buf, 1)  # adding after a read continues the rollout
    assert buf["obs"].shape == (3, 2, 3) and buf["obs"][2].eq(0.0).all() and buf["obs"][1].eq(1.0).all()


def test_misuse_is_reported():
    buf = RolloutBuffer(2, 1)
    buf.add(obs=torch.zeros(1), value=torch.zeros(1))
    buf.add(obs=torch.zeros(1))
    with pytest.raises(RuntimeError, match="'value' was added at 1 of the 2 steps"):
        buf["obs"]
    with pytest.raises(RuntimeError, match="full"):
        buf.add(obs=torch.zeros(1))
