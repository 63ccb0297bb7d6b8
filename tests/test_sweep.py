"""`policyopt sweep`: the sweep file, grid and random points, and a small sweep on Ray."""

import csv

import pytest
import yaml

from policyopt.algos.ppo import PPOConfig
from policyopt.cli import main
from policyopt.config import ConfigError
from policyopt.sweep import Sweep, grid_points, load_sweep, random_points

BASE = {"algo": "ppo", "env": "CartPole-v1", "steps": 1024, "seeds": 2}


def write(tmp_path, spec, name="sweep.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def test_grid_points_are_every_combination_in_file_order():
    points = grid_points({"learning_rate": [1e-3, 3e-4], "num_envs": [2, 4, 8]})
    assert len(points) == 6
    assert points[0] == {"learning_rate": 1e-3, "num_envs": 2} and points[-1] == {"learning_rate": 3e-4, "num_envs": 8}


def test_random_points_are_seeded_and_typed_by_the_config_fields():
    space = {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}, "update_epochs": {"low": 1, "high": 10},
             "activation": {"choices": ["tanh", "relu"]}}
    sweep = Sweep(name="r", algo="ppo", env="CartPole-v1", seeds=[0], random=space, trials=5, sampler_seed=3)
    first = random_points(sweep, PPOConfig)
    assert first == random_points(sweep, PPOConfig)
    for params in first:
        assert 1e-4 <= params["learning_rate"] <= 1e-2
        assert isinstance(params["update_epochs"], int) and 1 <= params["update_epochs"] <= 10
        assert params["activation"] in ("tanh", "relu")
    assert len({p["learning_rate"] for p in first}) == 5
    sweep.sampler_seed = 4
    assert random_points(sweep, PPOConfig) != first


def test_load_sweep_reads_seed_counts_and_names_the_sweep_after_the_file(tmp_path):
    sweep = load_sweep(write(tmp_path, {**BASE, "grid": {"gamma": [0.9, 0.99]}}, "lr.yaml"))
    assert sweep.seeds == [0, 1] and sweep.name == "lr" and sweep.grid == {"gamma": [0.9, 0.99]}


@pytest.mark.parametrize("spec,message", [
    ({"algo": "ppo", "env": "CartPole-v1", "grid": {"gamma": [0.9]}}, "needs 'seeds'"),
    ({**BASE}, "exactly one of 'grid'"),
    ({**BASE, "grid": {"gamma": [0.9]}, "random": {"gamma": {"low": 0.9, "high": 0.99}}, "trials": 2}, "exactly one"),
    ({**BASE, "random": {"gamma": {"low": 0.9, "high": 0.99}}}, "trials >= 1"),
    ({**BASE, "grid": {"gamma": []}}, "non-empty list"),
    ({**BASE, "grid": {"gamma": [0.9]}, "seed": 1}, "unknown sweep key 'seed'"),
    ({**BASE, "algo": "ppx", "grid": {"gamma": [0.9]}}, "unknown algorithm"),
])
def test_bad_sweep_files_are_one_error_line(tmp_path, spec, message, capsys):
    assert main(["sweep", str(write(tmp_path, spec)), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err


def test_a_bad_config_value_is_rejected_before_any_run_starts(tmp_path, capsys):
    path = write(tmp_path, {**BASE, "grid": {"gamma": [0.9, 1.5]}})
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "gamma must be in (0, 1]" in capsys.readouterr().err


@pytest.mark.ray
def test_grid_sweep_of_two_configs_and_three_seeds_writes_every_run_and_the_summary(tmp_path, ray_session, capsys):
    spec = {**BASE, "name": "tiny", "steps": 2048, "seeds": [0, 1, 2], "eval_episodes": 3,
            "config": {"num_envs": 2, "num_steps": 64, "batch_size": 64, "update_epochs": 2},
            "grid": {"learning_rate": [1e-3, 3e-4]}}
    out = tmp_path / "out"
    assert main(["sweep", str(write(tmp_path, spec)), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"wrote {out / 'summary.md'}"
    for config in ("c0", "c1"):
        for seed in (0, 1, 2):
            run = out / "runs" / f"{config}__seed{seed}"
            for name in ("config.json", "metrics.csv", "model.pt", "eval.json"):
                assert (run / name).is_file(), run / name
    with (out / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["config"], int(r["seed"])) for r in rows] == [(c, s) for c in ("c0", "c1") for s in (0, 1, 2)]
    assert all(float(r["eval_return"]) > 0 and float(r["steps_per_s"]) > 0 and not r["error"] for r in rows)
    assert rows[0]["params"] == "learning_rate=0.001"
    summary = (out / "summary.md").read_text()
    assert "learning_rate=0.0003" in summary and "3/3" in summary
    assert (out / "curves.png").stat().st_size > 1000


@pytest.mark.ray
def test_random_sweep_runs_the_sampled_configs(tmp_path, ray_session):
    from policyopt.sweep import run_sweep

    sweep = Sweep(name="r", algo="ppo", env="CartPole-v1", seeds=[0], steps=512, trials=2, eval_episodes=2,
                  config={"num_envs": 2, "num_steps": 64, "batch_size": 64, "update_epochs": 1},
                  random={"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}})
    rows = run_sweep(sweep, tmp_path / "out", echo=lambda line: None)
    assert len(rows) == 2 and all("error" not in r for r in rows)
    assert rows[0]["params"] != rows[1]["params"] and rows[0]["params"].startswith("learning_rate=")
    assert "c0" in (tmp_path / "out" / "summary.md").read_text()


@pytest.mark.ray
def test_runs_with_rollout_workers_get_cpus_reserved_for_them(tmp_path, ray_session):
    """IMPALA runs start actors from inside their task: each run holds 1 + workers CPUs of the
    2-CPU session, so they take turns instead of starving each other's workers."""
    from policyopt.sweep import run_sweep

    sweep = Sweep(name="i", algo="impala", env="CartPole-v1", seeds=[0, 1], steps=320, eval_episodes=1,
                  config={"workers": 1, "num_envs": 2, "num_steps": 16}, grid={"learning_rate": [1e-3]})
    rows = run_sweep(sweep, tmp_path / "out", echo=lambda line: None)
    assert [r["seed"] for r in rows] == [0, 1] and all("error" not in r for r in rows)
    sweep.config["workers"] = 2
    with pytest.raises(ConfigError, match="needs 3 CPUs .* has 2"):
        run_sweep(sweep, tmp_path / "out2", echo=lambda line: None)
