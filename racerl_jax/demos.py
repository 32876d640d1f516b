"""Demonstrations: a classical driver's transitions on the training envs, kept beside the replay
buffer so that a share of every batch comes from them (RLPD, Ball et al. 2023: symmetric sampling).

A policy trained from scratch finds the track's corners one crash at a time; the baseline driver
(``surrogate.baseline``, or a tuning of it from ``drive_baseline.py --tune``) laps a car it is
planned for from the first step. Its transitions show the critics what a lap is worth before the
agent has driven one, and the agent keeps learning from its own as well, so it is not held to the
demonstrator's pace. The demonstrations are driven once, before training, on the same envs (random
starts, the same car randomisation), optionally with Gaussian noise on the driver's actions (off by
default: on a knife-edge fitted car it takes the driver off the track); a resumed run drives the
same ones again (the same key).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from racerl_jax import replay
from racerl_jax.envs import batched_step
from racerl_jax.replay import ReplayBuffer, Transition
from racerl_jax.train_loop import scale_action
from surrogate.baseline import BaselineParams, baseline_action
from surrogate.env import RacingEnv, env_action
from surrogate.track import Track


def agent_action(action: jax.Array, low: np.ndarray, high: np.ndarray, overshoot: float = 0.0) -> jax.Array:
    """The agent's [-1, 1] action that ``train_loop.scale_action`` maps onto this env ``action``:
    its inverse, for an action inside [low, high]."""
    low, high = jnp.asarray(low, jnp.float32), jnp.asarray(high, jnp.float32)
    span = high - low
    return jnp.clip(2.0 * (action - low + overshoot * span) / ((1.0 + 2.0 * overshoot) * span) - 1.0, -1.0, 1.0)


@dataclass
class Demonstrations:
    buffer: ReplayBuffer  # every transition driven, in the agent's action units
    laps: int  # laps completed over all envs
    clean_laps: int
    off_track: int  # steps that ended an episode off the track

    def describe(self) -> str:
        return (f"{int(self.buffer.size)} transitions, {self.laps} laps completed ({self.clean_laps} clean), "
                f"{self.off_track} times off the track")


def collect(env: RacingEnv, params: Any, driver: tuple[Track, BaselineParams], num_envs: int, env_steps: int,
            key: jax.Array, noise: float, overshoot: float = 0.0) -> Demonstrations:
    """``driver`` (a track as the baseline reads it and its parameters: ``surrogate.tuning.baseline_driver``)
    drives ``num_envs`` envs until ``env_steps`` transitions (rounded up to a whole step of every
    env), in one compiled scan."""
    if num_envs < 1 or env_steps < 1:
        raise ValueError(f"demonstrations need num_envs >= 1 and env_steps >= 1, got {num_envs} and {env_steps}")
    iterations = math.ceil(env_steps / num_envs)
    buffer, (laps, clean, off) = _collect(env, num_envs, iterations, params, driver, key,
                                          jnp.asarray(noise, jnp.float32), float(overshoot))
    return Demonstrations(buffer=buffer, laps=int(laps), clean_laps=int(clean), off_track=int(off))


@partial(jax.jit, static_argnums=(0, 1, 2, 7))
def _collect(env: RacingEnv, num_envs: int, iterations: int, params: Any, driver: tuple[Track, BaselineParams],
             key: jax.Array, noise: jax.Array, overshoot: float) -> tuple[ReplayBuffer, tuple[jax.Array, ...]]:
    low, high = np.asarray(env.action_low, np.float32), np.asarray(env.action_high, np.float32)
    track, bp = driver
    step = batched_step(env)

    def drive(state: Any) -> jax.Array:
        return env_action(baseline_action(track, state.pos, env.telemetry(state.car), bp), env.config.pedals)

    k_reset, k_run = jax.random.split(key)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_reset, num_envs), params)
    buffer = replay.init(num_envs * iterations, env.observation_size, env.action_size)

    def body(carry: tuple, k: jax.Array) -> tuple[tuple, tuple]:
        obs, state, buffer = carry
        k_noise, k_step = jax.random.split(k)
        action = agent_action(jax.vmap(drive)(state), low, high, overshoot)
        action = jnp.clip(action + noise * jax.random.normal(k_noise, action.shape), -1.0, 1.0)
        next_obs, state, reward, terminated, truncated, info = step(
            k_step, state, scale_action(action, low, high, overshoot), params)
        buffer = replay.add_batch(buffer, Transition(obs=obs, action=action, reward=reward, next_obs=info["final_obs"],
                                                     terminated=terminated.astype(jnp.float32)))
        lap = info["lap_completed"].astype(bool)
        counts = (jnp.sum(lap), jnp.sum(lap & info["lap_clean"].astype(bool)),
                  jnp.sum(info["off_track"].astype(bool) & (terminated | truncated)))
        return (next_obs, state, buffer), counts

    (_, _, buffer), counts = jax.lax.scan(body, (obs, state, buffer), jax.random.split(k_run, iterations))
    return buffer, tuple(jnp.sum(c) for c in counts)
