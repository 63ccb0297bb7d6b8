"""graphs.GraphedCall and PPO's recorded iterations (``cuda_graph=true``): on the CPU the record
is an FX graph with a CUDA graph's rules, so replays must equal eager iterations bit for bit."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from policyopt import PPO
from policyopt.config import ConfigError
from policyopt.graphs import GraphedCall
from policyopt.loops import make_runner, resume

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
def test_replays_continue_from_the_carried_tensors_and_draw_anew(device):
    """A body that replaces its state and draws from a generator of its own and from the device's
    default one: replays go on where the last call ended, with fresh draws, as calls of the body
    itself do."""

    def make():
        state = types.SimpleNamespace(x=torch.zeros(3, device=device), generator=torch.Generator(device).manual_seed(0))

        def body():
            noise = torch.rand(3, generator=state.generator, device=device) + torch.rand(3, device=device)
            state.x = state.x * 0.5 + noise
            return {"x": state.x.clone(), "sum": state.x.sum(), "label": "step"}

        return state, body

    torch.manual_seed(1)
    state, body = make()
    eager = [body() for _ in range(5)]
    torch.manual_seed(1)
    state, body = make()
    graphed = GraphedCall(body, torch.device(device), carry=[(state, "x")], generators=[state.generator], warmup=1)
    calls = [{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in graphed().items()} for _ in range(5)]
    assert graphed.recorded
    for a, b in zip(eager, calls, strict=True):
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["sum"], b["sum"]) and b["label"] == "step"


def test_a_record_refuses_values_read_back_to_the_host():
    x = torch.ones(2)
    graphed = GraphedCall(lambda: x * float(x.sum()), torch.device("cpu"), warmup=0)
    with pytest.raises(RuntimeError, match="_local_scalar_dense"):
        graphed()


def run(env_id: str, warmup: int, device: str = "cpu", iterations: int = 14, **overrides):
    """PPO with ``cuda_graph``: ``iterations`` iterations (of 8 envs x 16 steps by default),
    recorded after ``warmup`` eager ones (a large ``warmup``: all eager); the agent and the metrics."""
    config = dict(env_backend="torch", cuda_graph=True, num_envs=8, num_steps=16, batch_size=32, update_epochs=2,
                  anneal_lr=True, anneal_clip=True)
    config.update(overrides)
    agent = PPO(env_id, seed=0, device=device, config=config)
    agent.runner = make_runner(agent)
    agent.runner.graph.warmup = warmup
    metrics = []
    steps = config["num_envs"] * config["num_steps"] * iterations
    agent.learn(steps, progress=False, callback=lambda _, m: metrics.append(m))
    return agent, metrics


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("env_id,overrides", [
    ("CartPole-v1", {}),
    ("Pendulum-v1", {"normalize_obs": True, "normalize_reward": True}),  # 14 x 16 steps: episodes truncated at 200
    ("CartPole-v1", {"shared_network": True}),  # the gradient by autograd, not core.backprop
    ("CartPole-v1", {"objective": "adaptive_kl"}),  # kl_coef adapted on the host, read from a tensor
    ("Pendulum-v1", {"policy": "gsde", "log_std_init": -2.0}),  # exploration matrices redrawn per rollout
])
def test_replayed_iterations_equal_eager_ones_bit_for_bit(env_id, overrides, device):
    """Everything an iteration changes (parameters, optimizer, envs, episode statistics, the
    normalizers) and every metric is what the same iterations give run eagerly, with the
    annealed learning rate and clip range read from tensors the host fills before each replay."""
    eager, eager_metrics = run(env_id, warmup=100, device=device, **overrides)
    graphed, graphed_metrics = run(env_id, warmup=2, device=device, **overrides)
    assert graphed.runner.graph.recorded and not eager.runner.graph.recorded
    for (name, a), (_, b) in zip(eager.state_dict()["nets"].items(), graphed.state_dict()["nets"].items(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(eager.optimizers["policy"].state_dict()["state"][0]["exp_avg_sq"],
                       graphed.optimizers["policy"].state_dict()["state"][0]["exp_avg_sq"])
    envs, graphed_envs = eager.runner.collector.envs, graphed.runner.collector.envs
    assert torch.equal(envs.state, graphed_envs.state) and torch.equal(envs.elapsed_steps, graphed_envs.elapsed_steps)
    assert torch.equal(eager.runner.obs, graphed.runner.obs)
    if env_id == "Pendulum-v1":
        assert (graphed_envs.elapsed_steps == 14 * 16 - 200).all()  # every env's first episode was truncated
    for a, b in zip(eager_metrics, graphed_metrics, strict=True):
        assert {k: v for k, v in a.items() if not k.startswith("time/")} == {k: v for k, v in b.items() if not k.startswith("time/")}


def test_a_checkpoint_taken_between_replays_resumes_exactly(tmp_path):
    """The envs, observations and episode statistics saved after replays are the replays' own
    (the carried tensors), and the resumed run (eager, then recorded anew) continues bit for bit."""
    config = dict(seed=1, env_backend="torch", cuda_graph=True, num_envs=8, num_steps=16, batch_size=32, update_epochs=2,
                  normalize_obs=True)
    steps = 8 * 16 * 8
    full = PPO("Pendulum-v1", **config).learn(steps, run_dir=tmp_path / "full", progress=False)
    cut = PPO("Pendulum-v1", **config)
    cut.learn(steps, run_dir=tmp_path / "cut", progress=False, callback=lambda agent, _: agent.global_step < steps // 2)
    assert cut.runner.graph.recorded
    resumed = resume(tmp_path / "cut", progress=False)
    assert resumed.runner.graph.recorded
    for (name, a), (_, b) in zip(full.nets.state_dict().items(), resumed.nets.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("overrides,message", [
    ({}, "env_backend=torch"),
    ({"env_backend": "torch", "target_kl": 0.01}, "target_kl"),
])
def test_cuda_graph_names_what_it_cannot_record(overrides, message):
    with pytest.raises(ConfigError, match=message):
        PPO("CartPole-v1", cuda_graph=True, **overrides)


def test_ppo_learns_cartpole_from_recorded_iterations():
    agent, metrics = run("CartPole-v1", warmup=2, iterations=60, num_envs=32, batch_size=128, learning_rate=2.5e-3)
    returns = [m["rollout/ep_return"] for m in metrics if "rollout/ep_return" in m]
    assert np.mean(returns[-5:]) > 3 * np.mean(returns[:5])
