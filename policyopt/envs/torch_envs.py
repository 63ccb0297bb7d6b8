"""Batched classic-control envs in PyTorch: thousands of envs stepped as tensors on one device.

``TorchVecEnv`` has the interface of ``VecEnv`` (``reset``, ``step -> Step``, same-step
autoreset with the real ``final_obs``, ``snapshot``, ``close``), but the state of all N envs
is one ``[N, state_dim]`` float64 tensor on ``device`` and every array it takes or returns is
a tensor there: float32 ``obs``/``reward``, bool ``terminated``/``truncated``. A step is a
fixed number of tensor ops whatever N is, with no host synchronization: episodes that end
are reset with ``torch.where`` from initial states drawn for every env at every step, and
the time limit (Gymnasium's ``TimeLimit``: truncated once the episode's step counter reaches
``max_episode_steps``) is a counter tensor.

The dynamics reimplement Gymnasium's classic-control envs (``gymnasium/envs/classic_control``)
and match them step for step on the same states (``tests/test_torch_envs.py``): the state
math runs in float64 like Gymnasium's NumPy code, observations are cast to float32 like
Gymnasium's. Only the random streams differ: reset states and the like come from a
``torch.Generator`` on the device seeded with ``seed``, not from NumPy.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from policyopt.envs.vector import EnvError, Step

Dynamics = Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


class TorchVecEnv:
    """N copies of one env stepped together as tensors on ``device``.

    A subclass sets ``max_episode_steps``, the bounds of the uniform initial state
    (``reset_low``/``reset_high``, one value per state variable), ``make_spaces()``, and two
    pure functions: ``dynamics(state, action) -> (next_state, reward, terminated)`` on
    ``[N, state_dim]`` float64 states and ``[N, *action_shape]`` actions, and
    ``observe(state) -> obs [N, obs_dim]`` float32.

    ``state`` ``[N, state_dim]`` float64 and ``elapsed_steps`` ``[N]`` int64 are public: tests
    set them to reproduce other simulators' states. Actions are not range-checked (that would
    need a host sync); out-of-range Discrete actions give undefined results.
    """

    max_episode_steps: int
    reset_low: tuple[float, ...]
    reset_high: tuple[float, ...]
    dynamics: Dynamics
    observe: Callable[[Tensor], Tensor]

    def __init__(self, num_envs: int, seed: int = 0, device: str | torch.device = "cpu"):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs = num_envs
        self.seed = seed
        self.device = torch.device(device)
        self.single_observation_space, self.single_action_space = self.make_spaces()
        self.generator = torch.Generator(self.device)
        self._low = torch.tensor(self.reset_low, dtype=torch.float64, device=self.device)
        self._span = torch.tensor(self.reset_high, dtype=torch.float64, device=self.device) - self._low
        self.elapsed_steps = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self.reset()

    @staticmethod
    def make_spaces() -> tuple[gym.spaces.Box, gym.Space]:
        """(single observation space, single action space), equal to Gymnasium's."""
        raise NotImplementedError

    def initial_state(self) -> Tensor:
        """``[N, state_dim]`` float64 states drawn uniformly in ``[reset_low, reset_high]``."""
        u = torch.rand(self.num_envs, len(self.reset_low), dtype=torch.float64, device=self.device, generator=self.generator)
        return torch.addcmul(self._low, self._span, u)  # low + span * u, one operation

    def reset(self, seed: int | None = None) -> Tensor:
        """Reseed (with the constructor's seed by default), start new episodes everywhere."""
        self.generator.manual_seed(self.seed if seed is None else seed)
        self.state = self.initial_state()
        self.elapsed_steps.zero_()
        return self.observe(self.state)

    def _as_actions(self, actions: Tensor | np.ndarray) -> Tensor:
        actions = torch.as_tensor(actions, device=self.device)
        return actions.reshape(self.num_envs, *self.single_action_space.shape)

    def step(self, actions: Tensor | np.ndarray) -> Step:
        """One step of every env; where an episode ends, ``obs`` is the next one's first."""
        next_state, reward, terminated = self.dynamics(self.state, self._as_actions(actions))
        self.elapsed_steps += 1
        truncated = self.elapsed_steps >= self.max_episode_steps
        done = terminated | truncated
        self.state = torch.where(done[:, None], self.initial_state(), next_state)
        self.elapsed_steps = self.elapsed_steps.masked_fill(done, 0)
        return Step(self.observe(self.state), reward.float(), terminated, truncated, self.observe(next_state), done)

    @property
    def snapshot(self) -> dict[str, Tensor]:
        """Everything the future depends on: states, step counters, the generator's state."""
        return {"state": self.state.clone(), "elapsed_steps": self.elapsed_steps.clone(), "rng": self.generator.get_state()}

    @snapshot.setter
    def snapshot(self, snap: dict[str, Tensor]) -> None:
        if snap["state"].shape != self.state.shape:
            raise ValueError(f"snapshot holds states of shape {tuple(snap['state'].shape)}, this env has {tuple(self.state.shape)}")
        self.state = snap["state"].to(self.device, torch.float64).clone()
        self.elapsed_steps = snap["elapsed_steps"].to(self.device, torch.int64).clone()
        self.generator.set_state(snap["rng"].cpu())

    def close(self) -> None:
        """Nothing to release: the envs are tensors."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_envs={self.num_envs}, device={self.device})"


def _box(high: list[float]) -> gym.spaces.Box:
    bound = np.array(high, dtype=np.float32)
    return gym.spaces.Box(-bound, bound, dtype=np.float32)


# --- CartPole-v1 ---------------------------------------------------------------------------

GRAVITY = 9.8
CART_MASS = 1.0
POLE_MASS = 0.1
TOTAL_MASS = CART_MASS + POLE_MASS
POLE_HALF_LENGTH = 0.5
POLE_MASS_LENGTH = POLE_MASS * POLE_HALF_LENGTH
FORCE_MAG = 10.0
TAU = 0.02
THETA_THRESHOLD = 12 * 2 * math.pi / 360
X_THRESHOLD = 2.4


@functools.cache
def _cartpole_constants(device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Made once per device (no copy to it per step): the force over the total mass by action
    ``[-F/M, +F/M]``, ``l * 4/3`` (0-d), and ``[X_THRESHOLD, THETA_THRESHOLD]``."""
    f64 = dict(dtype=torch.float64, device=device)
    force = FORCE_MAG / TOTAL_MASS
    return (torch.tensor([-force, force], **f64), torch.tensor(POLE_HALF_LENGTH * 4.0 / 3.0, **f64),
            torch.tensor([X_THRESHOLD, THETA_THRESHOLD], **f64))


