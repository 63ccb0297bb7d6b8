"""REINFORCE: whole episodes from fixed rollouts, returns by hand, the optimal baseline's variance, learning."""

import numpy as np
import pytest
import torch

from policyopt.algos.reinforce import (
    REINFORCE,
    EpisodeAssembler,
    episode_ids,
    episode_returns,
    episode_weights,
    optimal_baseline,
    per_episode_gradients,
    reinforce_loss,
    trajectory_returns,
)
from policyopt.cli import main
from policyopt.config import ConfigError
from policyopt.core.buffers import RolloutBuffer
from policyopt.loops import make_runner, resume

SMALL = dict(num_envs=2, num_steps=128, value_epochs=2, batch_size=64)


@pytest.mark.parametrize("env_id,options", [
    ("CartPole-v1", {"baseline": "value"}),
    ("CartPole-v1", {"baseline": "optimal", "reward_to_go": False}),
    ("CartPole-v1", {"baseline": "mean", "max_grad_norm": 1.0}),
    ("CartPole-v1", {"baseline": "none", "reward_to_go": False}),
    ("Pendulum-v1", {"baseline": "optimal"}),
    ("Pendulum-v1", {"baseline": "value", "policy": "beta", "normalize_obs": True}),
])
def test_smoke(env_id, options):
    agent = REINFORCE(env_id, seed=0, preset=False, **SMALL, **options)
    logged = []
    agent.learn(512, progress=False, callback=lambda a, m: logged.append(m))
    updates = [m for m in logged if m["diag/episodes"] > 0]
    assert updates, "no episode ended in 512 steps"
    metrics = updates[-1]
    for key in ("loss/policy", "diag/grad_norm", "diag/entropy", "diag/baseline", "diag/ess"):
        assert np.isfinite(metrics[key]), key
    assert 0.0 < metrics["diag/ess"] <= 1.0 + 1e-6
    if options["baseline"] == "value":
        assert np.isfinite(metrics["loss/value"]) and "diag/explained_var" in metrics
    action = agent.predict(agent.make_eval_env().reset(seed=0)[0])
    assert agent.action_space.contains(int(action) if agent.discrete else action)


def hand_buffer(rewards, dones, terminated, num_envs=1):
    """A RolloutBuffer of ``[T, num_envs]`` hand-written steps (obs = the step's reward)."""
    rewards, dones, terminated = (torch.tensor(x, dtype=torch.float32).reshape(-1, num_envs) for x in (rewards, dones, terminated))
    buf = RolloutBuffer(rewards.shape[0], num_envs)
    for t in range(rewards.shape[0]):
        buf.add(
            obs=rewards[t].unsqueeze(-1), action=torch.zeros(num_envs, dtype=torch.long), reward=rewards[t],
            terminated=terminated[t].bool(), done=dones[t].bool(), final_value=torch.full((num_envs,), 4.0),
            logp=torch.zeros(num_envs),
        )
    return buf


def test_unfinished_episodes_wait_for_the_next_rollout():
    assembler = EpisodeAssembler(num_envs=2)
    # env 0 ends an episode at t=1; env 1 runs on through both rollouts' ends until t=0 of the second
    first = hand_buffer([1, 10, 2, 20, 3, 30], [0, 0, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0], num_envs=2)
    out = assembler.take(first)
    assert out["reward"].tolist() == [1.0, 2.0]
    second = hand_buffer([4, 40, 5, 50, 6, 60], [0, 1, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0], num_envs=2)
    out = assembler.take(second)
    # env 0: [3, 4, 5] ended at t=1; env 1: [10, 20, 30, 40] ended at t=0; [6] and [50, 60] wait
    assert out["reward"].tolist() == [3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0]
    assert episode_ids(out["done"]).tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert [p["reward"].tolist() for p in assembler.pending] == [[6.0], [50.0, 60.0]]
    first["reward"].zero_()  # the runner reuses its buffer; the pending steps must be copies
    assert [p["reward"].tolist() for p in assembler.pending] == [[6.0], [50.0, 60.0]]


def test_reward_to_go_and_whole_return_by_hand():
    """Two episodes, gamma = 0.5: [1, 1, 1] terminated, then [2, 2] truncated with V(final) = 4."""
    ep = {
        "reward": torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0]),
        "done": torch.tensor([0, 0, 1, 0, 1], dtype=torch.bool),
        "terminated": torch.tensor([0, 0, 1, 0, 0], dtype=torch.bool),
        "final_value": torch.tensor([0.0, 0.0, 9.0, 0.0, 4.0]),
    }
    g = episode_returns(ep, 0.5)
    # G_2 = 1; G_1 = 1 + 0.5; G_0 = 1 + 0.5 * 1.5.  G_4 = 2 + 0.5 * 4 (bootstrap); G_3 = 2 + 0.5 * 4
    torch.testing.assert_close(g, torch.tensor([1.75, 1.5, 1.0, 4.0, 4.0]))
    episode = episode_ids(ep["done"])
    torch.testing.assert_close(trajectory_returns(g, episode), torch.tensor([1.75, 1.75, 1.75, 4.0, 4.0]))


