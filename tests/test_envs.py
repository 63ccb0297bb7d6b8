"""Vector envs: final observations, observation encoding, snapshots, clear errors."""

import gymnasium as gym
import numpy as np
import pytest

from policyopt.envs import EnvError, VecEnv, check_env_id, env_spaces, make_env


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
