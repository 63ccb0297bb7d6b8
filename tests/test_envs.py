"""Vector envs (Gymnasium, NumPy and EnvPool backends): final observations, observation encoding,
snapshots, clear errors."""

import gymnasium as gym
import numpy as np
import pytest

from gymnasium.vector import AutoresetMode

from policyopt.envs import EnvError, NumpyVecEnv, VecEnv, check_env_id, env_spaces, make_env, make_vec_env
from helpers import needs_envpool

HOST_BACKENDS = ["numpy", pytest.param("envpool", marks=needs_envpool)]


def test_final_obs_is_the_real_last_observation():
    envs = VecEnv("policyopt/Counter-v0", 2, seed=0)
    obs = envs.reset()
    assert obs[:, 0].tolist() == [0.0, 0.0]
    for t in range(1, 10):
        step = envs.step(np.zeros(2, dtype=np.int64))
        assert not step.done.any()
        assert step.obs[0, 0] == pytest.approx(t / 10)
    step = envs.step(np.zeros(2, dtype=np.int64))
    assert step.truncated.all() and not step.terminated.any()
    assert step.final_obs[:, 0].tolist() == [1.0, 1.0]  # the state the time limit cut off
    assert step.obs[:, 0].tolist() == [0.0, 0.0]  # already the next episode's first observation


def test_discrete_observations_are_one_hot():
    env = make_env("FrozenLake-v1")
    obs, _ = env.reset(seed=0)
    assert obs.shape == (16,) and obs.dtype == np.float32 and obs.sum() == 1.0
    spaces = env_spaces("FrozenLake-v1")
    assert spaces.discrete_obs and spaces.raw_obs_shape == ()


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1", "Taxi-v4", "HalfCheetah-v5"])
def test_snapshot_restores_the_exact_future(env_id):
    envs = VecEnv(env_id, 2, seed=1)
    envs.reset()
    rng = np.random.default_rng(0)
    space = envs.single_action_space
    actions = [np.stack([space.sample() for _ in range(2)]) for _ in range(60)]
    space.seed(0)
    for a in actions[:20]:
        envs.step(a)
    snap = envs.snapshot
    first = [envs.step(a) for a in actions[20:]]
    fresh = VecEnv(env_id, 2, seed=99)  # another instance, other seed: the snapshot decides
    fresh.reset()
    fresh.snapshot = snap
    second = [fresh.step(a) for a in actions[20:]]
    for x, y in zip(first, second):
        np.testing.assert_array_equal(x.obs, y.obs)
        np.testing.assert_array_equal(x.reward, y.reward)
        np.testing.assert_array_equal(x.done, y.done)
    del rng


def test_unknown_env_suggests_close_ids():
    with pytest.raises(EnvError, match="did you mean CartPole-v1"):
        check_env_id("CartPol-v1")


def test_dict_observations_need_flattening():
    def factory():
        env = gym.make("CartPole-v1")
        return gym.wrappers.TransformObservation(
            env, lambda o: {"x": o}, gym.spaces.Dict({"x": env.observation_space})
        )

    with pytest.raises(EnvError, match="flatten_obs"):
        make_env(factory)
    env = make_env(factory, flatten_obs=True)
    assert env.observation_space.shape == (4,)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_vector_cartpole_resets_in_the_same_step(backend):
    """env_backend=numpy|envpool: Gymnasium's NumPy CartPole and EnvPool's reset an ended episode
    at the next step; the VecEnv resets it in the same step, so no zero-reward reset step
    reaches the loops."""
    envs = make_vec_env("CartPole-v1", 8, seed=0, backend=backend)
    obs = envs.reset()
    rng = np.random.default_rng(0)
    lengths, ended = np.zeros(8, dtype=int), []
    x_limit, theta_limit = 2.4, 12 * 2 * np.pi / 360
    for _ in range(1500):
        balance = (obs[:, 2] + 0.5 * obs[:, 3] > 0).astype(np.int64)  # keeps the pole up for 500 steps
        step = envs.step(np.where(np.arange(8) < 4, rng.integers(0, 2, 8), balance))
        assert (step.reward == 1.0).all()
        lengths += 1
        for i in np.flatnonzero(step.done):
            last = step.final_obs[i]
            if step.terminated[i]:
                assert abs(last[0]) > x_limit or abs(last[2]) > theta_limit
            else:
                assert lengths[i] == 500
            assert np.abs(step.obs[i]).max() <= 0.05  # the next episode's first observation
            ended.append(lengths[i])
            lengths[i] = 0
        obs = step.obs
    assert lengths.max() <= 500 and len(ended) > 8 and 500 in ended  # terminations and truncations


def _pendulum_state(obs):
    return np.array([np.arctan2(obs[1], obs[0]), obs[2]])


