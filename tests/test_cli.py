"""The `policyopt` command: smoke runs of every subcommand (bad input: tests/test_reliability.py)."""

import json
import subprocess
import sys

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


