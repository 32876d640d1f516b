"""The observation the policy sees, computed from telemetry-like quantities only.

Both backends call ``observe``: the surrogate with its simulated car, the real game with the
fields of a telemetry frame (pose, speed, accelerations, yaw rate) projected on the same track.
Nothing here may read simulator-only state (slip, tyre forces, the car's parameters): the policy
must not be able to tell the backends apart except through the physics.
"""
from __future__ import annotations

import dataclasses

from flax import struct
import jax
import jax.numpy as jnp

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

    @property
    def size(self) -> int:
        k = len(self.lookahead_m)
        per_point = 4 + (1 if self.include_ref_speed else 0)  # curvature, ref dx, ref dy, half-width (+ ref speed)
        return 12 + per_point * k


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


def observe(track: Track, pos: TrackPos, tel: Telemetry, prev_action: jax.Array, cfg: ObsConfig) -> jax.Array:
    """Observation vector (float32, shape (cfg.size,)).

    Layout: speed, accel_long, accel_lat, yaw_rate, lateral offset / half-width, lateral offset from
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
    base = jnp.stack(
        [
            tel.speed / SPEED_SCALE,
            tel.accel_long / ACCEL_SCALE,
            tel.accel_lat / ACCEL_SCALE,
            tel.yaw_rate / YAW_RATE_SCALE,
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
