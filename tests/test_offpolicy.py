"""The off-policy loop: exact resume, the overestimation diagnostic, and the command line."""


import numpy as np
import pytest
import torch

from policyopt.algos.dqn import DQN
from policyopt.algos.sac import SAC
from policyopt.cli import main
from policyopt.evaluation import critic_bias, discounted_soft_returns
from policyopt.loops import MetricWindow, resume

from helpers import read_metrics

SMALL = dict(preset=False, learning_starts=64, batch_size=32, log_interval=100, hidden_sizes=(32, 32))


@pytest.mark.parametrize("cls,env_id", [(DQN, "CartPole-v1"), (SAC, "Pendulum-v1"), (SAC, "CartPole-v1")])
def test_resume_matches_uninterrupted_run(tmp_path, cls, env_id):
    common = dict(seed=3, bias_eval_interval=200, bias_eval_episodes=2, **SMALL)
    full = cls(env_id, **common).learn(600, run_dir=tmp_path / "full", progress=False)

    cls(env_id, **common).learn(600, run_dir=tmp_path / "cut", progress=False, callback=lambda a, m: a.global_step < 300)
    resumed = resume(tmp_path / "cut", progress=False)

    assert resumed.global_step == full.global_step == 600 and resumed.num_updates == full.num_updates
    for (name, a), (_, b) in zip(full.nets.state_dict().items(), resumed.nets.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    rows = read_metrics(tmp_path / "full")
    assert rows == read_metrics(tmp_path / "cut")
    assert [row["global_step"] for row in rows if row["diag/q_bias"]] == ["200", "400", "600"]


def test_metric_window_means_across_folds_and_checkpoints():
    window = MetricWindow()
    n = 3 * MetricWindow.FOLD + 5
    for i in range(n):
        window.add({"loss": torch.tensor(float(i)), "lr": 0.5, "grad": torch.tensor(1.0, requires_grad=True) * i})
        assert len(window.values["loss"]) <= MetricWindow.FOLD + 1
    resumed = MetricWindow()
    resumed.load_state_dict(window.state_dict())
    for w in (window, resumed):
        w.add({"loss": torch.tensor(float(n)), "lr": 0.5, "grad": torch.tensor(float(n))})
        assert w.pop() == pytest.approx({"loss": n / 2, "lr": 0.5, "grad": n / 2})
    assert window.pop() == {}


def test_soft_returns_match_brute_force():
    rng = np.random.default_rng(0)
    rewards, bonuses, gamma = rng.standard_normal(7), rng.standard_normal(7), 0.8
    returns = discounted_soft_returns(rewards, bonuses, gamma)
    for t in range(7):
        expected = rewards[t] + sum(gamma ** (k - t) * (rewards[k] + bonuses[k]) for k in range(t + 1, 7))
        assert returns[t] == pytest.approx(expected)
    np.testing.assert_allclose(discounted_soft_returns(rewards, np.zeros(7), 1.0), np.cumsum(rewards[::-1])[::-1])


def test_critic_bias_runs_past_the_time_limit():
    """Counter-v0 pays 1 per step and is truncated after 10 steps: the true value of every state is
    1 / (1 - gamma) = 10, which only episodes run past the limit can measure."""
    agent = DQN("policyopt/Counter-v0", seed=0, gamma=0.9, **SMALL)
    out = critic_bias(agent, 2, seed=5)
    assert 9.9 <= out["diag/q_true"] <= 10.0  # tails beyond the horizon weigh at most 1%
    with torch.no_grad():  # every state inside the original limit enters: obs t / 10, t = 0 .. 10
        expected = agent.q_net(torch.arange(11.0).unsqueeze(1) / 10).max(-1).values.mean().item()
    assert out["diag/q_estimate"] == pytest.approx(expected, rel=1e-5)
    assert out["diag/q_bias"] == pytest.approx(out["diag/q_estimate"] - out["diag/q_true"])


def test_soft_critic_bias_counts_the_entropy_bonus():
    """SAC's soft Q adds alpha * H(pi) for every step after the first: on Counter-v0 (reward 1,
    gamma 0.9, alpha 1) the soft value lies between 10 and 10 + 9 * log 2 (uniform policy)."""
    agent = SAC("policyopt/Counter-v0", seed=0, gamma=0.9, autotune=False, alpha=1.0, **SMALL)
    out = critic_bias(agent, 20, seed=0)
    assert 12.0 < out["diag/q_true"] < 10.0 + 9.0 * np.log(2) + 0.3
    assert {"diag/q_estimate", "diag/q1_estimate", "diag/q_bias"} <= set(out)


@pytest.mark.parametrize("algo,env_id", [("dqn", "CartPole-v1"), ("ddpg", "Pendulum-v1"), ("td3", "Pendulum-v1"), ("sac", "Pendulum-v1")])
def test_cli_train_eval_plot(tmp_path, algo, env_id, capsys):
    run = tmp_path / "run"
    args = ["train", algo, "--env", env_id, "--steps", "300", "--no-progress", "--run-dir", str(run), "--eval-episodes", "1"]
    sets = ["learning_starts=100", "batch_size=32", "hidden_sizes=32,32", "log_interval=100", "bias_eval_interval=300",
            "bias_eval_episodes=1"]
    assert main(args + [x for s in sets for x in ("--set", s)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("mean_return: ")
    assert main(["plot", str(run), "--metric", "diag/q_bias", "-o", str(tmp_path / "bias.png")]) == 0
    assert (tmp_path / "bias.png").stat().st_size > 1000
