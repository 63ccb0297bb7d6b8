"""Trustworthy training runs: interrupted runs resume bit for bit, bad input is rejected in one
line before training starts, and non-finite values stop training with the last good checkpoint
kept. Everything goes through the real command line, in subprocesses where signals are involved.
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyopt import checkpoint
from policyopt.algos.ppo import PPOConfig
from policyopt.algos.sac import SACConfig
from policyopt.cli import main
from policyopt.config import RANGES, ConfigError, build_config
from policyopt.loops import _finite
from policyopt.registry import get_algorithm

from helpers import read_metrics

POLICYOPT = [sys.executable, "-m", "policyopt"]


def train_args(algo: str, env: str, steps: int, overrides: list[str], run_dir: Path) -> list[str]:
    sets = [arg for kv in overrides for arg in ("--set", kv)]
    return ["train", algo, "--env", env, "--steps", str(steps), "--seed", "1", "--run-dir", str(run_dir),
            "--no-progress", "--eval-episodes", "0", "--checkpoint-every", "100000", *sets]


def interrupt_once_logging(args: list[str], run_dir: Path, signum: int) -> subprocess.CompletedProcess:
    """Start ``policyopt`` with ``args``; once it has logged a row of metrics, send ``signum``."""
    proc = subprocess.Popen(POLICYOPT + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.csv"
    while proc.poll() is None and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.02)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


RESUME_CASES = {
    "ppo": ("CartPole-v1", 3072, ["num_envs=2", "num_steps=64", "batch_size=64", "update_epochs=2"], signal.SIGINT),
    "sac": ("Pendulum-v1", 600, ["learning_starts=100", "batch_size=32", "hidden_sizes=32,32", "log_interval=50"],
            signal.SIGTERM),
    "dqn": ("CartPole-v1", 2000, ["learning_starts=500", "batch_size=32", "hidden_sizes=32,32", "log_interval=100",
                                  "target_network_frequency=50"], signal.SIGINT),
}


@pytest.mark.parametrize("algo", list(RESUME_CASES))
def test_signal_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, algo):
    env, steps, overrides, signum = RESUME_CASES[algo]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert subprocess.run(POLICYOPT + train_args(algo, env, steps, overrides, full), capture_output=True).returncode == 0

    stopped = interrupt_once_logging(train_args(algo, env, steps, overrides, cut), cut, signum)
    assert stopped.returncode == 128 + signum, stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1].startswith("error: interrupted"), stopped.stderr
    saved = checkpoint.CheckpointDir(cut).latest()
    assert saved is not None and checkpoint.load(saved)["agent"]["counters"]["global_step"] < steps

    resumed = subprocess.run(POLICYOPT + ["train", "--resume", str(cut), "--no-progress", "--eval-episodes", "0"],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    cls = get_algorithm(algo)
    a, b = cls.load(full / "model.pt"), cls.load(cut / "model.pt")
    assert a.global_step == b.global_step >= steps
    for (name, x), (_, y) in zip(a.nets.state_dict().items(), b.nets.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert read_metrics(full) == read_metrics(cut)


def run_cli(args: list[str], capsys) -> tuple[int, list[str]]:
    """The exit code and the ``error:`` lines of stderr (training logs go to stderr too)."""
    code = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("error")]


@pytest.mark.parametrize("args,message", [
    (["train", "dqn", "--env", "Pendulum-v1"], "dqn needs a Discrete action space"),
    (["train", "ddpg", "--env", "CartPole-v1"], "ddpg needs a Box action space"),
    (["train", "td3", "--env", "CartPole-v1"], "td3 needs a Box action space"),
    (["train", "ppo", "--env", "policyopt/DictBandit-v0"], "flatten_obs=true"),
    (["train", "ppo", "--set", "batch_size=100000"], "batch_size (100000) must be <= num_envs * num_steps"),
    (["train", "sac", "--env", "Pendulum-v1", "--set", "buffer_size=100"], "batch_size (256) must be <= buffer_size (100)"),
    (["train", "sac", "--env", "Pendulum-v1", "--set", "tau=2"], "tau must be"),
    (["train", "ppo", "--set", "learning_rate=-1"], "learning_rate must be > 0"),
    (["train", "ppo", "--set", "gamma=0"], "gamma must be in (0, 1]"),
    (["train", "ppo", "--set", "objective=clipp"], "did you mean clip"),
    (["train", "ppo", "--set", "ent_coeff=0.1"], "did you mean ent_coef"),
    (["train", "ppo", "--set", "gamma"], "--set expects key=value"),
    (["train", "ppo", "--steps", "0"], "--steps must be > 0"),
    (["train", "ppo", "--env", "cartpole"], "unknown environment 'cartpole'"),
    (["train", "tpro"], "did you mean trpo"),
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
def test_bad_input_is_rejected_in_one_line_before_training(tmp_path, args, message, capsys):
    """Exit code 2 and stderr is exactly one ``error:`` line; a rejected ``train`` writes nothing."""
    run = tmp_path / "run"
    if args[0] == "train":
        args = [*args, "--run-dir", str(run)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    assert not run.exists()  # nothing was trained or written


def test_dict_observations_train_when_flattening_is_asked_for(tmp_path, capsys):
    args = ["train", "ppo", "--env", "policyopt/DictBandit-v0", "--steps", "256", "--set", "flatten_obs=true",
            "--set", "num_envs=2", "--set", "num_steps=64", "--no-progress", "--run-dir", str(tmp_path / "run")]
    assert main(args) == 0


def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        flipped = bytearray(data)
        flipped[-10] ^= 0xFF
        path.write_bytes(bytes(flipped))


@pytest.mark.parametrize("how,message", [("truncated", "is truncated"), ("flipped", "checksum mismatch")])
def test_corrupt_checkpoints_are_named_in_one_line(tmp_path, capsys, how, message):
    run = tmp_path / "run"
    assert main(train_args("ppo", "CartPole-v1", 256, ["num_envs=2", "num_steps=64", "batch_size=64"], run)) == 0
    capsys.readouterr()
    corrupt(run / "model.pt", how)
    code, err = run_cli(["eval", str(run), "--episodes", "1"], capsys)
    assert code == 2 and len(err) == 1 and str(run / "model.pt") in err[0] and message in err[0], err
    for saved in (run / "checkpoints").glob("*.pt"):
        corrupt(saved, how)
    code, err = run_cli(["train", "--resume", str(run)], capsys)
    assert code == 2 and len(err) == 1 and "checkpoints" in err[0] and message in err[0], err


@pytest.mark.parametrize("algo,env,message", [
    ("ppo", "policyopt/NaNObservation-v0", "non-finite observation from the env at step"),
    ("ppo", "policyopt/NaNReward-v0", "non-finite reward from the env at step"),
    ("ppo", "policyopt/HugeReward-v0", "non-finite loss/"),
    ("sac", "policyopt/HugeReward-v0", "non-finite loss/"),
])
def test_non_finite_values_stop_training_and_keep_the_last_good_checkpoint(tmp_path, capsys, algo, env, message):
    # Each env turns faulty after 300 of its own steps: global step ~600 with 2 envs.
    run = tmp_path / "run"
    small = ["num_envs=2", "num_steps=32", "batch_size=32"] if algo == "ppo" else [
        "num_envs=2", "learning_starts=64", "batch_size=32", "log_interval=64", "hidden_sizes=32,32"]
    args = train_args(algo, env, 2000, small, run)
    args[args.index("--checkpoint-every") + 1] = "128"
    code, err = run_cli(args, capsys)
    assert code == 1 and len(err) == 1 and message in err[0], err
    step = int(err[0].split(" at step ")[1].split(";")[0].split()[0])
    assert 500 <= step < 2000
    latest = checkpoint.CheckpointDir(run).latest()
    state = checkpoint.load(latest)  # intact: header, checksum and payload all check out
    assert state["agent"]["counters"]["global_step"] < step
    assert all(torch.isfinite(t).all() for t in state["agent"]["nets"].values() if t.is_floating_point())
    assert not (run / "model.pt").exists()  # no final model from a run that failed


@pytest.mark.parametrize("values,finite", [
    ([0.5, -2.0], True),
    ([3e38, 3e38], True),  # finite values whose float32 sum overflows: checked element by element
    ([1.0, float("nan")], False),
    ([float("inf"), 1.0], False),
    ([float("inf"), float("-inf")], False),
])
def test_the_collectors_finiteness_check_is_isfinite_all(values, finite):
    assert _finite(np.array(values, dtype=np.float32).reshape(1, -1)) is finite


CONFIG_VALUES = st.one_of(
    st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.text(max_size=8), st.none(), st.lists(st.integers(-5, 300), max_size=3),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config_cls=st.sampled_from([PPOConfig, SACConfig]), overrides=st.dictionaries(
    st.sampled_from(["gamma", "clip_coef", "num_envs", "num_steps", "batch_size", "learning_rate", "hidden_sizes",
                     "buffer_size", "tau", "objective", "anneal_lr", "max_grad_norm", "ent_coef", "target_kl", "gamme"]),
    CONFIG_VALUES, max_size=4))
def test_the_validator_either_accepts_a_valid_config_or_names_the_problem_in_one_line(config_cls, overrides):
    try:
        config = build_config(config_cls, overrides)
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message
        assert any(key in message for key in overrides) or "must be <=" in message
        return
    for key in overrides:  # accepted: every value is finite and in its documented range
        value = getattr(config, key)
        rule = RANGES.get(key)
        assert not isinstance(value, float) or math.isfinite(value), (key, value)
        assert rule is None or value is None or rule[1](value), (key, value)
    assert config.check() == []
