"""A2C: every option runs on Discrete and Box envs; n-step targets by hand; it learns."""

import numpy as np
import pytest
import torch

from policyopt.algos.a2c import A2C
from policyopt.cli import main
from policyopt.core.losses import policy_gradient_loss
from policyopt.loops import make_runner

SMALL = dict(num_envs=2, num_steps=8)


@pytest.mark.parametrize("env_id,options", [
    ("CartPole-v1", {}),
    ("CartPole-v1", {"advantage": "gae", "optimizer": "adam", "norm_adv": True, "shared_network": True}),
    ("CartPole-v1", {"anneal_lr": True, "ent_coef": 0.01, "max_grad_norm": None}),
    ("Pendulum-v1", {"normalize_obs": True, "normalize_reward": True}),
    ("Pendulum-v1", {"policy": "beta", "advantage": "gae"}),
    ("Pendulum-v1", {"policy": "gsde", "log_std_init": -2.0, "normalize_obs": True}),
])
def test_smoke(env_id, options):
    agent = A2C(env_id, seed=0, preset=False, **SMALL, **options)
    logged = []
    agent.learn(400, progress=False, callback=lambda a, m: logged.append(m))
    assert len(logged) == 400 // 16
    metrics = logged[-1]
    assert "diag/explained_var" in metrics and "diag/lr" in metrics
    for key in ("loss/policy", "loss/value", "loss/entropy", "diag/grad_norm"):
        assert np.isfinite(metrics[key]), key
    if options.get("anneal_lr"):
        assert logged[-1]["diag/lr"] < logged[0]["diag/lr"]
    if options.get("policy") == "gsde":  # the runner drew one exploration matrix per env
        assert agent.policy.actor_head.weights.shape == (SMALL["num_envs"], 64, 1)
    action = agent.predict(agent.make_eval_env().reset(seed=0)[0])
    assert agent.action_space.contains(int(action) if agent.discrete else action)


def test_nstep_targets_by_hand_and_gae_lambda_one_agrees():
    """On Counter (reward 1 each step, time limit 10) the n-step target of step t is
    sum_{k=t}^{T-1} gamma^(k-t) + gamma^(T-t) V(s_T), cut at the time limit where it bootstraps from V(final obs)."""
    agent = A2C("policyopt/Counter-v0", seed=0, preset=False, num_envs=1, num_steps=12, gamma=0.9)
    runner = make_runner(agent)
    runner.collect()
    buf = runner.buffer
    adv, v_target = agent.advantages(buf)
    with torch.no_grad():
        v = lambda x: agent.value(torch.tensor([[x]])).item()  # noqa: E731
    # steps 0..9 are the first episode (truncated at t=9, final obs 1.0); steps 10, 11 the next (rollout end obs 0.2)
    expected = [sum(0.9**j for j in range(10 - t)) + 0.9 ** (10 - t) * v(1.0) for t in range(10)]
    expected += [1 + 0.9 + 0.81 * v(0.2), 1 + 0.9 * v(0.2)]
    torch.testing.assert_close(v_target[:, 0], torch.tensor(expected), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(adv, v_target - buf["value"])
    gae_agent = A2C("policyopt/Counter-v0", seed=0, preset=False, num_envs=1, num_steps=12, gamma=0.9,
                    advantage="gae", gae_lambda=1.0)
    gae_adv, gae_target = gae_agent.advantages(buf)
    torch.testing.assert_close(gae_target, v_target)


def test_policy_gradient_loss():
    logp = torch.tensor([-0.5, -1.0, -2.0], requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5])
    loss = policy_gradient_loss(logp, adv)
    assert loss.item() == pytest.approx(-(-0.5 + 2.0 - 1.0) / 3)
    loss.backward()
    torch.testing.assert_close(logp.grad, -adv / 3)


def test_learns_cartpole_quickly():
    agent = A2C("CartPole-v1", seed=0, num_envs=8, num_steps=5)
    agent.learn(10_000, progress=False)
    assert np.mean(agent.evaluate(10)) >= 150


def test_same_seed_same_parameters():
    a = A2C("Pendulum-v1", seed=5, preset=False, **SMALL).learn(160, progress=False)
    b = A2C("Pendulum-v1", seed=5, preset=False, **SMALL).learn(160, progress=False)
    for x, y in zip(a.nets.parameters(), b.nets.parameters(), strict=True):
        assert torch.equal(x, y)


def test_cli_train_logs_diagnostics(tmp_path):
    args = ["train", "a2c", "--env", "Pendulum-v1", "--steps", "400", "--no-progress", "--eval-episodes", "1",
            "--run-dir", str(tmp_path), "--set", "policy=beta"]
    assert main(args) == 0
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"loss/policy", "loss/value", "diag/explained_var", "diag/grad_norm"} <= set(header)


@pytest.mark.slow
@pytest.mark.parametrize("env_id,threshold", [("CartPole-v1", 475), ("Pendulum-v1", -400)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reaches_the_threshold_within_the_preset_budget(env_id, threshold, seed):
    agent = A2C(env_id, seed=seed)
    agent.learn(progress=False)
    assert np.mean(agent.evaluate(20)) >= threshold


def test_a_rollout_acts_in_inference_mode_and_hands_the_update_ordinary_tensors():
    """The steps on host envs run under ``torch.inference_mode`` (no autograd dispatch); their
    tensors are stacked into the buffer after the loop, as ordinary tensors that A2C's autograd
    update can save for backward."""
    agent = A2C("CartPole-v1", seed=0, preset=False, **SMALL)
    runner = make_runner(agent)
    modes = []
    for name in ("act", "sample"):
        method = getattr(agent, name)
        setattr(agent, name, lambda *args, _method=method: modes.append(torch.is_inference_mode_enabled()) or _method(*args))
    runner.collect()
    assert len(modes) == SMALL["num_steps"] and all(modes)
    assert not any(t.is_inference() for t in runner.buffer.data.values())
    before = [p.detach().clone() for p in agent.policy.parameters()]
    agent.update(runner.buffer)
    assert any(not torch.equal(a, p) for a, p in zip(before, agent.policy.parameters()))