def cartpole_step(state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Cart-pole balancing: Barto, Sutton & Anderson, "Neuronlike adaptive elements that can
    solve difficult learning control problems" (IEEE Trans. SMC 13(5), 1983), its equations of
    motion without the friction terms, with the constants and explicit Euler step of
    Gymnasium's CartPole-v1 (from Sutton's pole.c).

        force     = +force_mag if action == 1 else -force_mag
        temp      = (force + m_pole * l * theta_dot^2 * sin(theta)) / (m_cart + m_pole)
        theta_acc = (g * sin(theta) - cos(theta) * temp)
                    / (l * (4/3 - m_pole * cos(theta)^2 / (m_cart + m_pole)))
        x_acc     = temp - m_pole * l * theta_acc * cos(theta) / (m_cart + m_pole)
        x += tau * x_dot;  x_dot += tau * x_acc;  theta += tau * theta_dot;  theta_dot += tau * theta_acc
        terminated = |x| > 2.4 or |theta| > 12 degrees
        reward     = 1 on every step, the terminating one included (as in Gymnasium)

    ``state = [x, x_dot, theta, theta_dot]`` ``[N, 4]`` float64 (l is half the pole's length),
    ``action`` ``[N]`` in {0, 1}. Written in few tensor operations, the constants divided out
    beforehand (``addcmul(a, b, c, value=k)`` is ``a + k * b * c``): 16 a step, where the formulas
    as written take 31, and on a GPU each is a kernel. The result differs from Gymnasium's in the
    last bits of float64 (tests/test_torch_envs.py: within 1e-5, step for step).
    """
    force_over_mass, four_thirds_l, limits = _cartpole_constants(state.device)
    _, x_dot, theta, theta_dot = state.unbind(-1)
    cos_theta, sin_theta = torch.cos(theta), torch.sin(theta)
    temp = torch.addcmul(force_over_mass[action], theta_dot.square(), sin_theta, value=POLE_MASS_LENGTH / TOTAL_MASS)
    numerator = torch.addcmul(GRAVITY * sin_theta, cos_theta, temp, value=-1.0)
    # l * (4/3 - m_pole * cos^2 / M)
    denominator = torch.addcmul(four_thirds_l, cos_theta, cos_theta, value=-POLE_HALF_LENGTH * POLE_MASS / TOTAL_MASS)
    theta_acc = numerator / denominator
    x_acc = torch.addcmul(temp, theta_acc, cos_theta, value=-POLE_MASS_LENGTH / TOTAL_MASS)
    # every variable plus tau times its derivative
    next_state = torch.add(state, torch.stack([x_dot, x_acc, theta_dot, theta_acc], dim=-1), alpha=TAU)
    # |x| > 2.4 or |theta| > 12 degrees: columns 0 and 2 against their thresholds
    terminated = (next_state[:, ::2].abs() > limits).any(-1)
    return next_state, torch.ones_like(temp, dtype=torch.float32), terminated


def float_state(state: Tensor) -> Tensor:
    """The state itself as the observation, in float32."""
    return state.float()


class TorchCartPole(TorchVecEnv):
    """CartPole-v1 (``cartpole_step``): push the cart left (0) or right (1) to keep the pole up."""

    max_episode_steps = 500
    reset_low = (-0.05,) * 4
    reset_high = (0.05,) * 4
    dynamics = staticmethod(cartpole_step)
    observe = staticmethod(float_state)

    @staticmethod
    def make_spaces() -> tuple[gym.spaces.Box, gym.Space]:
        return _box([X_THRESHOLD * 2, np.inf, THETA_THRESHOLD * 2, np.inf]), gym.spaces.Discrete(2)


# --- Pendulum-v1 ---------------------------------------------------------------------------

PENDULUM_G = 10.0
PENDULUM_MASS = 1.0
PENDULUM_LENGTH = 1.0
PENDULUM_DT = 0.05
PENDULUM_MAX_SPEED = 8.0
PENDULUM_MAX_TORQUE = 2.0


def angle_normalize(theta: Tensor) -> Tensor:
    """``theta`` wrapped into [-pi, pi)."""
    return torch.remainder(theta + math.pi, 2 * math.pi) - math.pi


def pendulum_step(state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Torque-limited pendulum swing-up, as in Gymnasium's Pendulum-v1 (theta = 0 is upright).

        u          = clip(action, -2, 2)
        cost       = angle_normalize(theta)^2 + 0.1 * theta_dot^2 + 0.001 * u^2
        theta_dot' = clip(theta_dot + (3 g / (2 l) * sin(theta) + 3 / (m l^2) * u) * dt, -8, 8)
        theta'     = theta + theta_dot' * dt
        reward     = -cost;  never terminates (the time limit ends episodes)

    ``state = [theta, theta_dot]`` ``[N, 2]`` float64, ``action`` ``[N, 1]`` torque.
    """
    theta, theta_dot = state.unbind(-1)
    # the two terms in u are float32, like Gymnasium's: under NumPy 2's promotion rules its
    # float32 action times a Python float stays float32
    u = action[:, 0].float().clamp(-PENDULUM_MAX_TORQUE, PENDULUM_MAX_TORQUE)
    control_cost = (0.001 * u.square()).double()
    torque_term = (3.0 / (PENDULUM_MASS * PENDULUM_LENGTH**2) * u).double()
    cost = angle_normalize(theta).square() + 0.1 * theta_dot.square() + control_cost
    gravity_term = 3 * PENDULUM_G / (2 * PENDULUM_LENGTH) * torch.sin(theta)
    new_theta_dot = (theta_dot + (gravity_term + torque_term) * PENDULUM_DT).clamp(-PENDULUM_MAX_SPEED, PENDULUM_MAX_SPEED)
    new_theta = theta + new_theta_dot * PENDULUM_DT
    return torch.stack([new_theta, new_theta_dot], dim=-1), -cost, torch.zeros_like(theta, dtype=torch.bool)


def pendulum_observe(state: Tensor) -> Tensor:
    """``[cos(theta), sin(theta), theta_dot]`` float32."""
    theta, theta_dot = state.unbind(-1)
    return torch.stack([torch.cos(theta), torch.sin(theta), theta_dot], dim=-1).float()


class TorchPendulum(TorchVecEnv):
    """Pendulum-v1 (``pendulum_step``): swing the pendulum up and hold it with a bounded torque."""

    max_episode_steps = 200
    reset_low = (-math.pi, -1.0)
    reset_high = (math.pi, 1.0)
    dynamics = staticmethod(pendulum_step)
    observe = staticmethod(pendulum_observe)

    @staticmethod
    def make_spaces() -> tuple[gym.spaces.Box, gym.Space]:
        torque = gym.spaces.Box(-PENDULUM_MAX_TORQUE, PENDULUM_MAX_TORQUE, (1,), dtype=np.float32)
        return _box([1.0, 1.0, PENDULUM_MAX_SPEED]), torque


# --- Acrobot-v1 ----------------------------------------------------------------------------

ACROBOT_DT = 0.2
LINK_LENGTH_1 = 1.0
LINK_MASS_1 = 1.0
LINK_MASS_2 = 1.0
LINK_COM_1 = 0.5  # position of each link's center of mass along it
LINK_COM_2 = 0.5
LINK_MOI = 1.0  # moment of inertia of either link
ACROBOT_GRAVITY = 9.8
MAX_VEL_1 = 4 * math.pi
MAX_VEL_2 = 9 * math.pi


def acrobot_derivatives(state: Tensor, torque: Tensor) -> Tensor:
    """Equations of motion of the acrobot, the book version: Sutton & Barto, "Reinforcement
    Learning: An Introduction" (1998), section 11.3, after Spong (1995); as Gymnasium's
    ``AcrobotEnv._dsdt`` with ``book_or_nips = "book"``. Sutton's "Generalization in
    reinforcement learning" (NIPS 1996) lacks the ``m2 l1 lc2 dtheta1^2 sin(theta2)`` term.

        d1 = m1 lc1^2 + m2 (l1^2 + lc2^2 + 2 l1 lc2 cos(theta2)) + I1 + I2
        d2 = m2 (lc2^2 + l1 lc2 cos(theta2)) + I2
        phi2 = m2 lc2 g cos(theta1 + theta2 - pi/2)
        phi1 = -m2 l1 lc2 dtheta2^2 sin(theta2) - 2 m2 l1 lc2 dtheta2 dtheta1 sin(theta2)
               + (m1 lc1 + m2 l1) g cos(theta1 - pi/2) + phi2
        ddtheta2 = (torque + d2 / d1 phi1 - m2 l1 lc2 dtheta1^2 sin(theta2) - phi2)
                   / (m2 lc2^2 + I2 - d2^2 / d1)
        ddtheta1 = -(d2 ddtheta2 + phi1) / d1

    ``state = [theta1, theta2, dtheta1, dtheta2]`` ``[N, 4]``; returns its time derivative.
    """
    m1, m2, l1, lc1, lc2, i1, i2, g = (
        LINK_MASS_1, LINK_MASS_2, LINK_LENGTH_1, LINK_COM_1, LINK_COM_2, LINK_MOI, LINK_MOI, ACROBOT_GRAVITY
    )
    theta1, theta2, dtheta1, dtheta2 = state.unbind(-1)
    cos_theta2, sin_theta2 = torch.cos(theta2), torch.sin(theta2)
    d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * cos_theta2) + i1 + i2
    d2 = m2 * (lc2**2 + l1 * lc2 * cos_theta2) + i2
    phi2 = m2 * lc2 * g * torch.cos(theta1 + theta2 - math.pi / 2.0)
    phi1 = (
        -m2 * l1 * lc2 * dtheta2.square() * sin_theta2
        - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * sin_theta2
        + (m1 * lc1 + m2 * l1) * g * torch.cos(theta1 - math.pi / 2)
        + phi2
    )
    ddtheta2 = (torque + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1.square() * sin_theta2 - phi2) / (
        m2 * lc2**2 + i2 - d2.square() / d1
    )
    ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
    return torch.stack([dtheta1, dtheta2, ddtheta1, ddtheta2], dim=-1)


