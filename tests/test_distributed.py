"""Distributed sampling on Ray: rollout workers, the pool's restarts, on-policy sampling through workers.

Tests marked ``ray`` start a local Ray instance (``-m "not ray"`` skips them); the others
check the pieces that run without Ray.
"""

import copy
import os
import pickle
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from policyopt.algos.ppo import PPO
from policyopt.config import ConfigError
from policyopt.core.normalize import RunningMeanStd
from policyopt.distributed import pool as pool_module
from policyopt.distributed.worker import AgentSpec, PolicyWeights, RolloutWorker, worker_seed
from policyopt.loops import OnPolicyRunner

SMALL = dict(num_envs=4, num_steps=32, batch_size=64, update_epochs=2)


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_single_machine_path_never_imports_ray():
    out = run_python(
        "import sys, policyopt, policyopt.cli, policyopt.sweep, policyopt.distributed.runners\n"
        "from policyopt import PPO, IMPALA\n"
        "PPO('CartPole-v1', preset=False, num_envs=2, num_steps=16, batch_size=32).learn(64, progress=False)\n"
        "IMPALA('CartPole-v1')\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    assert out.returncode == 0, out.stderr


def test_missing_ray_is_one_error_line_with_the_install_command():
    out = run_python(
        "import sys; sys.modules['ray'] = None  # as if Ray were not installed\n"
        "from policyopt.cli import main\n"
        "sys.exit(main(['train', 'impala', '--steps', '100', '--no-progress', '--run-dir', '/tmp/never']))\n"
    )
    assert out.returncode == 2
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "pip install 'policyopt[ray]'" in err[0], err


def test_added_since_recovers_the_moments_a_worker_added():
    data = torch.randn(500, 3, dtype=torch.float64) * torch.tensor([1.0, 4.0, 0.2]) + torch.tensor([1.0, -2.0, 0.5])
    learner, worker = RunningMeanStd((3,)), RunningMeanStd((3,))
    learner.update(data[:300])
    worker.load_state_dict(learner.state_dict())
    before = {k: v.clone() for k, v in worker.state_dict().items()}
    for chunk in data[300:].split(37):
        worker.update(chunk)
    mean, var, n = worker.added_since(before)
    assert n.item() == pytest.approx(200)
    torch.testing.assert_close(mean, data[300:].mean(0))
    torch.testing.assert_close(var, data[300:].var(0, unbiased=False))
    learner.combine(mean, var, n)
    torch.testing.assert_close(learner.mean, worker.mean)
    torch.testing.assert_close(learner.var, worker.var)


def test_worker_seeds_differ_by_index_restart_and_generation():
    seeds = {worker_seed(0, g, i, r) for g in (0, 5000) for i in range(4) for r in range(3)}
    assert len(seeds) == 24
    assert worker_seed(3, 0, 1, 2) == worker_seed(3, 0, 1, 2)


def test_worker_fills_the_same_buffer_fields_as_the_single_machine_runner():
    """The worker is a plain class (Ray makes it an actor): run it in this process."""
    agent = PPO("CartPole-v1", seed=0, preset=False, normalize_obs=True, **SMALL)
    local = OnPolicyRunner(agent).collect()
    worker = RolloutWorker(AgentSpec.of(agent, num_envs=2, workers=0), seed=1)
    sample = worker.sample(PolicyWeights.of(agent))
    assert set(sample.data) == set(local.data)
    for name, value in sample.data.items():
        assert value.shape == (32, 2, *local[name].shape[2:]), name
        assert value.dtype == local[name].dtype, name
    assert sample.num_steps == 64
    # the worker acted with the learner's weights: its logp and values are the learner's
    with torch.no_grad():
        dist, value = agent.policy.dist_and_value(sample.data["obs"])
    torch.testing.assert_close(dist.log_prob(sample.data["action"]), sample.data["logp"])
    torch.testing.assert_close(value, sample.data["value"])
    mean, var, n = sample.obs_moments
    assert n.item() == pytest.approx(2 * 33)  # the reset observations, then 32 steps of 2 envs


def leaves(tree):
    if isinstance(tree, dict):
        tree = list(tree.values())
    return [leaf for item in tree for leaf in leaves(item)] if isinstance(tree, list | tuple) else [tree]


def test_samples_and_weights_cross_processes_as_numpy_arrays():
    agent = PPO("Pendulum-v1", seed=0, preset=False, normalize_obs=True, normalize_reward=True, **SMALL)
    weights = PolicyWeights.of(agent)
    sample = RolloutWorker(AgentSpec.of(agent, num_envs=2, workers=0), seed=1).sample(weights)
    for sent in (weights, sample):
        state, originals = leaves(sent.__getstate__()), leaves(vars(sent))
        assert not any(isinstance(leaf, torch.Tensor) for leaf in state)
        assert sum(isinstance(leaf, np.ndarray) for leaf in state) == sum(isinstance(leaf, torch.Tensor) for leaf in originals)
        received = pickle.loads(pickle.dumps(sent))
        for a, b in zip(originals, leaves(vars(received)), strict=True):
            if isinstance(a, torch.Tensor):
                assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
            else:
                assert a == b


def test_a_worker_hands_its_reward_statistics_to_its_replacement():
    agent = PPO("Pendulum-v1", seed=0, preset=False, normalize_reward=True, **SMALL)
    spec = AgentSpec.of(agent, num_envs=2, workers=0)
    sample = RolloutWorker(spec, seed=1).sample(PolicyWeights.of(agent))
    assert sample.reward_scaler["rms.count"].item() == pytest.approx(1e-4 + 64)  # 32 steps of 2 envs
    replacement = RolloutWorker(spec, seed=2, reward_scaler=sample.reward_scaler)
    state = replacement.runner.reward_scaler.state_dict()
    for name in ("rms.mean", "rms.var", "rms.count"):
        assert torch.equal(state[name], sample.reward_scaler[name]), name
    assert not state["ret"].any()  # its envs start new episodes
    assert RolloutWorker(spec, seed=1).sample(PolicyWeights.of(agent)).reward_scaler is not None


@pytest.mark.ray
def test_resumed_workers_continue_the_reward_statistics(ray_session, tmp_path):
    from policyopt.loops import resume

    common = dict(seed=0, preset=False, workers=2, normalize_reward=True, **SMALL)  # 2 envs per worker
    cut = PPO("Pendulum-v1", **common)
    try:
        cut.learn(1024, run_dir=tmp_path, progress=False, callback=lambda a, m: a.global_step < 512)
        saved = [s["rms.count"].item() for s in cut.runner.pool.reward_scalers]
    finally:
        cut.close()
    assert saved == [pytest.approx(1e-4 + 4 * 64)] * 2  # 4 rollouts of 32 steps x 2 envs each
    resumed = resume(tmp_path, progress=False)
    try:
        counts = [s["rms.count"].item() for s in resumed.runner.pool.reward_scalers]
    finally:
        resumed.close()
    assert counts == [pytest.approx(1e-4 + 8 * 64)] * 2  # continued, not restarted at 0


@pytest.mark.ray
@pytest.mark.parametrize("inline_bytes", [pool_module.INLINE_BYTES, 0])  # weights in the request / in the object store
def test_workers_act_with_the_weights_published(ray_session, monkeypatch, inline_bytes):
    monkeypatch.setattr(pool_module, "INLINE_BYTES", inline_bytes)
    agent = PPO("CartPole-v1", seed=0, preset=False, **SMALL)
    pool = pool_module.WorkerPool(agent, 1, 2)
    try:
        published = copy.deepcopy(agent.policy)
        pool.publish(agent)
        with torch.no_grad():  # the learner moves on: requests still carry the weights published
            for param in agent.policy.parameters():
                param.mul_(0.5)
        (sample,) = pool.gather()
        with torch.no_grad():
            dist, value = published.dist_and_value(sample.data["obs"])
        torch.testing.assert_close(dist.log_prob(sample.data["action"]), sample.data["logp"])
        torch.testing.assert_close(value, sample.data["value"])
    finally:
        pool.close()


@pytest.mark.ray
def test_distributed_ppo_fills_the_same_buffer_and_learns(ray_session):
    agent = PPO("CartPole-v1", seed=0, workers=2, normalize_obs=True, num_envs=8)
    logged = []
    try:
        agent.learn(30_000, progress=False, callback=lambda a, m: logged.append(m))
        runner = agent.runner
        assert type(runner).__name__ == "DistributedOnPolicyRunner"
        buf = runner.buffer
        assert buf["obs"].shape == (32, 8, 4) and buf["logp"].shape == (32, 8) and buf["next_value"].shape == (32, 8)
        # every observation the workers saw entered the learner's normalizer once
        iterations = agent.global_step // (32 * 8)
        expected = 1e-4 + 8 * (1 + 32 * iterations)
        assert agent.obs_normalizer.rms.count.item() == pytest.approx(expected)
        assert all(m["diag/worker_restarts"] == 0 for m in logged)
        returns = [m["rollout/ep_return"] for m in logged if "rollout/ep_return" in m]
        assert np.mean(returns[-5:]) > 150, returns[-5:]
    finally:
        agent.close()


@pytest.mark.ray
@pytest.mark.parametrize("algo,env_id,config", [
    ("a2c", "CartPole-v1", {"num_envs": 4, "num_steps": 8}),
    ("trpo", "Pendulum-v1", {"num_envs": 2, "num_steps": 64, "batch_size": 64}),
])
def test_a2c_and_trpo_sample_through_workers(ray_session, algo, env_id, config):
    from policyopt.registry import get_algorithm

    agent = get_algorithm(algo)(env_id, seed=0, preset=False, workers=2, **config)
    logged = []
    try:
        agent.learn(4 * config["num_envs"] * config["num_steps"], progress=False, callback=lambda a, m: logged.append(m))
        assert type(agent.runner).__name__ == "DistributedOnPolicyRunner"
        assert agent.runner.buffer["obs"].shape[:2] == (config["num_steps"], config["num_envs"])
    finally:
        agent.close()
    assert len(logged) == 4 and agent.num_updates == 4
    assert all(np.isfinite(v) for m in logged for k, v in m.items() if k.startswith("loss/"))


@pytest.mark.ray
def test_workers_must_divide_num_envs(ray_session):
    agent = PPO("CartPole-v1", seed=0, preset=False, workers=3, **SMALL)
    with pytest.raises(ConfigError, match="multiple of workers"):
        agent.learn(128, progress=False)


@pytest.mark.ray
def test_training_survives_a_killed_worker(ray_session):
    """SIGKILL one of IMPALA's two actor processes (by pid) at 15k of 60k steps: the pool starts a
    replacement and training finishes with a mean evaluation return >= 150 over 10 episodes
    (the CartPole preset, without learning-rate decay or reward normalization for this short
    budget: with normalization, 60k steps gave 139-500 by seed and timing, one CI failure; without
    it, 16 runs over seeds 0-11, 4 of them beside a busy core, gave 284-500, see
    benchmarks/results/impala.md)."""
    from policyopt.algos.impala import IMPALA

    agent = IMPALA("CartPole-v1", seed=0, workers=2, anneal_lr=False, normalize_reward=False)
    killed, logged = [], []

    def kill_once(a, metrics):
        logged.append(metrics)
        if not killed and a.global_step >= 15_000:
            killed.append(a.runner.pool.pids()[0])
            os.kill(killed[0], signal.SIGKILL)

    try:
        with pytest.warns(UserWarning, match="rollout worker 0 died"):
            agent.learn(60_000, progress=False, callback=kill_once)
        assert agent.global_step >= 60_000
        assert agent.runner.pool.restarts == [1, 0]
        assert agent.runner.pool.pids()[0] != killed[0]
    finally:
        agent.close()
    assert logged[-1]["diag/worker_restarts"] == 1
    assert np.mean(agent.evaluate(10)) >= 150
