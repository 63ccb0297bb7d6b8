"""Batched torch classic-control envs: step for step equal to Gymnasium on the same states."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.envs.classic_control.acrobot import wrap as gym_wrap

from policyopt.envs import EnvError
from policyopt.envs.torch_envs import TORCH_ENV_IDS, TorchVecEnv, make_torch_vec_env, wrap

NUM_ENVS = 16
OBS_ATOL = 1e-5
REWARD_ATOL = 1e-5


def mountain_car_start(rng: np.random.Generator) -> np.ndarray:
    """Anywhere, or past the flag rolling back (the goal needs velocity >= 0 too)."""
    if rng.random() < 0.5:
        return np.array([rng.uniform(0.5, 0.6), rng.uniform(-0.03, 0.0)])
    return np.array([rng.uniform(-1.2, 0.6), rng.uniform(-0.07, 0.07)])


# First states of half of the envs, spread over the state space, so that a few hundred steps
# reach the rare branches: the goal and the left wall of MountainCar, Acrobot's termination, clipped speeds.
WIDE_STARTS = {
    "Pendulum-v1": lambda rng: np.array([rng.uniform(-np.pi, np.pi), rng.uniform(-8.0, 8.0)]),
    "Acrobot-v1": lambda rng: rng.uniform(-1.0, 1.0, 4) * [np.pi, np.pi, 4 * np.pi, 9 * np.pi],
    "MountainCar-v0": mountain_car_start,
    "MountainCarContinuous-v0": mountain_car_start,
}
# The acrobot is chaotic: the last-bit differences between torch's and libm's sin/cos grow
# over a long episode, so its states are copied over from Gymnasium before every step.
RESYNC_EVERY_STEP = {"Acrobot-v1"}


def random_actions(space: gym.Space, n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform actions; Box ones reach 1.5x past the bounds, to exercise the envs' clipping."""
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(0, space.n, n)
    return rng.uniform(1.5 * space.low, 1.5 * space.high, (n, *space.shape)).astype(np.float32)


def gym_state(env: gym.Env) -> np.ndarray:
    return np.asarray(env.unwrapped.state, dtype=np.float64)


def copy_state(batched: TorchVecEnv, i: int, env: gym.Env) -> None:
    batched.state[i] = torch.from_numpy(gym_state(env))


