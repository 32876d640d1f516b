"""The envs a ``train_crossq.py`` run trains and evaluates on: the default car on a track, or a
fitted surrogate (``surrogate.surrogate_file``) with its control period, input delay and
parameter spread."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax.numpy as jnp

from racerl_jax.train_config import TrainConfig
from surrogate.car import PARAM_NAMES, CarParams
from surrogate.env import EnvConfig, EnvParams, RacingEnv, make_params
from surrogate.observation import SENSOR_NOISE_SPEEDS
from surrogate.surrogate_file import FittedSurrogate, load_surrogate
from surrogate.track_io import DEFAULT_TRACK, TrackData

# ----------------------------------------------------------------------------- envs


@dataclasses.dataclass
class RacingSetup:
    env: RacingEnv
    params: EnvParams
    eval_env: RacingEnv
    eval_params: EnvParams
    limit_s: float
    eval_steps: int
    track_name: str


def env_config(cfg: TrainConfig, fitted: FittedSurrogate | None, start: str) -> EnvConfig:
    """The env a run trains, evaluates and drives the game with: a fitted surrogate's control
    period (the game's ticks per step) and input delay, or the defaults."""
    extra = {}
    if fitted is not None:
        extra["delay_steps"] = fitted.delay_steps
        if fitted.dt is not None:
            extra["dt"] = fitted.dt
    return EnvConfig(model=cfg.model or "dynamic", start=start, max_episode_steps=cfg.episode_steps,
                     pedals=cfg.pedals, **extra)


def car_spread(cfg: TrainConfig, fitted: FittedSurrogate | None) -> float | dict[str, float]:
    """Domain randomisation: ``--car-spread`` for every parameter, and around a fitted car each
    parameter at least ``--fit-spread`` times its fit uncertainty (the file's ``spread``)."""
    if fitted is None or not fitted.spread or cfg.fit_spread == 0.0:
        return cfg.car_spread
    return {name: min(max(cfg.car_spread, cfg.fit_spread * fitted.spread.get(name, 0.0)), 0.5) for name in PARAM_NAMES}


def sensor_noise(cfg: TrainConfig, fitted: FittedSurrogate | None) -> dict | None:
    """The fitted game's telemetry noise by speed (the file's ``sensor_noise``) times ``--sensor-noise``."""
    if fitted is None or not fitted.sensor_noise or cfg.sensor_noise == 0.0:
        return None
    return {k: v if k == SENSOR_NOISE_SPEEDS else [cfg.sensor_noise * a for a in v]
            for k, v in fitted.sensor_noise.items()}


def build_setup(cfg: TrainConfig) -> RacingSetup:
    """Training env (random starts) and evaluation env (start line, no randomisation), both on
    the same car and track, and the minimum-lap-time reference computed once."""
    fitted = load_surrogate(cfg.surrogate) if cfg.surrogate else None
    car, track = (fitted.car, fitted.track) if fitted else (CarParams(), cfg.track or DEFAULT_TRACK)
    env_cfg = env_config(cfg, fitted, start="random")
    params, refs = make_params([track], car=car, config=env_cfg, car_spread=car_spread(cfg, fitted),
                               reward_weights=cfg.reward, standing_start_prob=cfg.standing_starts,
                               residual=fitted.residual if fitted else None,
                               sensor_noise=sensor_noise(cfg, fitted))
    limit = float(refs[0].lap_time_s)
    eval_steps = cfg.eval_max_steps or int(math.ceil(cfg.eval_laps * limit / 0.6 / env_cfg.dt))
    eval_cfg = dataclasses.replace(env_cfg, start="line", max_episode_steps=eval_steps)
    eval_params = params.replace(car_spread=jnp.zeros_like(params.car_spread))
    name = track.name if isinstance(track, TrackData) else Path(str(track)).stem
    return RacingSetup(RacingEnv(env_cfg), params, RacingEnv(eval_cfg), eval_params, limit, eval_steps, name)
