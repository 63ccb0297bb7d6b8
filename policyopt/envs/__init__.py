"""Environments: the vector env factory, wrappers, and test envs with known solutions."""

from policyopt.envs.testing import register as _register_test_envs
from policyopt.envs.vector import EnvError, EnvSpaces, Step, VecEnv, check_env_id, env_spaces, make_env

_register_test_envs()

__all__ = ["EnvError", "EnvSpaces", "Step", "VecEnv", "check_env_id", "env_spaces", "make_env"]