def start_side_by_side(env_id: str, rng: np.random.Generator) -> tuple[TorchVecEnv, list[gym.Env]]:
    """A batched env and NUM_ENVS Gymnasium envs in the same states, at random points of their time limits."""
    batched = make_torch_vec_env(env_id, NUM_ENVS, seed=123)
    envs = [gym.make(env_id) for _ in range(NUM_ENVS)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
        if env_id in WIDE_STARTS and i % 2 == 0:  # the other half from Gymnasium's reset
            env.unwrapped.state = WIDE_STARTS[env_id](rng)
        env._elapsed_steps = int(rng.integers(0, batched.max_episode_steps))  # the TimeLimit wrapper's counter
        batched.elapsed_steps[i] = env._elapsed_steps
        copy_state(batched, i, env)
    return batched, envs


@pytest.mark.parametrize("env_id", TORCH_ENV_IDS)
def test_steps_match_gymnasium_on_the_same_states(env_id):
    rng = np.random.default_rng(0)
    batched, envs = start_side_by_side(env_id, rng)
    ends = {"terminated": 0, "truncated": 0}
    for _ in range(300):
        if env_id in RESYNC_EVERY_STEP:
            for i, env in enumerate(envs):
                copy_state(batched, i, env)
        actions = random_actions(envs[0].action_space, NUM_ENVS, rng)
        step = batched.step(torch.as_tensor(actions))
        last_obs, reward, terminated, truncated, _ = zip(*(env.step(a) for env, a in zip(envs, actions, strict=True)))
        np.testing.assert_allclose(step.final_obs.numpy(), np.stack(last_obs), rtol=0, atol=OBS_ATOL)
        np.testing.assert_allclose(step.reward.numpy(), reward, rtol=0, atol=REWARD_ATOL)
        np.testing.assert_array_equal(step.terminated.numpy(), terminated)
        np.testing.assert_array_equal(step.truncated.numpy(), truncated)
        ends["terminated"] += sum(terminated)
        ends["truncated"] += sum(truncated)
        running = ~step.done.numpy()
        np.testing.assert_array_equal(step.obs.numpy()[running], step.final_obs.numpy()[running])
        states = np.stack([gym_state(env) for env in envs])
        np.testing.assert_allclose(batched.state.numpy()[running], states[running], rtol=0, atol=OBS_ATOL)
        assert (batched.elapsed_steps.numpy()[~running] == 0).all()
        for i in np.flatnonzero(~running):
            envs[i].reset()  # the random streams differ: carry Gymnasium's new episode over
            copy_state(batched, i, envs[i])
    assert ends["truncated"] > 0
    if env_id != "Pendulum-v1":  # the pendulum never terminates
        assert ends["terminated"] > 0


@pytest.mark.parametrize("env_id", TORCH_ENV_IDS)
def test_spaces_equal_gymnasiums(env_id):
    batched = make_torch_vec_env(env_id, 2)
    reference = gym.make(env_id)
    assert batched.single_observation_space == reference.observation_space
    assert batched.single_action_space == reference.action_space
    assert batched.max_episode_steps == reference.spec.max_episode_steps


@pytest.mark.parametrize("env_id", TORCH_ENV_IDS)
def test_shapes_and_dtypes(env_id):
    batched = make_torch_vec_env(env_id, 5, seed=0)
    obs_dim = batched.single_observation_space.shape[0]
    obs = batched.reset()
    assert obs.shape == (5, obs_dim) and obs.dtype == torch.float32
    assert all(batched.single_observation_space.contains(o) for o in obs.numpy())
    actions = random_actions(batched.single_action_space, 5, np.random.default_rng(0))
    step = batched.step(torch.as_tensor(actions))
    assert step.obs.shape == step.final_obs.shape == (5, obs_dim)
    assert step.obs.dtype == step.final_obs.dtype == step.reward.dtype == torch.float32
    assert step.reward.shape == step.terminated.shape == step.truncated.shape == (5,)
    assert step.terminated.dtype == step.truncated.dtype == torch.bool
    twin = make_torch_vec_env(env_id, 5, seed=0)
    twin.reset()
    assert torch.equal(twin.step(actions).final_obs, step.final_obs)  # NumPy actions work too


def test_same_step_autoreset_on_termination():
    batched = make_torch_vec_env("CartPole-v1", 3, seed=0)
    batched.reset()
    push_right = torch.ones(3, dtype=torch.int64)
    for _ in range(100):
        step = batched.step(push_right)
        if step.terminated.all():
            break
        assert not step.done.any()  # identical pushes from nearby starts end within a step of each other
        np.testing.assert_array_equal(step.obs.numpy(), step.final_obs.numpy())
    assert step.terminated.all() and not step.truncated.any()
    assert (step.reward == 1.0).all()  # Gymnasium rewards the terminating step too
    assert (step.final_obs[:, 2].abs() > 0.2094).all()  # the pole fell past 12 degrees
    assert (step.obs.abs() <= 0.05).all()  # already the first observation of the next episode
    assert (batched.elapsed_steps == 0).all()


def test_truncation_at_the_time_limit_resets_the_counter():
    batched = make_torch_vec_env("Pendulum-v1", 4, seed=0)
    batched.reset()
    zero_torque = torch.zeros(4, 1)
    for t in range(1, 201):
        step = batched.step(zero_torque)
        assert bool(step.truncated.all()) == (t == 200) and not step.terminated.any()
    assert not torch.equal(step.obs, step.final_obs)
    assert (batched.elapsed_steps == 0).all()
    assert not batched.step(zero_torque).truncated.any()


@pytest.mark.parametrize("env_id", TORCH_ENV_IDS)
def test_snapshot_restores_the_exact_future(env_id):
    batched = make_torch_vec_env(env_id, 8, seed=1)
    batched.elapsed_steps.fill_(batched.max_episode_steps - 80)  # every episode ends in the replayed part
    rng = np.random.default_rng(0)
    actions = [torch.as_tensor(random_actions(batched.single_action_space, 8, rng)) for _ in range(150)]
    for a in actions[:50]:
        batched.step(a)
    snap = batched.snapshot
    first = [batched.step(a) for a in actions[50:]]
    fresh = make_torch_vec_env(env_id, 8, seed=99)  # another seed: the snapshot decides
    fresh.snapshot = snap
    second = [fresh.step(a) for a in actions[50:]]
    for x, y in zip(first, second, strict=True):
        for name in ("obs", "reward", "terminated", "truncated", "final_obs"):
            assert torch.equal(getattr(x, name), getattr(y, name))
    assert sum(int(s.done.sum()) for s in first) > 0  # resets, drawn from the restored generator, happened


def test_reset_seed_decides_the_initial_states():
    batched = make_torch_vec_env("CartPole-v1", 6, seed=3)
    first = batched.reset()
    assert torch.equal(batched.reset(), first)  # reset() reuses the constructor's seed
    assert torch.equal(make_torch_vec_env("CartPole-v1", 6, seed=3).reset(), first)
    assert not torch.equal(batched.reset(seed=4), first)
    assert len(set(first[:, 0].tolist())) == 6  # each env its own draw


@pytest.mark.parametrize("env_id", TORCH_ENV_IDS)
def test_4096_envs_step(env_id):
    batched = make_torch_vec_env(env_id, 4096, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        step = batched.step(torch.as_tensor(random_actions(batched.single_action_space, 4096, rng)))
    assert step.obs.shape == (4096, batched.single_observation_space.shape[0])
    assert torch.isfinite(step.obs).all() and torch.isfinite(step.reward).all()


def test_unsupported_ids_raise_env_error():
    with pytest.raises(EnvError, match="did you mean CartPole-v1"):
        make_torch_vec_env("CartPole-v0", 4)
    with pytest.raises(EnvError, match="supported: CartPole-v1"):
        make_torch_vec_env("LunarLander-v3", 4)


def test_wrap_matches_gymnasiums_loop():
    x = np.concatenate([np.linspace(-30.0, 30.0, 2001), [-np.pi, np.pi]])
    expected = [gym_wrap(v, -np.pi, np.pi) for v in x]
    np.testing.assert_allclose(wrap(torch.from_numpy(x), -np.pi, np.pi).numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("env_id", TORCH_ENV_IDS)
def test_cuda_steps_match_cpu_without_host_syncs(env_id):
    cpu = make_torch_vec_env(env_id, 256, seed=0)
    cuda = make_torch_vec_env(env_id, 256, seed=0, device="cuda")
    cpu.elapsed_steps.fill_(cpu.max_episode_steps - 20)
    rng = np.random.default_rng(0)
    actions = [torch.as_tensor(random_actions(cpu.single_action_space, 256, rng)) for _ in range(40)]
    actions_on_gpu = [a.cuda() for a in actions]
    for a, a_gpu in zip(actions, actions_on_gpu, strict=True):
        cuda.state, cuda.elapsed_steps = cpu.state.cuda(), cpu.elapsed_steps.cuda()  # the generators differ
        expected, step = cpu.step(a), cuda.step(a_gpu)
        torch.testing.assert_close(step.final_obs.cpu(), expected.final_obs, rtol=0, atol=OBS_ATOL)
        torch.testing.assert_close(step.reward.cpu(), expected.reward, rtol=0, atol=REWARD_ATOL)
        assert torch.equal(step.terminated.cpu(), expected.terminated)
        assert torch.equal(step.truncated.cpu(), expected.truncated)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for a_gpu in actions_on_gpu:
            step = cuda.step(a_gpu)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert step.obs.device.type == "cuda"
