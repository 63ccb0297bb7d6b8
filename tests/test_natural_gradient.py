"""NPG, TRPO and ACKTR: they run on Discrete and Box envs (Gaussian and Beta), log their
diagnostics, save and load, learn, and work from the command line."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from policyopt.algos.acktr import ACKTR
from policyopt.algos.npg import NPG
from policyopt.algos.trpo import TRPO
from policyopt.cli import main

ALGOS = {"npg": NPG, "trpo": TRPO, "acktr": ACKTR}
SMALL = {"npg": dict(num_envs=2, num_steps=64, batch_size=64), "acktr": dict(num_envs=2, num_steps=16)}
SMALL["trpo"] = SMALL["npg"]
DIAGNOSTICS = {
    "npg": ("loss/policy", "loss/value", "diag/kl", "diag/improvement", "diag/step_size", "diag/grad_norm"),
    "trpo": ("loss/policy", "loss/value", "diag/kl", "diag/backtracks", "diag/improvement", "diag/accepted", "diag/step_size"),
    "acktr": ("loss/policy", "loss/value", "diag/kl", "diag/step_size", "diag/vf_step_size", "diag/quad_kl", "diag/lr"),
}


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("env_id,options", [
    ("CartPole-v1", {}),
    ("Pendulum-v1", {"normalize_obs": True, "normalize_reward": True}),
    ("Pendulum-v1", {"policy": "beta"}),
])
def test_smoke(algo, env_id, options):
    agent = ALGOS[algo](env_id, seed=0, preset=False, **SMALL[algo], **options)
    logged = []
    agent.learn(256, progress=False, callback=lambda a, m: logged.append(m))
    metrics = logged[-1]
    for key in (*DIAGNOSTICS[algo], "diag/explained_var", "diag/grad_norm"):
        assert key in metrics and np.isfinite(metrics[key]), key
    assert metrics["diag/kl"] >= 0.0
    raw_obs, _ = gym.make(env_id).reset(seed=0)
    action = agent.predict(raw_obs)
    assert agent.action_space.contains(int(action) if agent.discrete else action)


def test_acktr_shared_network_takes_one_joint_trust_region_step():
    agent = ACKTR("CartPole-v1", seed=0, preset=False, shared_network=True, **SMALL["acktr"])
    logged = []
    agent.learn(64, progress=False, callback=lambda a, m: logged.append(m))
    assert list(agent.optimizers) == ["kfac"] and "diag/vf_step_size" not in logged[-1]


@pytest.mark.parametrize("algo", ALGOS)
def test_save_load_round_trip(algo, tmp_path):
    agent = ALGOS[algo]("Pendulum-v1", seed=0, preset=False, **SMALL[algo]).learn(256, progress=False)
    path = agent.save(tmp_path / "model.pt")
    loaded = ALGOS[algo].load(path)
    obs = np.zeros((4, 3), dtype=np.float32)
    np.testing.assert_array_equal(agent.predict(obs), loaded.predict(obs))
    for key, opt in agent.optimizers.items():
        state, other = opt.state_dict(), loaded.optimizers[key].state_dict()
        assert state.keys() == other.keys()


@pytest.mark.parametrize("algo", ALGOS)
def test_same_seed_same_parameters(algo):
    a = ALGOS[algo]("CartPole-v1", seed=3, preset=False, **SMALL[algo]).learn(256, progress=False)
    b = ALGOS[algo]("CartPole-v1", seed=3, preset=False, **SMALL[algo]).learn(256, progress=False)
    for x, y in zip(a.nets.parameters(), b.nets.parameters()):
        assert torch.equal(x, y)


@pytest.mark.parametrize("algo", ALGOS)
def test_cli_train(algo, tmp_path, capsys):
    args = ["train", algo, "--env", "Pendulum-v1", "--steps", "256", "--no-progress", "--eval-episodes", "1"]
    for key, value in SMALL[algo].items():
        args += ["--set", f"{key}={value}"]
    assert main([*args, "--run-dir", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("mean_return: ")
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    for key in DIAGNOSTICS[algo]:
        assert key in header

QUICK = {
    "npg": dict(num_envs=8, num_steps=64, batch_size=128, n_critic_updates=3),
    "trpo": dict(num_envs=8, num_steps=64, batch_size=128, n_critic_updates=3),
    "acktr": dict(num_envs=8, num_steps=16, momentum=0.0),
}


@pytest.mark.parametrize("algo,policy", [("npg", "gaussian"), ("trpo", "beta"), ("acktr", "gaussian")])
def test_learns_to_hit_the_target(algo, policy):
    """Target: reward -||action - obs||^2, optimum 0; the initial policy (mode 0) scores about -0.17."""
    agent = ALGOS[algo]("policyopt/Target-v0", seed=0, preset=False, policy=policy, **QUICK[algo])
    agent.learn(8_000, progress=False)
    assert np.mean(agent.evaluate(50)) > -0.06


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("env_id,threshold", [("CartPole-v1", 475.0), ("Pendulum-v1", -400.0)])
def test_acceptance_within_the_preset_budget(algo, env_id, threshold, seed):
    agent = ALGOS[algo](env_id, seed=seed)
    agent.learn(progress=False)  # the preset's total_steps, the budget reported in the README
    assert np.mean(agent.evaluate(20)) >= threshold