def test_episode_weights_are_products_of_ratios():
    logp = torch.tensor([-1.0, -2.0, -0.5, -0.1])
    behavior = torch.tensor([-1.5, -2.0, -0.5, -0.3])
    w = episode_weights(logp, behavior, torch.tensor([0, 0, 1, 1]), 2)
    torch.testing.assert_close(w, torch.tensor([np.exp(0.5), np.exp(0.2)], dtype=torch.float32))


def random_policy_batch(reward_to_go, seed=0):
    """Whole CartPole episodes of an untrained policy, with what the update computes from them."""
    agent = REINFORCE("CartPole-v1", seed=seed, preset=False, num_envs=4, num_steps=100, baseline="none",
                      reward_to_go=reward_to_go)
    runner = make_runner(agent)
    runner.collect()
    ep = agent.episodes.take(runner.buffer)
    episode = episode_ids(ep["done"])
    g = episode_returns(ep, 0.99)
    psi = g if reward_to_go else trajectory_returns(g, episode)
    return agent, ep, episode, psi


@pytest.mark.parametrize("reward_to_go", [False, True])
def test_per_episode_gradients_match_autograd(reward_to_go):
    agent, ep, episode, psi = random_policy_batch(reward_to_go)
    num_episodes = int(episode[-1]) + 1
    A, B = per_episode_gradients(agent.policy, ep["obs"], ep["action"], psi, episode, num_episodes, chunk=50)
    params = agent.policy.actor_parameters()
    for e in (0, num_episodes - 1):
        mask = episode == e
        logp = agent.policy.dist(ep["obs"][mask]).log_prob(ep["action"][mask])
        a = torch.autograd.grad((logp * psi[mask]).sum(), params, retain_graph=True)
        b = torch.autograd.grad(logp.sum(), params)
        torch.testing.assert_close(A[e], torch.cat([x.reshape(-1) for x in a]), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(B[e], torch.cat([x.reshape(-1) for x in b]), rtol=1e-4, atol=1e-5)
    # the loss used for the update has the gradient -(1/E) sum_e (A_e - b B_e)
    baseline = optimal_baseline(A, B)
    logp = agent.policy.dist(ep["obs"]).log_prob(ep["action"])
    loss = reinforce_loss(logp, psi, baseline, torch.ones(num_episodes), episode)
    grads = torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, params)])
    torch.testing.assert_close(grads, -(A - baseline * B).mean(0), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("reward_to_go", [False, True])
def test_optimal_baseline_lowers_the_variance_of_the_gradient_estimate(reward_to_go):
    """Per-episode estimates g_e = A_e - b B_e on a fixed batch: total variance with b* < with b = 0."""
    agent, ep, episode, psi = random_policy_batch(reward_to_go)
    num_episodes = int(episode[-1]) + 1
    assert num_episodes >= 10
    A, B = per_episode_gradients(agent.policy, ep["obs"], ep["action"], psi, episode, num_episodes)

    def total_variance(b):
        return (A - b * B).var(dim=0).sum().item()

    def second_moment(b):
        return (A - b * B).pow(2).sum().item()

    b_star = optimal_baseline(A, B).item()
    assert b_star > 0.0  # returns are positive on CartPole, so the best constant is too
    assert total_variance(b_star) < 0.9 * total_variance(0.0)
    assert second_moment(b_star) <= min(second_moment(b_star - 1.0), second_moment(b_star + 1.0))


def test_value_baseline_needs_reward_to_go():
    with pytest.raises(ConfigError, match="reward_to_go"):
        REINFORCE("CartPole-v1", baseline="value", reward_to_go=False)


def test_resume_keeps_the_unfinished_episodes(tmp_path):
    common = dict(seed=3, preset=False, num_envs=2, num_steps=64, baseline="value", value_epochs=1)
    full = REINFORCE("CartPole-v1", **common).learn(1024, run_dir=tmp_path / "full", progress=False)
    REINFORCE("CartPole-v1", **common).learn(
        1024, run_dir=tmp_path / "cut", progress=False, callback=lambda a, m: a.global_step < 512
    )
    resumed = resume(tmp_path / "cut", progress=False)
    for (name, a), (_, b) in zip(full.nets.state_dict().items(), resumed.nets.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_learns_cartpole_quickly():
    agent = REINFORCE("CartPole-v1", seed=0, preset=False, num_envs=8, num_steps=128, learning_rate=3e-3)
    agent.learn(40_000, progress=False)
    assert np.mean(agent.evaluate(10)) >= 150


def test_cli_train_logs_diagnostics(tmp_path):
    args = ["train", "reinforce", "--env", "CartPole-v1", "--steps", "512", "--no-progress", "--eval-episodes", "2",
            "--run-dir", str(tmp_path), "--set", "num_steps=64"]
    assert main(args) == 0
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"loss/policy", "loss/value", "diag/ess", "diag/baseline", "rollout/ep_return"} <= set(header)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_solves_cartpole_within_the_preset_budget(seed):
    agent = REINFORCE("CartPole-v1", seed=seed)
    agent.learn(progress=False)
    assert np.mean(agent.evaluate(20)) >= 475
