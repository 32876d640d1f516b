"""What a run hands the surrogate env (``EnvParams``): its tracks with a reference line for the car,
the car, the domain randomisation, the reward, a fitted residual and sensor noise."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from surrogate import laptime
from surrogate.car import PARAM_NAMES, CarParams, validate_car_params
from surrogate.env import EnvConfig, EnvParams
from surrogate.observation import sensor_noise_table
from surrogate.residual import Residual
from surrogate.reward import RewardWeights
from surrogate.track import Track, make_track, stack_tracks
from surrogate.track_io import DEFAULT_TRACK, TrackData, load_track


def car_limits(car: CarParams, cfg: EnvConfig) -> laptime.LapLimits:
    """The point-mass limits of ``car`` as the env drives it: its top speed capped at the env's
    speed limiter, where there is one."""
    limits = laptime.LapLimits.from_car(car)
    if cfg.speed_limit and cfg.speed_limit < limits.v_max:
        limits = dataclasses.replace(limits, v_max=float(cfg.speed_limit))
    return limits


def reference_for(data: TrackData, car: CarParams, cfg: EnvConfig, ref: laptime.Reference | None = None):
    """Reference line and speed profile on the env's track points, and the reference: the line of
    ``cfg.reference`` (minimum curvature or minimum time) for this car under the env's speed
    limiter, timed under it (the lap time is the limit), or ``ref`` (a line learned from laps,
    ``surrogate.racing_line``).

    The speed profile on the points (what the policy observes ahead and the baseline aims at) is
    the car's own, uncapped: under a limiter that holds the car at one speed a capped profile
    would read the same almost everywhere, where the car's own says how hard each corner is (and
    drivers trained before the limiter entered the limit saw it)."""
    capped, own = car_limits(car, cfg), laptime.LapLimits.from_car(car)
    if ref is None:
        ref = laptime.reference_line(data, capped, vehicle_width=2.0 * cfg.car_half_width, objective=cfg.reference)
    if own != capped:
        ref = dataclasses.replace(ref, speed=laptime.reference_on(data, ref.resampled, ref.resampled_offsets, own).speed)
    # Carry the per-point reference over to the env's own resampling by arc-length fraction:
    # both parametrise the same closed curve.
    seg = np.hypot(np.diff(data.x, append=data.x[0]), np.diff(data.y, append=data.y[0]))
    frac_data = np.concatenate([[0.0], np.cumsum(seg)[:-1]]) / seg.sum()
    frac_env = np.arange(cfg.n_track_points) / cfg.n_track_points
    per = lambda a: np.interp(frac_env, frac_data, a, period=1.0)  # noqa: E731
    return per(ref.offsets), per(ref.speed), ref


def build_track(data: TrackData, car: CarParams, cfg: EnvConfig,
                ref: laptime.Reference | None = None) -> tuple[Track, laptime.Reference]:
    offsets, speeds, ref = reference_for(data, car, cfg, ref)
    return make_track(data, n_points=cfg.n_track_points, ref_offset=offsets, ref_speed=speeds), ref


def make_params(
    tracks: list[str | Path | TrackData] | None = None,
    car: CarParams | None = None,
    config: EnvConfig = EnvConfig(),
    car_spread: float | dict[str, float] = 0.0,
    start_speed_frac: float = 0.5,
    start_lateral_frac: float = 0.3,
    standing_start_prob: float = 0.0,
    reward_weights: RewardWeights | None = None,
    residual: Residual | None = None,
    sensor_noise: Mapping | None = None,
    actor_noise: Mapping | None = None,
    references: Sequence[laptime.Reference | None] | None = None,
) -> tuple[EnvParams, list[laptime.Reference]]:
    """Env parameters for track names/files/data (bundled default if none) and a car; also the
    lap-time references of each track for that car. ``car_spread``: one fraction for every car
    parameter, or a dict parameter -> fraction. ``sensor_noise``: the noise added to what the policy
    observes, by speed (``surrogate.observation.sensor_noise_table``'s dict; absent or all zero: none);
    ``actor_noise``: the same, added to the actor's view only (``RacingEnv.actor_view``).
    ``references``: per track, a reference line to use instead of the minimum-curvature one (None:
    that one), e.g. ``surrogate.racing_line.line_from_laps``'s."""
    table = sensor_noise_table(sensor_noise) if sensor_noise else None
    actor_table = sensor_noise_table(actor_noise) if actor_noise else None
    car = validate_car_params(car if car is not None else CarParams())
    datas = [t if isinstance(t, TrackData) else load_track(t) for t in (tracks or [DEFAULT_TRACK])]
    references = list(references) if references is not None else [None] * len(datas)
    if len(references) != len(datas):
        raise ValueError(f"{len(references)} reference lines for {len(datas)} tracks; give one (or None) per track")
    built = [build_track(d, car, config, r) for d, r in zip(datas, references)]
    params = EnvParams(
        tracks=stack_tracks([b[0] for b in built]),
        car=car,
        car_spread=(jnp.asarray([car_spread.get(n, 0.0) for n in PARAM_NAMES], jnp.float32)
                    if isinstance(car_spread, dict) else jnp.float32(car_spread)),
        start_speed_frac=jnp.float32(start_speed_frac),
        standing_start_prob=jnp.float32(standing_start_prob),
        start_lateral_frac=jnp.float32(start_lateral_frac),
        reward=reward_weights if reward_weights is not None else RewardWeights(),
        residual=residual,
        sensor_noise=None if table is None else jnp.asarray(table, jnp.float32),
        actor_noise=None if actor_table is None else jnp.asarray(actor_table, jnp.float32),
    )
    return params, [b[1] for b in built]
