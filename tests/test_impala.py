"""IMPALA: V-trace against the paper's sum form, the losses, the learner update, runs on Ray."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from policyopt import checkpoint
from policyopt.algos.impala import IMPALA, vtrace_policy_loss, vtrace_value_loss
from policyopt.cli import main
from policyopt.config import ConfigError
from policyopt.core.returns import vtrace
from policyopt.loops import OnPolicyRunner
from test_returns import random_rollout


def brute_force_vtrace(log_rhos, rewards, values, next_values, terminated, dones, gamma, rho_bar, c_bar):
    """IMPALA eq. 1 as written: vs_s = V(x_s) + sum_t gamma^(t-s) (prod_{i<t} c_i) rho_t delta_t, within s's episode."""
    rhos = np.exp(log_rhos.double().numpy())
    r, v, nv, term, done = (x.double().numpy() for x in (rewards, values, next_values, terminated, dones))
    T, N = r.shape
    vs = np.zeros((T, N))
    for n in range(N):
        for s in range(T):
            total, trace = 0.0, 1.0
            for t in range(s, T):
                delta = min(rho_bar, rhos[t, n]) * (r[t, n] + gamma * (1 - term[t, n]) * nv[t, n] - v[t, n])
                total += gamma ** (t - s) * trace * delta
                if done[t, n]:
                    break
                trace *= min(c_bar, rhos[t, n])
            vs[s, n] = v[s, n] + total
    return vs


