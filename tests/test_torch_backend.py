"""``env_backend=torch``: on-policy training on the batched PyTorch envs, with no host round trip per step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policyopt import PPO, SAC
from policyopt.config import ConfigError
from policyopt.envs.vector import EnvError
from policyopt.loops import EpisodeStats, TorchEpisodeStats, make_runner, resume


def test_torch_episode_stats_match_the_numpy_ones():
    rng = np.random.default_rng(0)
    host, device = EpisodeStats(3), TorchEpisodeStats(3, torch.device("cpu"))
    for t in range(40):
        reward, done = rng.normal(size=3), rng.random(3) < 0.2
        host.record(reward, done)
        device.record(torch.as_tensor(reward), torch.as_tensor(done))
        if t == 17:
            device.load_state_dict(device.state_dict())  # a checkpoint mid-way changes nothing
    returns, lengths = host.pop()
    device_returns, device_lengths = device.pop()
    assert device_lengths == lengths and np.allclose(device_returns, returns)
    assert np.allclose(device.ret.numpy(), host.ret) and np.array_equal(device.len.numpy(), host.len)


def test_episode_stats_add_up_each_episode_in_step_order():
    """``record`` keeps the steps and ``pop`` (or a checkpoint) adds them up: the returns a Python
    loop over the steps gives, bit for bit, in the order the episodes ended."""
    rng = np.random.default_rng(1)
    stats, ret, length, expected = EpisodeStats(3), [0.0] * 3, [0] * 3, []
    for t in range(60):
        reward, done = rng.normal(size=3).astype(np.float32), rng.random(3) < 0.2
        stats.record(reward, done if done.any() else None)
        for i in range(3):
            ret[i], length[i] = ret[i] + float(reward[i]), length[i] + 1
            if done[i]:
                expected.append((ret[i], length[i]))
                ret[i], length[i] = 0.0, 0
        if t == 25:
            stats.load_state_dict(stats.state_dict())  # a checkpoint mid-way changes nothing
    returns, lengths = stats.pop()
    assert len(expected) > 10 and list(zip(returns, lengths)) == expected
    assert stats.ret.tolist() == ret and stats.len.tolist() == length


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_ppo_trains_on_the_torch_envs_and_resumes_exactly(tmp_path, env_id):
    common = dict(seed=2, env_backend="torch", num_envs=16, num_steps=32, batch_size=128, update_epochs=2,
                  normalize_obs=True)
    full = PPO(env_id, **common).learn(2048, run_dir=tmp_path / "full", progress=False)
    PPO(env_id, **common).learn(2048, run_dir=tmp_path / "cut", progress=False,
                                callback=lambda agent, metrics: agent.global_step < 1024)
    resumed = resume(tmp_path / "cut", progress=False)
    for (name, a), (_, b) in zip(full.nets.state_dict().items(), resumed.nets.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert np.isfinite(full.evaluate(2)).all()  # the policy acts in the Gymnasium env too


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_a_rollout_on_the_torch_envs_reads_nothing_back_to_the_host(env_id):
    """Each value read back (``.item()``, ``bool(tensor)``) would be a device sync per step on a GPU."""
    agent = PPO(env_id, seed=0, env_backend="torch", num_envs=32, num_steps=8)
    runner = make_runner(agent)
    runner.collect()
    with torch.profiler.profile() as prof:
        runner.collect()
    reads = [e.count for e in prof.key_averages() if e.key == "aten::_local_scalar_dense"]
    assert sum(reads) == 0


def test_device_rollouts_bootstrap_truncated_episodes_from_their_final_observations():
    """The final values, computed for the whole rollout at its end: V(final obs) of the step
    where the time limit cut an episode (normalized with that step's statistics), 0 elsewhere."""
    agent = PPO("Pendulum-v1", seed=0, env_backend="torch", num_envs=4, num_steps=16, normalize_obs=True)
    runner = make_runner(agent)
    runner.collect()
    envs = runner.collector.envs
    envs.elapsed_steps[:] = torch.tensor([190, 195, 199, 0])  # three episodes cut inside the next rollout
    seen, step_of = [], runner.collector.step

    def step(action):
        out = step_of(action)
        seen.append(agent.normalize(out.final_obs))
        return out

    runner.collector.step = step
    buf = runner.collect()
    truncated = buf["truncated"]
    assert truncated.sum(0).tolist() == [1, 1, 1, 0]
    expected = torch.stack([agent.value(obs) for obs in seen])
    assert torch.allclose(buf["final_value"][truncated], expected[truncated], rtol=1e-6, atol=1e-6)
    assert (buf["final_value"][~truncated] == 0).all()
    assert torch.equal(buf["next_value"][truncated], buf["final_value"][truncated])


def test_ppo_learns_cartpole_on_the_torch_env():
    agent = PPO("CartPole-v1", seed=0, env_backend="torch").learn(15_000, progress=False)
    assert np.mean(agent.evaluate(10)) > 100  # a random policy scores ~22


def test_unsupported_envs_and_algorithms_are_rejected():
    with pytest.raises(EnvError, match="no batched torch version of 'LunarLander-v3'"):
        PPO("LunarLander-v3", env_backend="torch")
    with pytest.raises(ConfigError, match="only on-policy"):
        SAC("Pendulum-v1", env_backend="torch", learning_starts=10).learn(20, progress=False)
