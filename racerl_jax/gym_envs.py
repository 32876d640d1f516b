"""Gymnasium faces of the surrogate: a ``gymnasium.vector.VectorEnv`` over N cars (one jitted
call per step for all of them) and a single-car ``gymnasium.Env``, for learners that are not JAX."""
from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.vector import AutoresetMode, VectorEnv
import jax
import jax.numpy as jnp
import numpy as np

from surrogate.env import EnvConfig, EnvParams, RacingEnv, batch_reset
from surrogate.env_params import make_params

# Per-car info keys passed through to Gymnasium, and the mask that says where each is valid.
_INFO_KEYS = {"lap_time": "lap_completed", "lap_clean": "lap_completed", "off_track": None, "speed": None,
              "progress": None, "ref_deviation": None}


def gym_spaces(env: RacingEnv):
    """Observation and action spaces of one car; the real-game env uses the same."""
    obs = gym.spaces.Box(-np.inf, np.inf, (env.observation_size,), np.float32)
    act = gym.spaces.Box(env.action_low, env.action_high, (env.action_size,), np.float32)
    return obs, act


def _default_params(config: EnvConfig, params: EnvParams | None, tracks) -> EnvParams:
    return params if params is not None else make_params(tracks, config=config)[0]


class _JittedEnv:
    """The jitted functional env behind both Gymnasium faces: its key chain and current state."""

    def __init__(self, owner: str, env: RacingEnv, params: EnvParams, reset_fn, step_fn):
        self.owner, self.env, self.params = owner, env, params
        self._reset, self._step = jax.jit(reset_fn), jax.jit(step_fn)
        self.key = jax.random.PRNGKey(0)
        self.state = None

    def reset(self, seed: int | None) -> np.ndarray:
        if seed is not None:
            self.key = jax.random.PRNGKey(seed)
        self.key, k = jax.random.split(self.key)
        obs, self.state = self._reset(k, self.params)
        return np.asarray(obs)

    def step(self, action):
        if self.state is None:
            raise RuntimeError(f"{self.owner}.step called before reset(); call reset() first")
        self.key, k = jax.random.split(self.key)
        obs, self.state, r, term, trunc, info = self._step(k, self.state, jnp.asarray(action, jnp.float32), self.params)
        return obs, r, term, trunc, info


class SurrogateVectorEnv(VectorEnv):
    """N surrogate cars stepped together; finished episodes reset in the same step
    (``info["final_obs"]`` holds their last observation, masked by ``info["_final_obs"]``)."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, num_envs: int, config: EnvConfig = EnvConfig(), params: EnvParams | None = None,
                 tracks: list | None = None):
        self.env = RacingEnv(config)
        self.params = _default_params(config, params, tracks)
        self.num_envs = num_envs
        self.single_observation_space, self.single_action_space = gym_spaces(self.env)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self._jax = _JittedEnv("SurrogateVectorEnv", self.env, self.params,
                               lambda key, p: batch_reset(self.env, key, p, num_envs),
                               self.env.batch_step)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        return self._jax.reset(seed), {}

    def step(self, actions):
        obs, r, term, trunc, info = self._jax.step(actions)
        term, trunc = np.asarray(term), np.asarray(trunc)
        done = term | trunc
        infos: dict[str, Any] = {"final_obs": np.asarray(info["final_obs"]), "_final_obs": done}
        for key, mask in _INFO_KEYS.items():
            infos[key] = np.asarray(info[key])
            infos["_" + key] = np.asarray(info[mask]) if mask else np.ones(self.num_envs, bool)
        return np.asarray(obs), np.asarray(r), term, trunc, infos


class SurrogateEnv(gym.Env):
    """One surrogate car as a standard ``gymnasium.Env`` (reset after termination or truncation)."""

    metadata = {"render_modes": []}

    def __init__(self, config: EnvConfig = EnvConfig(), params: EnvParams | None = None, tracks: list | None = None):
        self.env = RacingEnv(config)
        self.params = _default_params(config, params, tracks)
        self.observation_space, self.action_space = gym_spaces(self.env)
        self._jax = _JittedEnv("SurrogateEnv", self.env, self.params, self.env.reset, self.env.step)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        return self._jax.reset(seed), {}

    def step(self, action):
        _, r, term, trunc, info = self._jax.step(action)
        # The functional env has already started the next episode; Gymnasium's contract is that
        # the caller resets, so hand back the last observation of this one.
        obs = np.asarray(info["final_obs"])
        out = {k: np.asarray(info[k]).item() for k, mask in _INFO_KEYS.items() if mask is None or bool(info[mask])}
        return obs, float(r), bool(term), bool(trunc), out
