"""PPG: both phases run on Discrete and Box envs; the auxiliary phase distils values and keeps pi; resume; learning."""

import copy

import numpy as np
import pytest
import torch

from policyopt.algos.ppg import PPG, joint_loss
from policyopt.cli import main
from policyopt.config import ConfigError
from policyopt.loops import resume

SMALL = dict(num_envs=2, num_steps=32, batch_size=32, n_pi=2, aux_epochs=2, aux_batch_size=64)
AUX_KEYS = ("loss/aux_value_head", "loss/aux_clone_kl", "loss/aux_value_net")


@pytest.mark.parametrize("env_id,options", [
    ("CartPole-v1", {}),
    ("CartPole-v1", {"normalize_reward": True, "ent_coef": 0.01, "max_grad_norm": None}),
    ("Pendulum-v1", {"normalize_obs": True}),
    ("Pendulum-v1", {"policy": "beta", "policy_epochs": 2, "value_epochs": 2}),
])
def test_smoke_runs_both_phases(env_id, options):
    agent = PPG(env_id, seed=0, preset=False, **SMALL, **options)
    logged = []
    agent.learn(384, progress=False, callback=lambda a, m: logged.append(m))
    assert len(logged) == 6
    for i, metrics in enumerate(logged):
        for key in ("loss/policy", "loss/value", "loss/entropy", "diag/approx_kl", "diag/clip_frac", "diag/grad_norm"):
            assert np.isfinite(metrics[key]), key
        assert all(k in metrics for k in AUX_KEYS) == (i % 2 == 1)  # the auxiliary phase follows every n_pi = 2 updates
    assert logged[-1]["loss/aux_clone_kl"] >= 0.0
    action = agent.predict(agent.make_eval_env().reset(seed=0)[0])
    assert agent.action_space.contains(int(action) if agent.discrete else action)


def test_joint_loss():
    aux_value, v_target, kl = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 4.0]), torch.tensor([0.1, 0.3])
    joint, aux = joint_loss(aux_value, v_target, kl, 2.0)
    assert aux.item() == pytest.approx(0.5 * (1 + 4) / 2)
    assert joint.item() == pytest.approx(1.25 + 2.0 * 0.2)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_auxiliary_phase_fits_values_and_the_clone_term_keeps_the_policy(env_id):
    """Both value estimates move towards the targets; with beta_clone > 0 pi moves less than without."""
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(256, 3 if env_id == "Pendulum-v1" else 4, generator=g)
    v_target = obs.sum(1)
    kls = {}
    for beta_clone in (0.0, 1.0):
        agent = PPG(env_id, seed=1, preset=False, **{**SMALL, "aux_epochs": 20}, beta_clone=beta_clone, learning_rate=3e-3)
        before_policy = copy.deepcopy(agent.policy)
        with torch.no_grad():
            before_value = agent.value(obs)
        metrics = agent._auxiliary_phase(obs, v_target)
        with torch.no_grad():
            before_dist, before_aux = before_policy.dist_and_value(obs)
            after_dist, after_aux = agent.policy.dist_and_value(obs)
            after_value = agent.value(obs)
        for before, after in ((before_aux, after_aux), (before_value, after_value)):
            assert (after - v_target).pow(2).mean() < 0.5 * (before - v_target).pow(2).mean()
        kls[beta_clone] = before_dist.kl(after_dist).mean().item()
        assert metrics["loss/aux_clone_kl"] >= 0.0
    assert kls[1.0] < 0.5 * kls[0.0]


def test_bad_config_is_rejected():
    with pytest.raises(ConfigError, match="aux_batch_size"):
        PPG("CartPole-v1", num_envs=2, num_steps=8, batch_size=8, n_pi=2, aux_batch_size=64)
    with pytest.raises(ConfigError, match="n_pi must be >= 1"):
        PPG("CartPole-v1", n_pi=0)


def test_resume_in_the_middle_of_a_phase_matches_the_uninterrupted_run(tmp_path):
    common = dict(seed=3, preset=False, num_envs=2, num_steps=64, batch_size=64, n_pi=3, aux_epochs=1, aux_batch_size=128)
    full = PPG("CartPole-v1", **common).learn(1024, run_dir=tmp_path / "full", progress=False)
    PPG("CartPole-v1", **common).learn(
        1024, run_dir=tmp_path / "cut", progress=False, callback=lambda a, m: a.global_step < 640
    )  # stops after 5 updates: 2 rollouts of the second phase are kept
    resumed = resume(tmp_path / "cut", progress=False)
    for (name, a), (_, b) in zip(full.nets.state_dict().items(), resumed.nets.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_learns_cartpole_quickly():
    agent = PPG("CartPole-v1", seed=0, num_envs=8, num_steps=128)
    agent.learn(20_000, progress=False)
    assert np.mean(agent.evaluate(10)) >= 150


def test_cli_train_logs_diagnostics(tmp_path):
    args = ["train", "ppg", "--env", "CartPole-v1", "--steps", "512", "--no-progress", "--eval-episodes", "1",
            "--run-dir", str(tmp_path), "--set", "num_steps=32", "--set", "num_envs=2", "--set", "n_pi=2",
            "--set", "aux_batch_size=64"]
    assert main(args) == 0
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"loss/policy", "loss/value", "diag/approx_kl", *AUX_KEYS} <= set(header)


@pytest.mark.slow
@pytest.mark.parametrize("env_id,threshold", [("CartPole-v1", 475), ("Pendulum-v1", -400)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reaches_the_threshold_within_the_preset_budget(env_id, threshold, seed):
    agent = PPG(env_id, seed=seed)
    agent.learn(progress=False)
    assert np.mean(agent.evaluate(20)) >= threshold
