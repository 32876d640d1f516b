"""The classical baseline driver: pure pursuit on the reference line plus the reference speed
profile (which already brakes ahead of corners), tracked by a proportional throttle/brake law.

It reads the same telemetry-like quantities as the observation, so it can drive the real game
through the bridge as well as the surrogate. This is the score a user gets without RL.
"""
from __future__ import annotations

from flax import struct
import jax
import jax.numpy as jnp

from surrogate.observation import Telemetry
from surrogate.track import Track, TrackPos, interp


@struct.dataclass
class BaselineParams:
    wheelbase: float = 2.6  # m
    max_steer: float = 0.45  # rad road-wheel angle at full lock
    steer_lock_command: float = 1.0  # the steer command that reaches full lock (CarParams' field)
    lookahead_time: float = 0.8  # s of travel to the pure-pursuit target
    lookahead_min: float = 6.0  # m
    yaw_rate_gain: float = 0.25  # rad of steer per rad/s of yaw-rate shortfall
    edge_margin: float = 2.5  # m: closest the aimed-at line comes to a track edge
    speed_margin: float = 0.92  # fraction of the reference speed aimed at
    speed_preview: float = 0.5  # s: read the speed profile this far ahead so braking starts in time
    speed_gain: float = 0.3  # throttle or brake per m/s of speed error
    accel_scale: float = 8.0  # m/s^2 of acceleration that full throttle or brake stands for


def baseline_params_for(car) -> BaselineParams:
    """Geometry of a ``surrogate.car.CarParams`` for the controller."""
    return BaselineParams(wheelbase=car.lf + car.lr, max_steer=car.max_steer,
                          steer_lock_command=car.steer_lock_command)


def baseline_action(track: Track, pos: TrackPos, tel: Telemetry, p: BaselineParams) -> jax.Array:
    """Action [steer, throttle, brake] for one car."""
    v = jnp.maximum(tel.speed, 0.0)
    ld = jnp.maximum(p.lookahead_min, p.lookahead_time * v)
    s_t = pos.s + ld
    cx, cy = interp(track, track.x, s_t), interp(track, track.y, s_t)
    # Heading from a short chord: interpolating the heading array would break at the +-pi seam.
    h = jnp.arctan2(interp(track, track.y, s_t + 1.0) - cy, interp(track, track.x, s_t + 1.0) - cx)
    # The reference line touches the edges; aim a little inside it to leave room for tracking errors.
    off = jnp.clip(interp(track, track.ref_offset, s_t),
                   -interp(track, track.w_right, s_t) + p.edge_margin, interp(track, track.w_left, s_t) - p.edge_margin)
    tx, ty = cx - jnp.sin(h) * off, cy + jnp.cos(h) * off
    # Pure pursuit from the rear axle (the point the bicycle geometry turns about).
    rear_x = tel.x - jnp.cos(tel.yaw) * 0.5 * p.wheelbase
    rear_y = tel.y - jnp.sin(tel.yaw) * 0.5 * p.wheelbase
    dx, dy = tx - rear_x, ty - rear_y
    alpha = jnp.arctan2(dy, dx) - tel.yaw
    dist = jnp.maximum(jnp.hypot(dx, dy), 1.0)
    kappa = 2.0 * jnp.sin(alpha) / dist  # the arc through the target
    # Geometry alone assumes no tyre slip; near the grip limit the car turns less than it steers,
    # so the yaw-rate shortfall against that arc adds steering.
    delta = jnp.arctan(p.wheelbase * kappa) + p.yaw_rate_gain * (v * kappa - tel.yaw_rate)
    # Commands past the lock turn the wheels no further: the wheel angle maps onto [-lock, lock].
    steer = jnp.clip(delta / p.max_steer, -1.0, 1.0) * p.steer_lock_command

    # Speed: the reference profile (which already brakes ahead of corners) scaled by the margin,
    # read a little ahead; the acceleration needed to reach it over the preview distance is the
    # feedforward, the speed error the feedback.
    preview = jnp.maximum(p.speed_preview * v, 2.0)
    v_now = p.speed_margin * interp(track, track.ref_speed, pos.s)
    v_ahead = p.speed_margin * interp(track, track.ref_speed, pos.s + preview)
    v_ref = jnp.minimum(v_now, v_ahead)
    a_req = (jnp.square(v_ahead) - jnp.square(v)) / (2.0 * preview)
    u = a_req / p.accel_scale + p.speed_gain * (v_ref - v)
    return jnp.stack([steer, jnp.clip(u, 0.0, 1.0), jnp.clip(-u, 0.0, 1.0)])
