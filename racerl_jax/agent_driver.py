"""A trained agent driving the game for a recording (``record_telemetry.py --policy agent``).

Why record with the agent: a surrogate is fitted to what the recordings cover, and a driver trained
on it goes where the recordings never went (CarRacing: the probe stayed below 52 m/s, the agent
trained on its fit reached 96 m/s on the game and lost the car there). Recording the agent on the
game, refitting on both recordings and training again closes that gap where it matters: in the
states the driver itself reaches.

The agent sees the game exactly as its run defined (the same observation settings, control period
and pedals as training and evaluation use: ``train_racing.env_config``) and acts deterministically;
exploration noise, if asked for, is added to steering and to the pedal (throttle - brake) as the
baseline recorder does, so the recording shows the car's response around the agent's own line.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from racerl_jax.saved_agent import SavedAgent, load_agent
from racerl_jax.train_loop import driving_action
from racerl_jax.train_racing import env_config
from surrogate.car import CarParams
from surrogate.env import EnvConfig, env_action, game_controls


@dataclasses.dataclass
class AgentDriver:
    saved: SavedAgent
    env_config: EnvConfig  # the run's env: observation, control period, pedals
    car: CarParams  # the car the run trained on (its reference line is planned for it)

    @classmethod
    def load(cls, path: str | Path) -> "AgentDriver":
        saved = load_agent(path)
        fitted = saved.fitted("record")
        return cls(saved, env_config(saved.config, fitted, start="line"), fitted.car if fitted else CarParams())

    @property
    def pedals(self) -> str:
        return self.env_config.pedals

    def policy(self, low: np.ndarray, high: np.ndarray, obs_shape: tuple[int, ...]):
        """A host function obs -> env action (deterministic), compiled before it is returned (in
        real time a first step that compiles would be late)."""
        agent, key = self.saved.agent, jax.random.PRNGKey(0)
        fn = jax.jit(lambda obs: driving_action(agent, obs, low, high, key))
        jax.block_until_ready(fn(jnp.zeros(obs_shape, jnp.float32)))
        return lambda obs: np.asarray(fn(jnp.asarray(obs, jnp.float32)))

    def with_noise(self, action: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """The env action with (steer, pedal) noise added in the game's controls, clipped to them."""
        ctrl = game_controls(np.asarray(action, np.float32), self.pedals, xp=np)
        noisy = game_controls(env_action(ctrl, "combined", xp=np) + noise, "combined", xp=np)
        return np.asarray(env_action(noisy, self.pedals, xp=np), np.float32)
