"""Environments: the vector env factory, wrappers, batched torch envs, and test envs with known solutions."""

from policyopt.envs.testing import register as _register_test_envs
from policyopt.envs.torch_envs import TORCH_ENV_IDS, TorchVecEnv, make_torch_vec_env
from policyopt.envs.vector import (
    EnvError,
    EnvPoolVecEnv,
    EnvSpaces,
    NumpyVecEnv,
    Step,
    VecEnv,
    check_env_id,
    env_spaces,
    make_env,
    make_vec_env,
)

_register_test_envs()

__all__ = [
    "TORCH_ENV_IDS",
    "EnvError",
    "EnvPoolVecEnv",
    "EnvSpaces",
    "NumpyVecEnv",
    "Step",
    "TorchVecEnv",
    "VecEnv",
    "check_env_id",
    "env_spaces",
    "make_env",
    "make_torch_vec_env",
    "make_vec_env",
]
