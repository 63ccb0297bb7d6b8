"""The `policyopt` command: smoke runs of every subcommand and the bad-input contract."""

import json
import subprocess
import sys

import pytest

from policyopt.cli import main

FAST = ["--steps", "512", "--no-progress", "--set", "num_steps=32", "--set", "num_envs=2", "--set", "batch_size=32"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "policyopt", *args], capture_output=True, text=True, timeout=300)


def test_list_prints_algorithm_names_first():
    out = run_cli("list")
    assert out.returncode == 0
    assert "ppo" in [line.split()[0] for line in out.stdout.splitlines()]


def test_list_algo_prints_default_config(capsys):
    assert main(["list", "ppo"]) == 0
    out = capsys.readouterr().out
    assert "clip_coef: 0.2" in out and "CartPole-v1" in out


def test_train_eval_plot_resume(tmp_path):
    run = tmp_path / "run"
    out = run_cli("train", "ppo", "--env", "CartPole-v1", "--run-dir", str(run), "--eval-episodes", "2", *FAST)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1].startswith("mean_return: ")
    for name in ("config.json", "metrics.csv", "model.pt", "eval.json"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert list((run / "checkpoints").glob("step_*.pt"))
    info = json.loads((run / "config.json").read_text())
    assert info["algo"] == "ppo" and info["config"]["num_steps"] == 32

    assert main(["eval", str(run), "--episodes", "3"]) == 0
    assert main(["plot", str(run), str(run), "-o", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 1000

    assert main(["train", "--resume", str(run), "--steps", "1024", "--no-progress", "--eval-episodes", "0"]) == 0
    from policyopt import checkpoint

    latest = checkpoint.CheckpointDir(run).latest()
    assert checkpoint.load(latest)["agent"]["counters"]["global_step"] == 1024


def test_eval_output_ends_with_mean_return(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--eval-episodes", "0", *FAST]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("mean_return: ") and float(lines[-1].split(":")[1]) > 0
    assert any(line.startswith("std_return: ") for line in lines)


@pytest.mark.parametrize("args,message", [
    (["train", "ppo", "--env", "CartPol-v1"], "did you mean CartPole-v1"),
    (["train", "ppx"], "unknown algorithm 'ppx'; did you mean ppo"),
    (["train", "ppo", "--set", "gama=0.9"], "unknown config key 'gama'"),
    (["train", "ppo", "--set", "gamma=1.5"], "gamma must be in (0, 1]"),
    (["train", "ppo", "--set", "clip_coef=0"], "clip_coef must be > 0"),
    (["train", "ppo", "--steps", "-5"], "--steps must be > 0"),
    (["train", "ppo", "--set", "num_envs=two"], "num_envs expects an integer"),
    (["train", "ppo", "--config", "/nonexistent.yaml"], "does not exist"),
    (["eval", "/nonexistent-run"], "does not exist"),
    (["bogus"], "invalid choice"),
])
def test_bad_input_is_one_error_line_and_exit_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
