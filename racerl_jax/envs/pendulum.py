"""Gymnasium's Pendulum-v1 as a pure-JAX functional environment.

Same dynamics, reward, observation, initial-state distribution and 200-step time
limit as ``gymnasium.make("Pendulum-v1")``, written against the functional env
interface the training loop uses (see ``racerl_jax.envs``). It is the reference
task for testing and benchmarking CrossQ without the racing surrogate.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class PendulumParams:
    max_speed: float = 8.0
    max_torque: float = 2.0
    dt: float = 0.05
    g: float = 10.0
    m: float = 1.0
    l: float = 1.0
    # Pendulum-v1 is registered with max_episode_steps=200 (a TimeLimit truncation).
    max_steps: int = struct.field(pytree_node=False, default=200)


@struct.dataclass
class PendulumState:
    theta: jax.Array
    theta_dot: jax.Array
    time: jax.Array  # steps taken in the current episode, int32


def angle_normalize(x: jax.Array) -> jax.Array:
    return ((x + jnp.pi) % (2 * jnp.pi)) - jnp.pi


class Pendulum:
    """Functional Pendulum-v1: one env; vmap ``reset``/``step`` for many."""

    observation_size: int = 3
    action_size: int = 1

    def __init__(self) -> None:
        params = self.default_params()
        self.action_low = np.full((1,), -params.max_torque, np.float32)
        self.action_high = np.full((1,), params.max_torque, np.float32)

    @staticmethod
    def default_params() -> PendulumParams:
        return PendulumParams()

    @staticmethod
    def observe(state: PendulumState) -> jax.Array:
        return jnp.stack([jnp.cos(state.theta), jnp.sin(state.theta), state.theta_dot]).astype(jnp.float32)

    def reset(self, key: jax.Array, params: PendulumParams) -> tuple[jax.Array, PendulumState]:
        # Gymnasium draws theta ~ U(-pi, pi) and theta_dot ~ U(-1, 1).
        high = jnp.array([jnp.pi, 1.0], jnp.float32)
        theta, theta_dot = jax.random.uniform(key, (2,), jnp.float32, -high, high)
        state = PendulumState(theta=theta, theta_dot=theta_dot, time=jnp.zeros((), jnp.int32))
        return self.observe(state), state

    def dynamics(
        self, state: PendulumState, action: jax.Array, params: PendulumParams
    ) -> tuple[PendulumState, jax.Array]:
        """One step without time limit or reset: (next state, reward)."""
        u = jnp.clip(action[0], -params.max_torque, params.max_torque)
        th, thdot = state.theta, state.theta_dot
        cost = angle_normalize(th) ** 2 + 0.1 * thdot**2 + 0.001 * u**2
        new_thdot = thdot + (3 * params.g / (2 * params.l) * jnp.sin(th) + 3.0 / (params.m * params.l**2) * u) * params.dt
        new_thdot = jnp.clip(new_thdot, -params.max_speed, params.max_speed)
        new_th = th + new_thdot * params.dt
        return PendulumState(theta=new_th, theta_dot=new_thdot, time=state.time + 1), -cost

    def step(
        self, key: jax.Array, state: PendulumState, action: jax.Array, params: PendulumParams
    ) -> tuple[jax.Array, PendulumState, jax.Array, jax.Array, jax.Array, dict[str, Any]]:
        next_state, reward = self.dynamics(state, action, params)
        final_obs = self.observe(next_state)
        terminated = jnp.zeros((), bool)  # the pendulum never fails, it only times out
        truncated = next_state.time >= params.max_steps
        done = terminated | truncated
        reset_obs, reset_state = self.reset(key, params)
        obs = jnp.where(done, reset_obs, final_obs)
        state_out = jax.tree.map(lambda r, n: jnp.where(done, r, n), reset_state, next_state)
        return obs, state_out, reward.astype(jnp.float32), terminated, truncated, {"final_obs": final_obs}
