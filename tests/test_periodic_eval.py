"""learn(eval_every=...): periodic greedy evaluation that keeps the best policy."""

import numpy as np
import pytest
import torch

from policyopt.algos.dqn import DQN
from policyopt.algos.ppo import PPO
from policyopt.algos.tabular.agents import QLearning
from policyopt.cli import main
from policyopt.config import ConfigError
from policyopt.loops import PeriodicEval, resume

from helpers import read_metrics

SMALL_DQN = dict(
    preset=False, learning_rate=1e-3, learning_starts=200, train_frequency=4, gradient_steps=1, batch_size=32,
    hidden_sizes=(32, 32), target_network_frequency=50,
)
SMALL_PPO = dict(num_envs=2, num_steps=64, batch_size=32, update_epochs=2)


def eval_rows(run_dir):
    return [(int(r["global_step"]), float(r["eval/return"])) for r in read_metrics(run_dir) if r.get("eval/return")]


def test_best_model_is_the_best_evaluated_policy(tmp_path):
    agent = DQN("CartPole-v1", seed=1, **SMALL_DQN)
    agent.learn(3500, run_dir=tmp_path, progress=False, eval_every=1000, eval_episodes=3)

    rows = eval_rows(tmp_path)
    assert [step for step, _ in rows] == [1000, 2000, 3000, 3500]  # every 1000 steps, and at the end
    returns = [ret for _, ret in rows]
    assert len(set(returns)) > 1, "a test of choosing the best needs evaluations that differ"
    best_step, best_return = rows[len(returns) - 1 - int(np.argmax(returns[::-1]))]  # the latest of equal means wins
    assert (agent.best["step"], agent.best["return"]) == (best_step, best_return)

    # the kept policy is the one evaluated then: it reproduces that evaluation, in memory and on disk
    selection_seed = agent.seed + PeriodicEval.SEED_OFFSET
    for best in (agent.best_model(), DQN.load(tmp_path / "best_model.pt")):
        assert best.global_step == best_step
        assert np.mean(best.evaluate(3, seed=selection_seed)) == best_return
    if best_step != 3500:
        final = agent.q_net.state_dict()
        assert any(not torch.equal(final[k], v) for k, v in agent.best_model().q_net.state_dict().items())


@pytest.mark.parametrize("cls,env_id,small", [(PPO, "CartPole-v1", SMALL_PPO), (DQN, "CartPole-v1", SMALL_DQN)])
def test_evaluating_does_not_change_training(cls, env_id, small):
    plain = cls(env_id, seed=0, **small).learn(2048, progress=False)
    evaluated = cls(env_id, seed=0, **small).learn(2048, progress=False, eval_every=500, eval_episodes=2)
    assert evaluated.best is not None and plain.best is None
    for (name, a), (_, b) in zip(plain.nets.state_dict().items(), evaluated.nets.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_resume_continues_evaluating_and_keeps_the_best(tmp_path):
    evaluation = dict(eval_every=256, eval_episodes=2)
    full = PPO("CartPole-v1", seed=3, **SMALL_PPO).learn(1024, run_dir=tmp_path / "full", progress=False, **evaluation)
    PPO("CartPole-v1", seed=3, **SMALL_PPO).learn(
        1024, run_dir=tmp_path / "cut", progress=False, callback=lambda a, m: a.global_step < 512, **evaluation
    )
    assert [step for step, _ in eval_rows(tmp_path / "cut")] == [256, 512]  # a callback's stop is not the end
    resumed = resume(tmp_path / "cut", progress=False)

    assert eval_rows(tmp_path / "cut") == eval_rows(tmp_path / "full")
    assert [step for step, _ in eval_rows(tmp_path / "full")] == [256, 512, 768, 1024]
    assert (resumed.best["step"], resumed.best["return"]) == (full.best["step"], full.best["return"])


def test_bad_eval_settings_are_rejected():
    with pytest.raises(ConfigError, match="eval_every and eval_episodes"):
        PPO("CartPole-v1", **SMALL_PPO).learn(256, progress=False, eval_every=128, eval_episodes=0)
    with pytest.raises(ConfigError, match="eval_every and eval_episodes"):
        PPO("CartPole-v1", **SMALL_PPO).learn(256, progress=False, eval_every=-1)


def test_cli_eval_every_and_eval_best(tmp_path, capsys):
    run = tmp_path / "run"
    fast = ["--no-progress", "--eval-episodes", "0", "--set", "num_steps=32", "--set", "num_envs=2", "--set", "batch_size=32"]
    assert main(["train", "ppo", "--steps", "512", "--run-dir", str(run), "--eval-every", "256", *fast]) == 0
    assert "best model: step " in capsys.readouterr().out
    assert main(["eval", str(run), "--best", "--episodes", "2"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("mean_return: ")

    assert main(["train", "--resume", str(run), "--eval-every", "128"]) == 2
    assert "--eval-every cannot be set with --resume" in capsys.readouterr().err
    (run / "best_model.pt").unlink()
    assert main(["eval", str(run), "--best"]) == 2
    assert "no best_model.pt" in capsys.readouterr().err
    assert main(["train", "value-iteration", "--env", "FrozenLake-v1", "--eval-every", "100", "--no-progress"]) == 2
    assert "value-iteration solves the env's model" in capsys.readouterr().err


def test_tabular_model_free_agents_keep_their_best_policy(tmp_path, capsys):
    """Q-learning with periodic evaluation: the same tables as without it, and the best greedy
    policy kept, in memory and in best_model.pt (also through the CLI)."""
    plain = QLearning("FrozenLake-v1", seed=0).learn(6000, progress=False)
    agent = QLearning("FrozenLake-v1", seed=0).learn(6000, run_dir=tmp_path / "lib", progress=False, eval_every=1000, eval_episodes=20)
    assert np.array_equal(plain.q, agent.q)

    rows = eval_rows(tmp_path / "lib")
    assert [step for step, _ in rows] == [1000, 2000, 3000, 4000, 5000, 6000]
    returns = [ret for _, ret in rows]
    assert len(set(returns)) > 1, "a test of choosing the best needs evaluations that differ"
    assert agent.best["return"] == max(returns)
    for best in (agent.best_model(), QLearning.load(tmp_path / "lib" / "best_model.pt")):
        assert best.global_step == agent.best["step"]
        assert np.mean(best.evaluate(20, seed=agent.seed + PeriodicEval.SEED_OFFSET)) == agent.best["return"]

    run = tmp_path / "cli"
    args = ["train", "q-learning", "--env", "FrozenLake-v1", "--steps", "2000", "--eval-every", "1000"]
    assert main([*args, "--run-dir", str(run), "--no-progress", "--eval-episodes", "0"]) == 0
    assert "best model: step " in capsys.readouterr().out
    assert main(["eval", str(run), "--best", "--episodes", "2"]) == 0