def rk4(derivatives: Callable[[Tensor], Tensor], y: Tensor, dt: float) -> Tensor:
    """One classic fourth-order Runge-Kutta step of ``dy/dt = derivatives(y)``.

        k1 = f(y);  k2 = f(y + dt/2 k1);  k3 = f(y + dt/2 k2);  k4 = f(y + dt k3)
        y' = y + dt/6 (k1 + 2 k2 + 2 k3 + k4)
    """
    half = dt / 2.0
    k1 = derivatives(y)
    k2 = derivatives(y + half * k1)
    k3 = derivatives(y + half * k2)
    k4 = derivatives(y + dt * k3)
    return y + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


def wrap(x: Tensor, low: float, high: float) -> Tensor:
    """``x`` moved by whole periods ``high - low`` into [low, high] (Gymnasium's ``wrap``)."""
    period = high - low
    above = torch.ceil((x - high) / period).clamp(min=0)
    below = torch.ceil((low - x) / period).clamp(min=0)
    return x - above * period + below * period


def acrobot_step(state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Acrobot swing-up, as in Gymnasium's Acrobot-v1 (torque noise 0, its default).

        torque = action - 1                     (actions {0, 1, 2} -> torques {-1, 0, +1})
        state' = rk4(acrobot_derivatives, state, dt = 0.2)
        theta1', theta2' wrapped into [-pi, pi];  dtheta1' clipped to 4 pi, dtheta2' to 9 pi
        terminated = -cos(theta1') - cos(theta1' + theta2') > 1   (the tip above the bar)
        reward = 0 on the terminating step, -1 otherwise

    ``state = [theta1, theta2, dtheta1, dtheta2]`` ``[N, 4]`` float64, ``action`` ``[N]``.
    """
    torque = action.double() - 1.0
    moved = rk4(lambda s: acrobot_derivatives(s, torque), state, ACROBOT_DT)
    theta1, theta2, dtheta1, dtheta2 = moved.unbind(-1)
    next_state = torch.stack(
        [
            wrap(theta1, -math.pi, math.pi),
            wrap(theta2, -math.pi, math.pi),
            dtheta1.clamp(-MAX_VEL_1, MAX_VEL_1),
            dtheta2.clamp(-MAX_VEL_2, MAX_VEL_2),
        ],
        dim=-1,
    )
    theta1, theta2 = next_state[:, 0], next_state[:, 1]
    terminated = -torch.cos(theta1) - torch.cos(theta2 + theta1) > 1.0
    return next_state, torch.where(terminated, 0.0, -1.0).double(), terminated


def acrobot_observe(state: Tensor) -> Tensor:
    """``[cos(theta1), sin(theta1), cos(theta2), sin(theta2), dtheta1, dtheta2]`` float32."""
    theta1, theta2, dtheta1, dtheta2 = state.unbind(-1)
    return torch.stack(
        [torch.cos(theta1), torch.sin(theta1), torch.cos(theta2), torch.sin(theta2), dtheta1, dtheta2], dim=-1
    ).float()


class TorchAcrobot(TorchVecEnv):
    """Acrobot-v1 (``acrobot_step``): swing the tip of a two-link chain above the bar."""

    max_episode_steps = 500
    reset_low = (-0.1,) * 4
    reset_high = (0.1,) * 4
    dynamics = staticmethod(acrobot_step)
    observe = staticmethod(acrobot_observe)

    def initial_state(self) -> Tensor:
        return super().initial_state().float().double()  # Gymnasium stores Acrobot's reset state as float32

    @staticmethod
    def make_spaces() -> tuple[gym.spaces.Box, gym.Space]:
        return _box([1.0, 1.0, 1.0, 1.0, MAX_VEL_1, MAX_VEL_2]), gym.spaces.Discrete(3)


# --- MountainCar-v0 and MountainCarContinuous-v0 -------------------------------------------

MIN_POSITION = -1.2
MAX_POSITION = 0.6
MAX_SPEED = 0.07
HILL_GRAVITY = 0.0025
DISCRETE_FORCE = 0.001
DISCRETE_GOAL = 0.5
CONTINUOUS_POWER = 0.0015
CONTINUOUS_GOAL = 0.45


def move_car(position: Tensor, velocity: Tensor) -> tuple[Tensor, Tensor]:
    """Moore's mountain-car kinematics after the velocity update: clip the speed, move, stop
    at the left wall (the right edge is past the goal).

        velocity' = clip(velocity, -0.07, 0.07)
        position' = clip(position + velocity', -1.2, 0.6)
        velocity' = 0 if position' == -1.2 and velocity' < 0
    """
    velocity = velocity.clamp(-MAX_SPEED, MAX_SPEED)
    position = (position + velocity).clamp(MIN_POSITION, MAX_POSITION)
    velocity = torch.where((position == MIN_POSITION) & (velocity < 0), 0.0, velocity)
    return position, velocity


def mountain_car_step(state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mountain car: Moore, "Efficient memory-based learning for robot control" (PhD thesis,
    Cambridge 1990); the version of Sutton & Barto's book, as Gymnasium's MountainCar-v0.

        velocity' = velocity + (action - 1) * 0.001 - 0.0025 * cos(3 position),  then move_car
        terminated = position' >= 0.5 and velocity' >= 0
        reward = -1 on every step

    ``state = [position, velocity]`` ``[N, 2]`` float64, ``action`` ``[N]`` in {0, 1, 2}.
    """
    position, velocity = state.unbind(-1)
    velocity = velocity + ((action.double() - 1) * DISCRETE_FORCE + torch.cos(3 * position) * (-HILL_GRAVITY))
    position, velocity = move_car(position, velocity)
    terminated = (position >= DISCRETE_GOAL) & (velocity >= 0)
    return torch.stack([position, velocity], dim=-1), torch.full_like(position, -1.0), terminated


def continuous_mountain_car_step(state: Tensor, action: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mountain car with a continuous force, as Gymnasium's MountainCarContinuous-v0 (Moore 1990).

        force     = clip(action, -1, 1)
        velocity' = velocity + force * 0.0015 - 0.0025 * cos(3 position),  then move_car
        terminated = position' >= 0.45 and velocity' >= 0
        reward = 100 * terminated - 0.1 * action^2   (the cost uses the unclipped action)

    ``state = [position, velocity]`` ``[N, 2]`` float64, ``action`` ``[N, 1]``. Gymnasium keeps
    this state in float32 and does part of the update in float32; the float64 math here
    matches it to about 2e-6.
    """
    position, velocity = state.unbind(-1)
    a = action[:, 0].double()
    velocity = velocity + (a.clamp(-1.0, 1.0) * CONTINUOUS_POWER - HILL_GRAVITY * torch.cos(3 * position))
    position, velocity = move_car(position, velocity)
    terminated = (position >= CONTINUOUS_GOAL) & (velocity >= 0)
    reward = 100.0 * terminated.double() - 0.1 * a.square()
    return torch.stack([position, velocity], dim=-1), reward, terminated


class TorchMountainCar(TorchVecEnv):
    """MountainCar-v0 (``mountain_car_step``): rock an underpowered car up to the flag."""

    max_episode_steps = 200
    reset_low = (-0.6, 0.0)
    reset_high = (-0.4, 0.0)
    dynamics = staticmethod(mountain_car_step)
    observe = staticmethod(float_state)

    @staticmethod
    def make_spaces() -> tuple[gym.spaces.Box, gym.Space]:
        low = np.array([MIN_POSITION, -MAX_SPEED], dtype=np.float32)
        high = np.array([MAX_POSITION, MAX_SPEED], dtype=np.float32)
        return gym.spaces.Box(low, high, dtype=np.float32), gym.spaces.Discrete(3)


class TorchMountainCarContinuous(TorchMountainCar):
    """MountainCarContinuous-v0 (``continuous_mountain_car_step``): same hill, force in [-1, 1]."""

    max_episode_steps = 999
    dynamics = staticmethod(continuous_mountain_car_step)

    @staticmethod
    def make_spaces() -> tuple[gym.spaces.Box, gym.Space]:
        obs_space, _ = TorchMountainCar.make_spaces()
        return obs_space, gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)


# --- factory -------------------------------------------------------------------------------

TORCH_ENVS: dict[str, type[TorchVecEnv]] = {
    "CartPole-v1": TorchCartPole,
    "Pendulum-v1": TorchPendulum,
    "Acrobot-v1": TorchAcrobot,
    "MountainCar-v0": TorchMountainCar,
    "MountainCarContinuous-v0": TorchMountainCarContinuous,
}
TORCH_ENV_IDS = tuple(TORCH_ENVS)


def check_torch_env(env_id: object) -> None:
    """Raise ``EnvError`` (with close matches) unless ``env_id`` has a batched torch version."""
    if env_id not in TORCH_ENVS:
        close = difflib.get_close_matches(str(env_id), TORCH_ENV_IDS, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}? " if close else ""
        raise EnvError(f"no batched torch version of {env_id!r}; {hint}supported: {', '.join(TORCH_ENV_IDS)}")


def make_torch_vec_env(env_id: str, num_envs: int, seed: int = 0, device: str | torch.device = "cpu") -> TorchVecEnv:
    """The batched torch version of the Gymnasium env ``env_id``, reset with ``seed``."""
    check_torch_env(env_id)
    return TORCH_ENVS[env_id](num_envs, seed, device)
