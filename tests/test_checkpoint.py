"""Checkpoint files, normalizer saving, and exact resume."""


import pytest
import torch

from policyopt import checkpoint
from policyopt.algos.ppo import PPO
from policyopt.core.normalize import ObsNormalizer, RunningMeanStd
from policyopt.loops import resume

from helpers import needs_envpool, read_metrics


def test_running_mean_std_matches_numpy():
    rms = RunningMeanStd((3,))
    data = torch.randn(1000, 3, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.1]) + torch.tensor([2.0, -1.0, 0.0])
    for chunk in data.split(37):
        rms.update(chunk)
    torch.testing.assert_close(rms.mean, data.mean(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rms.var, data.var(0, unbiased=False), rtol=1e-3, atol=1e-6)


def test_normalizer_statistics_saved_with_the_agent(tmp_path):
    agent = PPO("Pendulum-v1", seed=0, normalize_obs=True, num_envs=2, num_steps=64, batch_size=64)
    agent.learn(256, progress=False)
    assert agent.obs_normalizer.rms.count > 100
    agent.save(tmp_path / "m.pt")
    loaded = PPO.load(tmp_path / "m.pt")
    for key, value in agent.obs_normalizer.state_dict().items():
        torch.testing.assert_close(loaded.obs_normalizer.state_dict()[key], value)
    obs = torch.randn(5, 3)
    torch.testing.assert_close(loaded.normalize(obs), agent.normalize(obs))
    assert (loaded.predict(obs.numpy()) == agent.predict(obs.numpy())).all()


def test_obs_normalizer_clips():
    norm = ObsNormalizer((1,), clip=5.0)
    norm.update(torch.zeros(100, 1))
    assert norm(torch.tensor([[1e6]])).item() == 5.0


def test_round_trip_and_corruption_errors(tmp_path):
    payload = {"a": torch.arange(5), "b": {"c": 1.5, "d": [1, 2]}, "s": "text"}
    path = tmp_path / "x.pt"
    checkpoint.save(path, payload)
    loaded = checkpoint.load(path)
    assert torch.equal(loaded["a"], payload["a"]) and loaded["b"] == payload["b"] and loaded["s"] == "text"

    raw = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(raw[: len(raw) - 10])
    with pytest.raises(checkpoint.CheckpointError, match="trunc.pt is truncated"):
        checkpoint.load(tmp_path / "trunc.pt")
    flipped = bytearray(raw)
    flipped[-5] ^= 0xFF
    (tmp_path / "bad.pt").write_bytes(bytes(flipped))
    with pytest.raises(checkpoint.CheckpointError, match="bad.pt is corrupt"):
        checkpoint.load(tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="not a policyopt checkpoint"):
        checkpoint.load(tmp_path / "junk.pt")
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "missing.pt")


def test_checkpoint_dir_keeps_the_last_k(tmp_path):
    ckpts = checkpoint.CheckpointDir(tmp_path, keep=2)
    for step in (10, 20, 30):
        ckpts.save(step, {"step": step})
    assert [p.name for p in ckpts.all()] == ["step_000000000020.pt", "step_000000000030.pt"]
    assert checkpoint.load(ckpts.latest())["step"] == 30
    assert not list(ckpts.dir.glob("*.tmp"))


def stop_at(step):
    return lambda agent, metrics: agent.global_step < step


@pytest.mark.parametrize("env_id,overrides", [
    ("CartPole-v1", {}),
    ("CartPole-v1", {"env_backend": "numpy"}),
    ("Pendulum-v1", {"normalize_obs": True, "normalize_reward": True, "anneal_lr": True}),
    ("Pendulum-v1", {"policy": "gsde", "log_std_init": -2.0}),  # exploration matrices redrawn per rollout
])
def test_resume_matches_uninterrupted_run(tmp_path, env_id, overrides):
    common = dict(seed=3, num_envs=2, num_steps=64, batch_size=32, update_epochs=2, **overrides)
    full = PPO(env_id, **common).learn(1024, run_dir=tmp_path / "full", progress=False)

    PPO(env_id, **common).learn(1024, run_dir=tmp_path / "cut", progress=False, callback=stop_at(512))
    resumed = resume(tmp_path / "cut", progress=False)

    assert resumed.global_step == full.global_step == 1024
    for (name, a), (_, b) in zip(full.nets.state_dict().items(), resumed.nets.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert read_metrics(tmp_path / "full") == read_metrics(tmp_path / "cut")


@needs_envpool
def test_resume_on_envpool_starts_fresh_episodes(tmp_path):
    """EnvPool cannot save its envs: the resumed run says so and trains on to the budget."""
    common = dict(seed=3, num_envs=2, num_steps=64, batch_size=32, update_epochs=2, env_backend="envpool")
    PPO("CartPole-v1", **common).learn(1024, run_dir=tmp_path, progress=False, callback=stop_at(512))
    with pytest.warns(UserWarning, match="cannot be saved"):
        resumed = resume(tmp_path, progress=False)
    assert resumed.global_step == 1024
