"""The observation the policy sees, computed from telemetry-like quantities only.

Both backends call ``observe``: the surrogate with its simulated car, the real game with the
fields of a telemetry frame (pose, speed, accelerations, yaw rate) projected on the same track.
Nothing here may read simulator-only state (slip, tyre forces, the car's parameters): the policy
must not be able to tell the backends apart except through the physics.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from surrogate.fastmath import fast_sincos
from surrogate.track import Track, TrackPos, TrackTables, lookahead_tables, sample_points, single_tables

# Scales that bring every feature to order one; fixed constants, not fitted, so that a policy
# trained on one car or track sees the same units on another.
SPEED_SCALE = 50.0  # m/s
ACCEL_SCALE = 10.0  # m/s^2
YAW_RATE_SCALE = 1.0  # rad/s
WIDTH_SCALE = 10.0  # m
CURVATURE_SCALE = 20.0  # 1/m -> a 50 m radius reads 0.4
DIST_SCALE = 100.0  # m


@dataclasses.dataclass(frozen=True)
class ObsConfig:
    """Which lookahead points the policy sees (metres ahead along the track)."""

    lookahead_m: tuple[float, ...] = (5.0, 10.0, 20.0, 35.0, 50.0, 70.0, 100.0, 140.0, 200.0)
    include_ref_speed: bool = True
    # Whether the policy sees the accelerations and the yaw rate (IMU_FIELDS). A game whose IMU
    # chatters (CarRacing's, above 40 m/s) sends a policy trained on the surrogate's smooth signals
    # readings it has never seen; without them it steers from the pose, the speed and its own
    # previous controls, which every game measures cleanly.
    imu: bool = True
    # Time constant (s) of a first-order low-pass on the accelerations and the yaw rate before the
    # policy sees them; 0: raw. A game whose tyre forces oscillate from tick to tick (CarRacing above
    # 40 m/s: lateral acceleration swinging by 27-67 m/s^2 with a period of about 4 frames) feeds a
    # policy trained on the surrogate's smooth signals readings it never saw; 0.1 s cuts that swing
    # to a third. The filter runs in the episode's bookkeeping (``filter_imu``), so the surrogate and
    # the game filter alike and the policy learns the lag it adds.
    imu_filter_s: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.imu_filter_s <= 2.0:
            raise ValueError(f"ObsConfig.imu_filter_s = {self.imu_filter_s} s; expected a time constant in [0, 2] (0: no filter)")

    @property
    def size(self) -> int:
        k = len(self.lookahead_m)
        per_point = 4 + (1 if self.include_ref_speed else 0)  # curvature, ref dx, ref dy, half-width (+ ref speed)
        return 12 - (0 if self.imu else len(IMU_FIELDS)) + per_point * k


@struct.dataclass
class Telemetry:
    """The measured quantities the observation is built from (scalars per car)."""

    x: jax.Array
    y: jax.Array
    yaw: jax.Array
    speed: jax.Array
    accel_long: jax.Array
    accel_lat: jax.Array
    yaw_rate: jax.Array


# Telemetry channels a game measures with noise (``EnvParams.sensor_noise``). A game's accelerations
# are often finite differences of a physics engine's velocities, which jitter from tick to tick, and
# how much can depend on speed: CarRacing's lateral acceleration is steady below 40 m/s and jitters by
# 23-135 m/s^2 (one standard deviation) above, its yaw rate by 0.3-1.7 rad/s. The surrogate's are
# smooth, and a policy trained on smooth ones steers at the game's jitter.
SENSOR_NOISE_FIELDS = ("speed", "accel_long", "accel_lat", "yaw_rate")
IMU_FIELDS = ("accel_long", "accel_lat", "yaw_rate")  # what ObsConfig.imu = False leaves out
SENSOR_NOISE_SPEEDS = "speed_mps"  # the key of the speeds the standard deviations are given at


class SensorNoiseError(ValueError):
    """A sensor-noise table that cannot be used: says which entry and what is expected."""


def sensor_noise_table(noise: Mapping) -> np.ndarray | None:
    """A (K, 1 + 4) table from ``{"speed_mps": [K increasing speeds], channel: [K standard deviations
    in SI units], ...}`` (channels of SENSOR_NOISE_FIELDS; absent ones 0): the speeds in column 0.
    None when every deviation is 0 (no noise)."""
    if not isinstance(noise, Mapping):
        raise SensorNoiseError(f"sensor noise must be an object of {SENSOR_NOISE_SPEEDS} and channel lists, "
                               f"got {type(noise).__name__}")
    unknown = sorted(set(noise) - {SENSOR_NOISE_SPEEDS, *SENSOR_NOISE_FIELDS}, key=str)
    if unknown:
        raise SensorNoiseError(f"sensor noise names {unknown}; expected {SENSOR_NOISE_SPEEDS} and channels among "
                               f"{list(SENSOR_NOISE_FIELDS)}")

    def numbers(key):
        v = noise.get(key)
        ok = isinstance(v, (list, tuple)) and len(v) > 0 and all(
            isinstance(a, (int, float)) and not isinstance(a, bool) and np.isfinite(a) for a in v)
        if not ok:
            raise SensorNoiseError(f"sensor noise {key!r} must be a non-empty list of finite numbers, got {v!r}")
        return np.asarray(v, np.float64)

    speeds = numbers(SENSOR_NOISE_SPEEDS)
    if np.any(speeds < 0) or np.any(np.diff(speeds) <= 0):
        raise SensorNoiseError(f"sensor noise {SENSOR_NOISE_SPEEDS!r} must be increasing speeds >= 0 (m/s), "
                               f"got {speeds.tolist()}")
    cols = [speeds]
    for name in SENSOR_NOISE_FIELDS:
        col = numbers(name) if name in noise else np.zeros_like(speeds)
        if col.shape != speeds.shape or np.any(col < 0):
            raise SensorNoiseError(f"sensor noise {name!r} must hold {speeds.size} standard deviations >= 0 (one "
                                   f"per speed in {SENSOR_NOISE_SPEEDS!r}), got {col.tolist()}")
        cols.append(col)
    table = np.stack(cols, axis=1)
    return table if np.any(table[:, 1:] > 0) else None


def _spread_at(table: jax.Array, speed, n: int) -> jax.Array:
    """The standard deviations of the first ``n`` SENSOR_NOISE_FIELDS in ``table`` at ``speed``
    (linear between the table's speeds, flat beyond): shape speed.shape + (n,)."""
    return jnp.stack([jnp.interp(speed, table[:, 0], table[:, 1 + i]) for i in range(n)], axis=-1)


def noisy_telemetry(tel: Telemetry, table: jax.Array, key: jax.Array) -> Telemetry:
    """``tel`` with white Gaussian noise added to the SENSOR_NOISE_FIELDS channels, each with the
    standard deviation of ``table`` (``sensor_noise_table``) at the car's speed (linear between the
    table's speeds, flat beyond); the speed stays >= 0."""
    std = _spread_at(table, tel.speed, len(SENSOR_NOISE_FIELDS))
    e = jax.random.normal(key, (len(SENSOR_NOISE_FIELDS),), jnp.float32) * std
    return tel.replace(speed=jnp.maximum(tel.speed + e[0], 0.0), accel_long=tel.accel_long + e[1],
                       accel_lat=tel.accel_lat + e[2], yaw_rate=tel.yaw_rate + e[3])


def noisy_observation(obs: jax.Array, table: jax.Array, key: jax.Array, cfg: ObsConfig) -> jax.Array:
    """Observations ``obs`` (..., cfg.size) of ``observe`` with the white noise of ``table``
    (``sensor_noise_table``) at each one's observed speed added to its speed and, with cfg.imu, its
    accelerations and yaw rate, in the observation's units; the speed stays >= 0. What the actor
    alone sees under ``EnvParams.actor_noise``: the critics keep the clean observation."""
    speed = obs[..., 0] * SPEED_SCALE
    scales = (SPEED_SCALE, ACCEL_SCALE, ACCEL_SCALE, YAW_RATE_SCALE)[:1 + (len(IMU_FIELDS) if cfg.imu else 0)]
    std = _spread_at(table, speed, len(scales)) / jnp.asarray(scales, jnp.float32)
    noisy = obs[..., :len(scales)] + std * jax.random.normal(key, std.shape, obs.dtype)
    noisy = noisy.at[..., 0].set(jnp.maximum(noisy[..., 0], 0.0))
    return jnp.concatenate([noisy, obs[..., len(scales):]], axis=-1)


def imu_vector(tel: Telemetry) -> jax.Array:
    """The IMU_FIELDS of ``tel`` as one (3,) vector."""
    return jnp.stack([tel.accel_long, tel.accel_lat, tel.yaw_rate]).astype(jnp.float32)


def filter_imu(cfg: ObsConfig, prev: jax.Array, tel: Telemetry, dt) -> jax.Array:
    """The low-passed IMU after a step of ``dt`` seconds: ``prev`` (the last filtered vector) moved
    towards ``tel``'s readings by dt / (imu_filter_s + dt); the readings themselves without a filter."""
    raw = imu_vector(tel)
    if cfg.imu_filter_s == 0.0:
        return raw
    return prev + dt / (cfg.imu_filter_s + dt) * (raw - prev)


def with_imu(tel: Telemetry, imu: jax.Array) -> Telemetry:
    """``tel`` with its IMU_FIELDS replaced by the (3,) vector ``imu`` (``filter_imu``'s output)."""
    return tel.replace(accel_long=imu[0], accel_lat=imu[1], yaw_rate=imu[2])


def observe(track: Track, pos: TrackPos, tel: Telemetry, prev_action: jax.Array, cfg: ObsConfig) -> jax.Array:
    """Observation vector (float32, shape (cfg.size,)).

    Layout: speed, accel_long, accel_lat, yaw_rate (these three only with cfg.imu), lateral offset / half-width, lateral offset from
    the reference line, sin and cos of the heading error, the three previous controls, distance to
    the left and right edges; then per lookahead point: curvature, reference-line point in the car
    frame (dx, dy), local half-width, and optionally the reference speed.
    """
    return observe_tables(single_tables(track), 0, pos, tel, prev_action, cfg)


def observe_tables(
    tables: TrackTables, track_id, pos: TrackPos, tel: Telemetry, prev_action: jax.Array, cfg: ObsConfig, here=None
) -> jax.Array:
    """``observe`` on track ``track_id`` of packed tables (what the batched env calls).

    ``here``: the ``PointSample`` at pos.s if the caller has it already (``project_tables`` returns it)."""
    if here is None:
        here = sample_points(tables, track_id, pos.s)
    la = lookahead_tables(tables, track_id, pos, tel.x, tel.y, tel.yaw, cfg.lookahead_m)
    return _assemble(pos, tel, prev_action, here.field("w_left"), here.field("w_right"), here.field("ref_offset"), la, cfg)


def _assemble(pos: TrackPos, tel: Telemetry, prev_action, w_left, w_right, ref, la: dict, cfg: ObsConfig) -> jax.Array:
    half = 0.5 * (w_left + w_right)
    sin_he, cos_he = fast_sincos(pos.heading_error)
    imu = [tel.accel_long / ACCEL_SCALE, tel.accel_lat / ACCEL_SCALE, tel.yaw_rate / YAW_RATE_SCALE] if cfg.imu else []
    base = jnp.stack(
        [
            tel.speed / SPEED_SCALE,
            *imu,
            pos.lateral / half,
            (pos.lateral - ref) / WIDTH_SCALE,
            sin_he,
            cos_he,
            prev_action[0],
            prev_action[1],
            prev_action[2],
            (w_left - pos.lateral) / WIDTH_SCALE,
        ]
    )
    # Distance to the right edge is implied by the left one and the half-width point feature.
    feats = [
        la["curvature"] * CURVATURE_SCALE,
        la["ref_dx"] / DIST_SCALE,
        la["ref_dy"] / DIST_SCALE,
        0.5 * (la["w_left"] + la["w_right"]) / WIDTH_SCALE,
    ]
    if cfg.include_ref_speed:
        feats.append(la["ref_speed"] / SPEED_SCALE)
    return jnp.concatenate([base] + feats).astype(jnp.float32)
