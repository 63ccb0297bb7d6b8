"""`policyopt` with the tabular algorithms: run directories, evaluation, resume, bad input."""

import json

import numpy as np
import pytest

from policyopt import registry
from policyopt.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def last_line(capsys):
    return capsys.readouterr().out.strip().splitlines()[-1]


def check_run_dir(run, algo):
    for name in ("config.json", "metrics.csv", "model.pt", "eval.json", "values.json", "values.png"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "values.png").read_bytes()[:8] == PNG_MAGIC and (run / "values.png").stat().st_size > 5000
    info = json.loads((run / "config.json").read_text())
    assert info["algo"] == algo and info["env_id"] == "FrozenLake-v1"
    saved = json.loads((run / "values.json").read_text())
    assert len(saved["values"]) == len(saved["policy"]) == 16


def test_list_shows_tabular_algorithms_and_their_defaults(capsys):
    assert main(["list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    for name in ("value-iteration", "policy-iteration", "mc-control", "sarsa", "expected-sarsa", "q-learning"):
        assert name in names
    assert names.index("value-iteration") < names.index("ppo")
    assert main(["list", "value-iteration"]) == 0
    assert "theta: 1e-10" in capsys.readouterr().out
    assert main(["list", "sarsa"]) == 0
    out = capsys.readouterr().out
    assert "start_e: 0.1" in out and "CliffWalking-v1" in out


def test_train_value_iteration_writes_a_run_directory_and_evaluates(tmp_path, capsys):
    run = tmp_path / "vi"
    assert main(["train", "value-iteration", "--env", "FrozenLake-v1", "--run-dir", str(run), "--no-progress"]) == 0
    assert last_line(capsys).startswith("mean_return: ")
    check_run_dir(run, "value-iteration")
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "diag/delta" in header and "diag/policy_changes" in header
    values = json.loads((run / "values.json").read_text())["values"]
    assert values[0] == pytest.approx(0.542, abs=1e-3)  # V*(start) of slippery FrozenLake 4x4, gamma 0.99

    assert main(["eval", str(run), "--episodes", "200"]) == 0
    line = last_line(capsys)
    assert line.startswith("mean_return: ") and float(line.split(":")[1]) > 0.6  # optimum 0.74


def test_train_q_learning_writes_a_learning_curve_and_resumes(tmp_path, capsys):
    run = tmp_path / "ql"
    args = ["train", "q-learning", "--env", "FrozenLake-v1", "--run-dir", str(run), "--steps", "3000", "--no-progress"]
    assert main([*args, "--set", "log_interval=500", "--eval-episodes", "5"]) == 0
    assert last_line(capsys).startswith("mean_return: ")
    check_run_dir(run, "q-learning")
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert "rollout/ep_return" in header and "diag/epsilon" in header
    assert list((run / "checkpoints").glob("step_*.pt"))

    assert main(["eval", str(run), "--episodes", "3"]) == 0
    assert last_line(capsys).startswith("mean_return: ")
    assert main(["plot", str(run), "-o", str(tmp_path / "curve.png")]) == 0
    assert main(["train", "--resume", str(run), "--steps", "4000", "--no-progress", "--eval-episodes", "0"]) == 0
    from policyopt.cli import load_run

    assert load_run(run).global_step == 4000


def test_policy_iteration_runs_from_python_with_modified_evaluation():
    cls = registry.get_algorithm("policy-iteration")
    exact = cls("FrozenLake-v1").learn(progress=False)
    one_sweep = cls("FrozenLake-v1", eval_sweeps=1).learn(progress=False)
    vi = registry.get_algorithm("value-iteration")("FrozenLake-v1").learn(progress=False)
    assert exact.converged and one_sweep.converged
    np.testing.assert_allclose(one_sweep.values, vi.values, atol=1e-9)
    np.testing.assert_allclose(exact.values, vi.values, atol=1e-8)
    assert exact.num_updates < 10 < vi.num_updates


@pytest.mark.parametrize("args,message", [
    (["train", "value-iteration", "--env", "CartPole-v1"], "needs Discrete observation and action spaces"),
    (["train", "sarsa", "--env", "FrozenLake-v1", "--num-envs", "2"], "unknown config key 'num_envs'"),
    (["train", "q-learning", "--set", "start_e=1.5"], "start_e must be in [0, 1]"),
    (["train", "q-learning", "--set", "learning_rate=2"], "learning_rate (the step size alpha) must be <= 1"),
    (["train", "value-iteration", "--set", "theta=0"], "theta must be > 0"),
    (["train", "policy-iteration", "--set", "eval_sweeps=0"], "eval_sweeps must be >= 1"),
    (["train", "policy-iteration", "--env", "CliffWalking-v1", "--set", "gamma=1"], "use gamma < 1"),
])
def test_bad_input_is_one_error_line_and_exit_2(args, message, capsys, tmp_path):
    assert main([*args, "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err


def test_value_iteration_on_user_given_arrays_through_the_api(tmp_path):
    """A FiniteMDP from arrays, run as an env (MDPEnv): the agent API, run directory and picture."""
    from policyopt import FiniteMDP, MDPEnv, ValueIteration

    rows, cols = 3, 4
    P = np.zeros((rows * cols, 2, rows * cols))  # actions: right, down; the grid's far edges bounce
    for s in range(rows * cols):
        r, c = divmod(s, cols)
        P[s, 0, r * cols + min(c + 1, cols - 1)] = 1.0
        P[s, 1, min(r + 1, rows - 1) * cols + c] = 1.0
    mdp = FiniteMDP.from_arrays(P, np.full((rows * cols, 2), -1.0), 1.0, terminal=[rows * cols - 1], initial=np.eye(rows * cols)[0])

    def make_env():
        return MDPEnv(mdp, grid_shape=(rows, cols), moves=((0, 1), (1, 0)))

    agent = ValueIteration(make_env, gamma=1.0).learn(run_dir=tmp_path / "run", progress=False)
    distance = [(rows - 1 - s // cols) + (cols - 1 - s % cols) for s in range(rows * cols)]
    np.testing.assert_allclose(agent.values, -np.array(distance, dtype=float))
    assert agent.evaluate(1) == [-5.0]
    assert (tmp_path / "run" / "values.png").read_bytes()[:8] == PNG_MAGIC
    loaded = ValueIteration.load(tmp_path / "run" / "model.pt", env=make_env)
    np.testing.assert_array_equal(loaded.policy, agent.policy)