@pytest.mark.parametrize("backend,env_id,actions,state", [
    ("numpy", "CartPole-v1", np.array([0, 1, 1]), np.asarray),
    pytest.param("envpool", "CartPole-v1", np.array([0, 1, 1]), np.asarray, marks=needs_envpool),
    pytest.param("envpool", "Pendulum-v1", np.array([[-2.0], [0.5], [2.0]], dtype=np.float32), _pendulum_state,
                 marks=needs_envpool),
])
def test_host_backend_steps_like_the_gymnasium_env(backend, env_id, actions, state):
    """From the same states, each backend's next observation and reward are Gymnasium's
    (the state is read back from the float32 observation, hence the tolerance)."""
    envs = make_vec_env(env_id, 3, seed=1, backend=backend)
    obs = envs.reset()
    single = gym.make(env_id).unwrapped
    single.reset(seed=0)
    for _ in range(30):
        step = envs.step(actions)
        for i in range(3):
            single.state = state(obs[i].astype(np.float64))
            single.steps_beyond_terminated = None  # CartPole: each row continues a live episode
            expected, reward, terminated, _, _ = single.step(actions[i] if actions.ndim > 1 else int(actions[i]))
            np.testing.assert_allclose(step.final_obs[i], expected, rtol=1e-5, atol=1e-5)
            assert step.reward[i] == pytest.approx(reward, rel=1e-5, abs=1e-5) and step.terminated[i] == terminated
        obs = step.obs


def test_numpy_vector_snapshot_restores_the_exact_future():
    envs = NumpyVecEnv("CartPole-v1", 4, seed=3)
    envs.reset()
    actions = [np.random.default_rng(i).integers(0, 2, 4) for i in range(300)]
    for a in actions[:50]:
        envs.step(a)
    saved = envs.snapshot
    first = [envs.step(a) for a in actions[50:]]
    envs.snapshot = saved
    again = [envs.step(a) for a in actions[50:]]
    assert any(s.done.any() for s in first)  # the restored RNG draws the same reset states
    for a, b in zip(first, again):
        assert np.array_equal(a.obs, b.obs) and np.array_equal(a.final_obs, b.final_obs)
        assert np.array_equal(a.done, b.done)


def test_numpy_backend_names_the_envs_it_supports():
    from policyopt.algos.ppo import PPO

    with pytest.raises(EnvError, match="env_backend=numpy supports CartPole-v1"):
        PPO("Pendulum-v1", env_backend="numpy")


@needs_envpool
def test_envpool_pendulum_truncates_at_200_and_reseeds():
    envs = make_vec_env("Pendulum-v1", 4, seed=0, backend="envpool")
    first = envs.reset()
    for t in range(1, 201):
        step = envs.step(np.zeros((4, 1), dtype=np.float32))
        assert step.truncated.all() == (t == 200) and not step.terminated.any()
    assert not np.array_equal(step.obs, step.final_obs)  # the new episodes' first observations
    np.testing.assert_array_equal(envs.reset(seed=0), first)  # a seed builds a new pool
    assert not np.array_equal(envs.reset(seed=1), first)
    assert envs.snapshot == [None] * 4  # EnvPool cannot save its envs' state


@needs_envpool
def test_envpool_backend_errors_name_the_problem():
    from policyopt.algos.ppo import PPO

    with pytest.raises(EnvError, match="EnvPool and Gymnasium both register"):
        PPO("policyopt/Counter-v0", env_backend="envpool")


def test_async_envs_apply_to_gymnasium_envs_only():
    from policyopt.algos.ppo import PPO
    from policyopt.config import ConfigError

    with pytest.raises(ConfigError, match="env_backend=numpy cannot use it"):
        PPO("CartPole-v1", env_backend="numpy", async_envs=True)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1", "FrozenLake-v1"])
def test_sync_envs_step_like_gymnasium_sync_vector_env(env_id):
    """VecEnv's in-process loop (SyncEnvs) against SyncVectorEnv with same-step autoreset: the
    same observations, rewards, ends and final observations, resets included."""
    ours = VecEnv(env_id, 3, seed=5)
    ref = VecEnv.__new__(VecEnv)
    factory = lambda: make_env(env_id)  # noqa: E731
    ref._wrap(gym.vector.SyncVectorEnv([factory] * 3, autoreset_mode=AutoresetMode.SAME_STEP), seed=5)
    np.testing.assert_array_equal(ours.reset(), ref.reset())
    space = ours.single_action_space
    space.seed(0)
    ends = 0
    for _ in range(600):
        actions = np.stack([space.sample() for _ in range(3)])
        a, b = ours.step(actions), ref.step(actions)
        for field in ("obs", "reward", "terminated", "truncated", "final_obs"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
        ends += int(a.done.sum())
    assert ends > 3  # autoresets were compared