@pytest.mark.parametrize("rho_bar,c_bar", [(1.0, 1.0), (2.0, 0.5), (float("inf"), float("inf"))])
def test_vtrace_matches_the_papers_sum_form_off_policy(rho_bar, c_bar):
    rollout = random_rollout(T=10, N=3, seed=11)
    log_rhos = torch.randn(10, 3, generator=torch.Generator().manual_seed(3))
    vs, pg_adv = vtrace(log_rhos, *rollout, 0.9, rho_bar, c_bar)
    np.testing.assert_allclose(vs.numpy(), brute_force_vtrace(log_rhos, *rollout, 0.9, rho_bar, c_bar), rtol=1e-5, atol=1e-5)
    rewards, values, next_values, terminated, dones = rollout
    vs_next = torch.where(dones, next_values, torch.cat([vs[1:], next_values[-1:]]))
    rho = log_rhos.exp().clamp(max=rho_bar)
    expected = rho * (rewards + 0.9 * (~terminated) * vs_next - values)
    np.testing.assert_allclose(pg_adv.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_vtrace_with_zero_traces_is_the_one_step_target():
    rewards, values, next_values, terminated, dones = rollout = random_rollout(seed=12)
    log_rhos = torch.full_like(rewards, -0.5)
    vs, _ = vtrace(log_rhos, *rollout, 0.9, rho_bar=1.0, c_bar=1e-12)
    td = rewards + 0.9 * (~terminated) * next_values - values
    torch.testing.assert_close(vs, values + np.exp(-0.5) * td, rtol=1e-5, atol=1e-5)


def test_losses_and_their_gradients_follow_the_paper():
    logp = torch.tensor([[-0.5, -1.0], [-2.0, -0.1]], requires_grad=True)
    pg_adv = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    loss = vtrace_policy_loss(logp, pg_adv)
    assert loss.item() == pytest.approx(-(-0.5 + 2.0 - 1.0 - 0.3) / 4)
    loss.backward()
    torch.testing.assert_close(logp.grad, -pg_adv / 4)  # -rho * (r + gamma vs' - V) * grad log pi, averaged
    value = torch.tensor([1.0, 2.0], requires_grad=True)
    vs = torch.tensor([0.0, 4.0])
    v_loss = vtrace_value_loss(value, vs)
    assert v_loss.item() == pytest.approx(0.5 * (1 + 4) / 2)
    v_loss.backward()
    torch.testing.assert_close(value.grad, -(vs - value.detach()) / 2)  # -(vs - V) * grad V, averaged


def test_config_rules():
    with pytest.raises(ConfigError, match="workers >= 1"):
        IMPALA("CartPole-v1", workers=0)
    with pytest.raises(ConfigError, match="rho_bar"):
        IMPALA("CartPole-v1", rho_bar=0.5, c_bar=1.0)


def test_trajectories_carry_the_real_next_observation():
    """next_obs[t] is s_{t+1}: the next obs inside an episode, the final obs where it ended (Counter: t/10)."""
    agent = IMPALA("policyopt/Counter-v0", seed=0, num_envs=2, num_steps=25)
    buf = OnPolicyRunner(agent, store_next_obs=True).collect()
    done = buf["done"].bool()
    inside = ~done[:-1]
    torch.testing.assert_close(buf["next_obs"][:-1][inside], buf["obs"][1:][inside])
    torch.testing.assert_close(buf["next_obs"][done], torch.ones(int(done.sum()), 1))  # truncated at t = 10
    assert (buf["obs"][1:][done[:-1]] == 0).all()  # while obs already holds the reset observation


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_update_on_on_policy_data_has_unit_importance_weights(env_id):
    agent = IMPALA(env_id, seed=0, num_envs=4, num_steps=16)
    traj = dict(OnPolicyRunner(agent, store_next_obs=True).collect().data)
    metrics = agent.update(traj)
    assert metrics["diag/rho_mean"] == pytest.approx(1.0)
    assert metrics["diag/rho_clip_frac"] == 0.0 and metrics["diag/ess"] == pytest.approx(1.0)
    assert all(np.isfinite(v) for v in metrics.values())
    again = agent.update(traj)  # the policy moved: the same data is now off-policy
    assert again["diag/rho_mean"] != pytest.approx(1.0, abs=1e-6)


@pytest.mark.ray
def test_smoke_on_ray(ray_session):
    agent = IMPALA("CartPole-v1", seed=0, workers=2, num_envs=2, num_steps=16, preset=False)
    logged = []
    try:
        agent.learn(2_000, progress=False, callback=lambda a, m: logged.append(m))
    finally:
        agent.close()
    for key in ("loss/policy", "loss/value", "loss/entropy", "diag/rho_mean", "diag/rho_clip_frac", "diag/policy_lag",
                "diag/worker_restarts", "diag/explained_var", "diag/grad_norm"):
        assert key in logged[-1], key
    assert agent.num_updates == len(logged) and agent.global_step >= 2_000
    assert max(m["diag/policy_lag"] for m in logged) >= 1  # two actors: one acts while the other's rollout is learned
    raw_obs, _ = gym.make("CartPole-v1").reset(seed=0)
    assert agent.action_space.contains(int(agent.predict(raw_obs)))


def live_processes():
    """``{pid: parent pid}`` of every process that is running (not a zombie), from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except OSError:  # it ended while we looked
            continue
        if state != "Z":
            parents[int(stat.parent.name)] = int(ppid)
    return parents


def descendants(pid):
    parents, found, frontier = live_processes(), set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


@pytest.mark.ray
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_cli_ctrl_c_stops_ray_cleanly_and_resume_continues(tmp_path, ray_session, capsys):
    """``policyopt train impala --workers 2``, then SIGINT to its process group, as Ctrl-C in a
    terminal sends it, in the middle of the run: exit code 130 after a checkpoint, no Ray process
    left behind; ``--resume`` continues the run, ``eval`` evaluates it."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "policyopt", "train", "impala", "--env", "CartPole-v1", "--workers", "2",
           "--steps", "1000000", "--run-dir", str(run), "--no-progress", "--eval-episodes", "0",
           "--set", "num_envs=2", "--set", "num_steps=16"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.csv").exists() or len((run / "metrics.csv").read_text().splitlines()) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.5)
        ray_processes = descendants(proc.pid)
        assert len(ray_processes) >= 4  # Ray's daemons and the two rollout workers
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGINT, err
    # Ray's daemons may still log a line of their own shutdown after ours
    assert any(re.fullmatch(r"error: interrupted by SIGINT; checkpoint saved to .*step_\d+\.pt", line) for line in err.splitlines()), err
    time.sleep(2)
    assert not ray_processes & set(live_processes()), "Ray processes outlived the interrupted run"
    stopped_at = checkpoint.load(checkpoint.CheckpointDir(run).latest())["agent"]["counters"]["global_step"]
    assert 0 < stopped_at < 1_000_000

    end = stopped_at + 320
    assert main(["train", "--resume", str(run), "--steps", str(end), "--no-progress", "--eval-episodes", "2"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("mean_return: ")
    assert checkpoint.load(checkpoint.CheckpointDir(run).latest())["agent"]["counters"]["global_step"] >= end
    with (run / "metrics.csv").open() as f:
        steps = [int(float(row["global_step"])) for row in csv.DictReader(f)]
    assert steps == sorted(set(steps)) and steps[-1] >= end  # continued from the checkpoint, did not start over
    info = json.loads((run / "config.json").read_text())
    assert info["algo"] == "impala" and info["config"]["workers"] == 2
    assert main(["eval", str(run), "--episodes", "2"]) == 0


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_impala_solves_cartpole_with_two_workers(seed, ray_session):
    """Acceptance: >= 475 with 2 actor processes, at the preset's budget."""
    agent = IMPALA("CartPole-v1", seed=seed, workers=2)
    try:
        agent.learn(progress=False)
    finally:
        agent.close()
    assert np.mean(agent.evaluate(20)) >= 475
