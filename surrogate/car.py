"""Car models of the surrogate: kinematic and dynamic single-track (bicycle) models, pure JAX.

Every function works on one car (scalars) and is meant to be vmapped; because it is elementwise it
also runs directly on (N,) arrays with actions of shape (N, 3). Parameters are a pytree of float
leaves so they can be fitted by gradient and randomised per car.

Conventions: world frame x, y in metres, yaw counter-clockwise from +x. Car frame at the centre of
gravity (CoG): vx forward, vy left. Action = [steer in [-1, 1], throttle in [0, 1], brake in [0, 1]]
(the bridge protocol's ranges), clipped here.

Shared physics (both models, so they agree at low speed):
- steering: the road-wheel angle follows its target (``steer_angle_target``: linear in the command up
  to the lock ``max_steer``, reached at the command ``steer_lock_command``) with a first-order lag
  ``steer_tau`` (a servo; none by default) at most ``max_steer_rate``;
- pedals: the applied throttle rises towards the command at most ``throttle_rise_rate`` per second
  and falls at once (a game's pedal filter; none by default); the drive and brake forces scale with
  ``throttle ** throttle_gamma`` and ``brake ** brake_gamma`` (linear by default);
- axle loads: static split from lf/lr plus longitudinal load transfer ``cg_height * m * ax / L``,
  ax taken from the previous substep (a lag of one substep, far shorter than a real suspension's);
- longitudinal tyre forces: rear drive ``throttle * min(max_drive_force, engine_power / v)``, brakes
  split by ``brake_front_share``, each axle capped at its peak friction (``mu * Fz`` front,
  ``mu * rear_grip_ratio * Fz`` rear); aero drag and rolling resistance. Brakes, drag and rolling
  resistance oppose motion and only ever bring the speed to zero: they never reverse the car (no
  reverse gear either; a car given vx < 0 just decelerates to zero);
- a speed cap ``max_speed`` (a game engine's limit or a limiter; none by default): each substep's
  velocity is scaled down to it, direction kept.

Kinematic model: bicycle geometry at the CoG, slip angle ``beta = atan(lr / L * tan(delta))``.
Friction: the longitudinal tyre forces are capped per axle as above (traction and brake limits),
and the lateral acceleration is capped by what the friction circle leaves, ``sqrt((mu g)^2 -
ax_tyre^2)``, by limiting the path curvature (the car understeers at the limit instead of sliding).
Longitudinal force has priority, the same priority the dynamic model's friction circle gives. The
slip angle follows the steer instantly, so a fast steering input at speed shows in the IMU ``ay`` as
a short spike above the cap (the model's geometry, not tyre force).

Dynamic model: lateral tyre forces from slip angles through Pacejka's magic formula with the peak at
each axle's friction (above), reduced by the friction circle ``Fy_max = sqrt(peak^2 - Fx^2)``. With
one tyre law on both axles a single-track car is neutral-steering, and the forward load transfer of
any deceleration then tips it into oversteer and a spin at the limit; ``rear_grip_ratio`` > 1 gives
the limit understeer of a road car (the defaults: 1.08, stable when lifting at full lock). At low
speed slip angles are singular, so each substep blends the dynamic velocities with the kinematic
ones, weight going smoothly (smoothstep in speed) from kinematic below ``V_BLEND_LO`` to dynamic
above ``V_BLEND_HI``, as CommonRoad's single-track drift model does. A sliding car entering the blend
is pulled onto the kinematic velocities no faster than friction allows (no unphysical snap).

Integration: ``substeps`` per control period, each semi-implicit Euler (velocities first, then the
pose with the new velocities and the mid-step heading) except the lateral/yaw velocities, which use
a linearly implicit (Rosenbrock-Euler) step on the tyre forces. The tyre cornering stiffness makes
lateral and yaw dynamics stiff at low speed (eigenvalues about (Cf + Cr) / (m vx), some 40 1/s at
5 m/s for the default car and several times that for the stiff tyres the fitting ranges allow), which
would make plain explicit Euler unstable at dt = 0.05 unless many more substeps were spent. The
implicit step costs one analytic derivative of the magic formula and a 2x2 solve per substep and is
stable at any step for the stable (gripping) car; tyre slopes past the peak (negative) are treated
explicitly so the implicit matrix cannot become singular. It is first order: 4 substeps at
dt = 0.05 track a 64-substep reference to centimetres below the limit (tests). As a last guard
against absurd inputs (huge dt with random states) velocities and yaw rate are kept inside a wide
envelope far beyond anything a car reaches, and yaw is wrapped to [-pi, pi).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from surrogate.fastmath import fast_atan, fast_sincos


class CarParamsError(ValueError):
    """Car parameters that cannot be used: names the field, its value and the expected range."""


@flax.struct.dataclass
class CarParams:
    """Physical parameters of one car (defaults: a plausible rear-wheel-drive road sports car).

    Every field is a float leaf, so a CarParams can be fitted by gradient or vmapped (one per car).
    """

    mass: float = 1400.0  # kg
    yaw_inertia: float = 2200.0  # kg m^2, about the vertical axis through the CoG
    lf: float = 1.2  # m, CoG to front axle
    lr: float = 1.4  # m, CoG to rear axle
    cg_height: float = 0.45  # m, sets the longitudinal load transfer
    mu: float = 1.0  # tyre-road friction coefficient (peak)
    tyre_B: float = 10.0  # 1/rad, magic formula stiffness factor
    tyre_C: float = 1.9  # magic formula shape factor
    tyre_E: float = 0.97  # magic formula curvature factor; peak D = mu * Fz
    # Cornering stiffness grows as (forward speed / 10 m/s) ** tyre_speed_exp. 0: the force follows
    # the slip angle, as a real tyre's does (and most simulators'). 1: it follows the slip velocity
    # (lateral speed of the contact patch), as in Box2D games such as Gymnasium's CarRacing, whose car
    # saturates at ever smaller slip angles the faster it goes. Set by hand: surrogate.fit leaves it
    # at 0 (fitted with the rest it ended in a worse optimum, docs/experiments.md).
    tyre_speed_exp: float = 0.0
    max_steer: float = 0.45  # rad, road-wheel angle at full lock
    # The steer command at which the wheels reach full lock; commands beyond it turn them no further.
    # 1: the lock is at the end of the command's travel (linear throughout). Games differ: CarRacing
    # takes the command as the wheel angle in radians and stops the wheels at 0.4 rad, so its lock
    # is at command 0.4 and the wheels turn 1 rad per unit of command below it.
    steer_lock_command: float = 1.0
    max_steer_rate: float = 2.0  # rad/s, road-wheel angle rate limit
    engine_power: float = 150e3  # W, at the driven (rear) wheels
    max_drive_force: float = 7000.0  # N, gearing/traction limit at low speed
    max_brake_force: float = 14000.0  # N, both axles together at brake = 1
    brake_front_share: float = 0.6  # fraction of brake force on the front axle
    drag_coef: float = 0.4  # N/(m/s)^2, 0.5 * rho * Cd * A
    rolling_resistance: float = 200.0  # N
    # A hard cap on the speed over ground: a game engine's limit or a car's limiter. Box2D moves a
    # body at most 2 m a tick, so CarRacing's car never passes 100 m/s at 50 Hz whatever its engine
    # could do. 150 m/s: no cap that a car reaches.
    max_speed: float = 150.0  # m/s
    g: float = 9.81  # m/s^2
    # Rear axle peak friction relative to the front (mu_rear = mu * rear_grip_ratio). A single-track
    # model with one tyre law on both axles is exactly neutral-steering, and the forward load transfer
    # of any deceleration then makes it oversteer and spin at the limit. Real cars get their limit
    # understeer from wider rear tyres and the roll-stiffness split; this one number stands in for
    # both, so fitting can recover a game car's balance. > 1: understeer, < 1: oversteer.
    rear_grip_ratio: float = 1.08
    # Actuators, the side of a game's car that matters most for a policy's transfer. Defaults: none
    # (the road-wheel angle follows the command at the rate limit, drive and brake force are linear
    # in the pedals), the car as it was before these fields existed.
    # First-order lag of the road-wheel angle towards the command (a steering servo), on top of the
    # rate limit: CarRacing's servo is a 0.02 s lag capped at 3 rad/s.
    steer_tau: float = 0.0  # s
    # Pedal maps: drive force scales with throttle ** throttle_gamma, brake force with
    # brake ** brake_gamma (> 1: a progressive pedal, little force at the top of its travel).
    throttle_gamma: float = 1.0
    brake_gamma: float = 1.0
    # How fast the applied throttle may rise (pedal travel per second); it falls as fast as the
    # command does. Games filter the pedal so that keys and pads do not spin the wheels (CarRacing's
    # gas rises at most 0.1 a 50 Hz tick, 5/s); the car's drive then lags a step of the pedal by a
    # fifth of a second, which a policy that blips the throttle meets as lost speed. 1000: none.
    throttle_rise_rate: float = 1000.0  # 1/s


PARAM_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(CarParams))

# Physical ranges, wide enough for anything from a kart to a heavy saloon or a downforce racer, and
# narrow enough to exclude values that break the physics (zero mass, E > 1, no drag so no top speed).
# Games are not always physics: the reference game (Gymnasium's CarRacing, a 7 kg Box2D body) pulls
# about 9 g in corners and 13 g off the line, so grip, drive and brake forces (per the default mass,
# which motion alone cannot separate from the forces) reach far past any road car's.
PARAM_RANGES: dict[str, tuple[float, float]] = {
    "mass": (100.0, 4000.0),  # kg: kart with driver .. heavy SUV
    "yaw_inertia": (20.0, 10000.0),  # kg m^2
    "lf": (0.2, 3.0),  # m
    "lr": (0.2, 3.0),  # m
    "cg_height": (0.0, 1.2),  # m
    "mu": (0.1, 20.0),  # ice .. slicks with downforce folded in .. a toy game car
    "tyre_B": (2.0, 30.0),  # 1/rad
    "tyre_C": (1.0, 2.5),
    "tyre_E": (-2.0, 1.0),  # E > 1 makes the force curve fold back on itself
    "tyre_speed_exp": (0.0, 1.5),  # slip angle (0) .. slip velocity (1) .. beyond
    "max_steer": (0.05, 1.0),  # rad
    "steer_lock_command": (0.1, 1.0),
    "max_steer_rate": (0.1, 50.0),  # rad/s
    "engine_power": (1e3, 5e7),  # W
    "max_drive_force": (100.0, 400000.0),  # N
    "max_brake_force": (100.0, 1000000.0),  # N
    "brake_front_share": (0.0, 1.0),
    "drag_coef": (0.01, 20.0),  # N/(m/s)^2; > 0 so a top speed exists
    "rolling_resistance": (0.0, 5000.0),  # N
    "max_speed": (5.0, 150.0),  # m/s
    "g": (9.7, 9.9),  # m/s^2, Earth's surface
    "rear_grip_ratio": (0.5, 2.0),
    "steer_tau": (0.0, 0.5),  # s
    "throttle_gamma": (0.25, 4.0),
    "brake_gamma": (0.25, 4.0),
    "throttle_rise_rate": (0.5, 1000.0),  # 1/s: 2 s to full throttle .. none within a substep
}

PARAM_UNITS: dict[str, str] = {
    "mass": "kg", "yaw_inertia": "kg m^2", "lf": "m", "lr": "m", "cg_height": "m", "mu": "",
    "tyre_B": "1/rad", "tyre_C": "", "tyre_E": "", "tyre_speed_exp": "", "max_steer": "rad", "steer_lock_command": "",
    "max_steer_rate": "rad/s",
    "engine_power": "W", "max_drive_force": "N", "max_brake_force": "N", "brake_front_share": "",
    "drag_coef": "N/(m/s)^2", "rolling_resistance": "N", "max_speed": "m/s", "g": "m/s^2", "rear_grip_ratio": "",
    "steer_tau": "s", "throttle_gamma": "", "brake_gamma": "", "throttle_rise_rate": "1/s",
}

# Blend from kinematic (below LO) to dynamic (above HI), in m/s of speed.
V_BLEND_LO = 1.5
V_BLEND_HI = 4.0
# Power-limited drive force is evaluated at no less than this speed (engine_power / 0 is infinite).
_V_POWER_MIN = 1.0
# Slip angles divide by vx; below this the dynamic model has zero weight anyway.
_V_SLIP_MIN = 0.5
# The speed at which tyre_B is the cornering stiffness factor whatever tyre_speed_exp is.
_TYRE_V_REF = 10.0  # m/s
# Numerical envelope (see module docstring): never reached by a physical car.
_V_ENVELOPE = 150.0  # m/s
_YAW_RATE_ENVELOPE = 25.0  # rad/s
# Steering angles are kept strictly inside +-pi/2 where tan is finite.
_STEER_LIMIT = 1.2


# --------------------------------------------------------------------------------------------
# Parameters: validation, dict conversion, randomisation
# --------------------------------------------------------------------------------------------

def validate_car_params(params: CarParams) -> CarParams:
    """Check every field lies in PARAM_RANGES (all elements, if batched); return params unchanged.

    For concrete values only: call it before jit, not inside.
    """
    if not isinstance(params, CarParams):
        raise CarParamsError(f"expected a CarParams, got {type(params).__name__}")
    for name in PARAM_NAMES:
        value = getattr(params, name)
        if isinstance(value, jax.core.Tracer):
            raise CarParamsError(
                f"car parameter {name} is a traced value: validate_car_params checks concrete values; "
                "call it outside jit/vmap"
            )
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise CarParamsError(f"car parameter {name}={value!r} is not a number ({e})") from None
        lo, hi = PARAM_RANGES[name]
        bad = ~np.isfinite(arr) | (arr < lo) | (arr > hi)
        if np.any(bad):
            shown = arr[bad].flat[0] if arr.ndim else float(arr)
            where = "" if arr.ndim == 0 else f" (element {int(np.flatnonzero(bad.ravel())[0])} of {arr.size})"
            unit = f" {PARAM_UNITS[name]}" if PARAM_UNITS[name] else ""
            raise CarParamsError(
                f"car parameter {name}={shown!r}{where} is outside its physical range "
                f"[{lo:g}, {hi:g}]{unit}; set {name} to a value in that range"
            )
    return params


def car_params_from_dict(d: Mapping) -> CarParams:
    """CarParams from a JSON-friendly dict; missing fields keep their defaults; validated."""
    if not isinstance(d, Mapping):
        raise CarParamsError(f"car parameters must be a dict of field -> number, got {type(d).__name__}")
    unknown = sorted(set(d) - set(PARAM_NAMES), key=str)
    if unknown:
        raise CarParamsError(
            f"unknown car parameter(s) {', '.join(map(repr, unknown))}; valid names: {', '.join(PARAM_NAMES)}"
        )
    values = {}
    for name, value in d.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise CarParamsError(f"car parameter {name}={value!r} must be a number ({PARAM_UNITS[name] or 'unitless'})")
        values[name] = float(value)
    return validate_car_params(CarParams(**values))


def car_params_to_dict(p: CarParams) -> dict:
    """JSON-friendly dict: floats (or nested lists for batched params)."""
    return {name: np.asarray(getattr(p, name), dtype=np.float64).tolist() for name in PARAM_NAMES}


def _spread_per_field(spread: float | Mapping[str, float]) -> list:
    if isinstance(spread, Mapping):
        unknown = sorted(set(spread) - set(PARAM_NAMES), key=str)
        if unknown:
            raise CarParamsError(
                f"spread names unknown car parameter(s) {', '.join(map(repr, unknown))}; "
                f"valid names: {', '.join(PARAM_NAMES)}"
            )
        per_field = [spread.get(name, 0.0) for name in PARAM_NAMES]
        labels = list(PARAM_NAMES)
    else:
        per_field = [spread] * len(PARAM_NAMES)
        labels = ["spread"] * len(PARAM_NAMES)
    for label, s in zip(labels, per_field):
        if isinstance(s, jax.core.Tracer):
            continue
        s = float(s)
        if not 0.0 <= s < 1.0:
            raise CarParamsError(f"spread for {label} is {s!r}; it must lie in [0, 1) (a fraction of the nominal value)")
    return per_field


def sample_car_params(key: jax.Array, nominal: CarParams, spread: float | Mapping[str, float]) -> CarParams:
    """Domain randomisation: each field times U(1 - spread, 1 + spread), clipped to PARAM_RANGES.

    ``spread`` is one fraction for every field or a dict field -> fraction (absent fields: 0).
    Deterministic per key; jittable and vmappable over keys (and nominal).
    """
    per_field = _spread_per_field(spread)
    u = jax.random.uniform(key, (len(PARAM_NAMES),), jnp.float32, minval=-1.0, maxval=1.0)
    values = {}
    for i, name in enumerate(PARAM_NAMES):
        lo, hi = PARAM_RANGES[name]
        nominal_value = jnp.asarray(getattr(nominal, name), jnp.float32)
        values[name] = jnp.clip(nominal_value * (1.0 + per_field[i] * u[i]), lo, hi)
    return CarParams(**values)


def top_speed(params: CarParams) -> jax.Array:
    """Straight-line top speed, m/s: where full-throttle drive force equals drag + rolling resistance,
    or the cap ``max_speed`` where that is lower.

    Power-limited: P / v = c v^2 + R_roll, a cubic with one positive root (Cardano). If the
    max_drive_force limit binds there instead, c v^2 + R_roll = F_max.
    """
    c = params.drag_coef
    p = params.rolling_resistance / c
    q = -params.engine_power / c
    root = jnp.sqrt(q * q / 4.0 + p**3 / 27.0)
    v_power = jnp.cbrt(-q / 2.0 + root) + jnp.cbrt(-q / 2.0 - root)
    v_force = jnp.sqrt(jnp.maximum(params.max_drive_force - params.rolling_resistance, 0.0) / c)
    power_limited = params.engine_power / jnp.maximum(v_power, 1e-6) <= params.max_drive_force
    return jnp.minimum(jnp.where(power_limited, v_power, v_force), params.max_speed)


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------

@flax.struct.dataclass
class CarState:
    """One car's state, all scalars (vmapped: (N,) arrays, structure of arrays)."""

    x: jax.Array  # m, world
    y: jax.Array  # m, world
    yaw: jax.Array  # rad, CCW from +x, wrapped to [-pi, pi)
    vx: jax.Array  # m/s, car frame at the CoG, forward
    vy: jax.Array  # m/s, car frame at the CoG, left
    yaw_rate: jax.Array  # rad/s, CCW positive
    steer: jax.Array  # rad, actual road-wheel angle
    throttle: jax.Array  # applied throttle pedal in [0, 1], before its map (lags the command rising)
    ax: jax.Array  # m/s^2, car-frame acceleration averaged over the last step (IMU, gravity removed)
    ay: jax.Array  # m/s^2


def init_car_state(x, y, yaw, speed) -> CarState:
    """A car at pose (x, y, yaw) rolling straight ahead at ``speed`` m/s, wheels straight (any shapes broadcast)."""
    f = lambda v: jnp.asarray(v, jnp.float32)
    x, y, yaw, speed = f(x), f(y), f(yaw), f(speed)
    zero = jnp.zeros_like(x + y + yaw + speed)
    return CarState(x=x + zero, y=y + zero, yaw=yaw + zero, vx=speed + zero, vy=zero, yaw_rate=zero,
                    steer=zero, throttle=zero, ax=zero, ay=zero)


def speed(state: CarState) -> jax.Array:
    """Speed over ground at the CoG, m/s."""
    return _safe_norm(state.vx, state.vy)


# --------------------------------------------------------------------------------------------
# Shared physics
# --------------------------------------------------------------------------------------------

def _safe_norm(a, b):
    # Exactly 0 at the origin, with a zero (not NaN) gradient there: the double-where idiom.
    sq = a * a + b * b
    positive = sq > 0.0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _wrap_angle(a):
    return jnp.mod(a + jnp.pi, 2.0 * jnp.pi) - jnp.pi


def _pedal_map(pedal, gamma):
    """pedal ** gamma on [0, 1], with finite gradients at 0 for any gamma."""
    safe = jnp.maximum(pedal, 1e-6)
    return jnp.where(pedal > 0.0, jnp.exp(gamma * jnp.log(safe)), 0.0)


def steer_angle_target(params, steer_cmd):
    """The road-wheel angle (rad) a steer command asks for: linear up to the lock ``max_steer``,
    which the command ``steer_lock_command`` reaches; the wheels turn no further beyond it."""
    steer_cmd = jnp.clip(jnp.asarray(steer_cmd, jnp.float32), -1.0, 1.0)
    return params.max_steer * jnp.clip(steer_cmd / params.steer_lock_command, -1.0, 1.0)


def _parse_action(params, action):
    """Road-wheel angle target, the throttle command (pedal travel, before its rise limit and map)
    and the brake after its map (a fraction of full force)."""
    action = jnp.asarray(action, jnp.float32)
    brake = _pedal_map(jnp.clip(action[..., 2], 0.0, 1.0), params.brake_gamma)
    return steer_angle_target(params, action[..., 0]), jnp.clip(action[..., 1], 0.0, 1.0), brake


def _throttle_update(params, applied, command, h):
    # Rising at most throttle_rise_rate; releasing at once.
    return jnp.minimum(command, applied + params.throttle_rise_rate * h)


def _steer_update(params, steer, target, h):
    # The servo's first-order lag (exact over the substep; no lag at steer_tau = 0), then its rate limit.
    tau = params.steer_tau
    follow = jnp.where(tau > 0.0, -jnp.expm1(-h / jnp.maximum(tau, 1e-6)), 1.0)
    max_delta = params.max_steer_rate * h
    new = steer + jnp.clip(follow * (target - steer), -max_delta, max_delta)
    return jnp.clip(new, -_STEER_LIMIT, _STEER_LIMIT)


def _axle_loads(params, ax):
    """Normal loads (N) with longitudinal load transfer; never negative (a lifted axle carries 0)."""
    wheelbase = params.lf + params.lr
    weight = params.mass * params.g
    transfer = params.cg_height * params.mass * ax / wheelbase
    fz_f = jnp.maximum(weight * params.lr / wheelbase - transfer, 0.0)
    fz_r = jnp.maximum(weight * params.lf / wheelbase + transfer, 0.0)
    return fz_f, fz_r


@flax.struct.dataclass
class _Longitudinal:
    drive: jax.Array  # N, forward push of the rear tyres (>= 0)
    brake_f: jax.Array  # N, front tyre force opposing motion (>= 0)
    brake_r: jax.Array  # N, rear tyre force opposing motion (>= 0)
    resist: jax.Array  # N, drag + rolling resistance, opposing motion (>= 0)


def _longitudinal(params, v_long, throttle, brake, fz_f, fz_r):
    v_abs = jnp.abs(v_long)
    drive = throttle * jnp.minimum(params.max_drive_force,
                                   params.engine_power / jnp.maximum(v_abs, _V_POWER_MIN))
    cap_f = params.mu * fz_f
    cap_r = params.mu * params.rear_grip_ratio * fz_r
    brake_f = jnp.minimum(brake * params.max_brake_force * params.brake_front_share, cap_f)
    # Drive and rear brake act through the same tyres: their net is what the friction limit caps.
    net_r = jnp.clip(drive - brake * params.max_brake_force * (1.0 - params.brake_front_share), -cap_r, cap_r)
    resist = params.drag_coef * v_abs * v_abs + params.rolling_resistance
    return _Longitudinal(drive=jnp.maximum(net_r, 0.0), brake_f=brake_f, brake_r=jnp.maximum(-net_r, 0.0),
                         resist=resist)


def _toward_zero(v, a_signed, a_resist, h):
    """Apply a signed acceleration, then resistive ones that stop at zero instead of reversing."""
    v1 = v + h * a_signed
    return jnp.sign(v1) * jnp.maximum(jnp.abs(v1) - h * a_resist, 0.0)


@flax.struct.dataclass
class _Velocity:
    vx: jax.Array
    vy: jax.Array
    yaw_rate: jax.Array


def _kinematic_substep(params, s: CarState, steer, lon: _Longitudinal, h) -> _Velocity:
    """New velocities of the kinematic model from any state (a dynamic state is projected onto it)."""
    wheelbase = params.lf + params.lr
    direction = jnp.where(s.vx < 0.0, -1.0, 1.0)
    u = direction * _safe_norm(s.vx, s.vy)

    # Friction circle at vehicle level, longitudinal first: what lateral grip is left caps curvature.
    a_tyre = (lon.drive - lon.brake_f - lon.brake_r) / params.mass
    a_grip = params.mu * params.g
    a_lat = jnp.sqrt(jnp.maximum(a_grip * a_grip - a_tyre * a_tyre, 1e-6))
    kappa_max = jnp.minimum(a_lat / jnp.maximum(u * u, 1e-6), 0.9 / params.lr)
    tan_max = kappa_max * wheelbase / jnp.sqrt(1.0 - (params.lr * kappa_max) ** 2)
    sin_s, cos_s = fast_sincos(steer)
    tan_d = jnp.clip(sin_s / cos_s, -tan_max, tan_max)

    u_new = _toward_zero(u, lon.drive / params.mass,
                         (lon.brake_f + lon.brake_r + lon.resist) / params.mass, h)
    tan_beta = params.lr / wheelbase * tan_d
    cos_beta = jax.lax.rsqrt(1.0 + tan_beta * tan_beta)
    sin_beta = tan_beta * cos_beta
    vx = u_new * cos_beta
    vy = u_new * sin_beta
    yaw_rate = u_new * cos_beta * tan_d / wheelbase
    return _Velocity(vx, vy, yaw_rate)


def _magic_formula(params, alpha, peak, b):
    """Pacejka lateral force and its slope dF/dalpha, for peak force ``peak`` and stiffness factor ``b``."""
    c, e = params.tyre_C, params.tyre_E
    ba = b * alpha
    phi = ba - e * (ba - fast_atan(ba))
    angle = c * fast_atan(phi)
    sin_a, cos_a = fast_sincos(angle)
    force = peak * sin_a
    dphi = b - e * (b - b / (1.0 + ba * ba))
    slope = peak * cos_a * c / (1.0 + phi * phi) * dphi
    return force, slope


def _dynamic_substep(params, s: CarState, steer, lon: _Longitudinal, fz_f, fz_r, h) -> _Velocity:
    m, iz, lf, lr = params.mass, params.yaw_inertia, params.lf, params.lr
    sin_d, cos_d = fast_sincos(steer)

    # Tyre longitudinal forces in the wheel frame, signed for forward motion. A car spun round and
    # sliding backwards gets them only approximately (the brakes still oppose its motion, through
    # _toward_zero); it is a transient a policy should avoid, not a regime to model precisely.
    fx_f = -lon.brake_f
    fx_r = lon.drive - lon.brake_r

    vx_slip = jnp.maximum(s.vx, _V_SLIP_MIN)
    n_f = s.vy + lf * s.yaw_rate
    n_r = s.vy - lr * s.yaw_rate
    # vx_slip > 0, so arctan of the ratio is the (cheaper) arctan2
    alpha_f = steer - fast_atan(n_f / vx_slip)
    alpha_r = -fast_atan(n_r / vx_slip)

    peak_f = jnp.maximum(params.mu * fz_f, 1.0)
    peak_r = jnp.maximum(params.mu * params.rear_grip_ratio * fz_r, 1.0)
    # Friction circle: what longitudinal force uses is no longer available laterally.
    circle_f = jnp.sqrt(jnp.maximum(1.0 - (fx_f / peak_f) ** 2, 1e-6))
    circle_r = jnp.sqrt(jnp.maximum(1.0 - (fx_r / peak_r) ** 2, 1e-6))
    # (vx_slip / v_ref) ** exp, as an exp of a log: vx_slip >= _V_SLIP_MIN > 0.
    b = params.tyre_B * jnp.exp(params.tyre_speed_exp * jnp.log(vx_slip / _TYRE_V_REF))
    fy_f, c_f = _magic_formula(params, alpha_f, peak_f * circle_f, b)
    fy_r, c_r = _magic_formula(params, alpha_r, peak_r * circle_r, b)
    fy_f, c_f, fy_r, c_r = jax.lax.optimization_barrier((fy_f, c_f, fy_r, c_r))

    # Longitudinal: the front tyres' lateral force tilted by the steer slows the car (cornering drag).
    vx_new = _toward_zero(
        s.vx,
        (lon.drive - fy_f * sin_d) / m + s.vy * s.yaw_rate,
        (lon.brake_f * cos_d + lon.brake_r + lon.resist) / m,
        h,
    )

    # Lateral and yaw: linearly implicit Euler on (vy, r).
    lat_f = fy_f * cos_d + fx_f * sin_d
    f_vy = (lat_f + fy_r) / m - vx_new * s.yaw_rate
    f_r = (lf * lat_f - lr * fy_r) / iz
    g_f = -vx_slip / (vx_slip * vx_slip + n_f * n_f)  # d alpha_f / d vy
    g_r = -vx_slip / (vx_slip * vx_slip + n_r * n_r)  # d alpha_r / d vy
    k_f = jnp.maximum(c_f, 0.0) * cos_d * g_f  # d lat_f / d vy (stabilising part only)
    k_r = jnp.maximum(c_r, 0.0) * g_r  # d fy_r / d vy
    j11 = (k_f + k_r) / m
    j12 = (lf * k_f - lr * k_r) / m - vx_new
    j21 = (lf * k_f - lr * k_r) / iz
    j22 = (lf * lf * k_f + lr * lr * k_r) / iz
    a11, a12, a21, a22 = 1.0 - h * j11, -h * j12, -h * j21, 1.0 - h * j22
    # a11, a22 >= 1; the floor only matters for absurd steps in a physically unstable (spinning) car.
    det = jnp.maximum(a11 * a22 - a12 * a21, 0.5 * a11 * a22)
    vy_new = s.vy + h * (a22 * f_vy - a12 * f_r) / det
    r_new = s.yaw_rate + h * (a11 * f_r - a21 * f_vy) / det
    return _Velocity(vx_new, vy_new, r_new)


def _advance_pose(s: CarState, v: _Velocity, h) -> CarState:
    """Semi-implicit Euler: move with the new velocities along the mid-step heading."""
    vx = jnp.clip(v.vx, -_V_ENVELOPE, _V_ENVELOPE)
    vy = jnp.clip(v.vy, -_V_ENVELOPE, _V_ENVELOPE)
    yaw_rate = jnp.clip(v.yaw_rate, -_YAW_RATE_ENVELOPE, _YAW_RATE_ENVELOPE)
    heading = s.yaw + 0.5 * h * yaw_rate
    sn, c = fast_sincos(heading)
    return s.replace(
        x=s.x + h * (vx * c - vy * sn),
        y=s.y + h * (vx * sn + vy * c),
        yaw=s.yaw + h * yaw_rate,
        vx=vx, vy=vy, yaw_rate=yaw_rate,
    )


def _capped(params, v: _Velocity) -> _Velocity:
    """The velocity scaled down to ``max_speed`` where it is faster, direction kept (as Box2D caps a body)."""
    scale = jnp.minimum(1.0, params.max_speed / jnp.maximum(_safe_norm(v.vx, v.vy), 1e-6))
    return v.replace(vx=v.vx * scale, vy=v.vy * scale)


def _blend(w, a: _Velocity, b: _Velocity) -> _Velocity:
    """w * a + (1 - w) * b, field by field."""
    return jax.tree_util.tree_map(lambda p, q: q + w * (p - q), a, b)


def _integrate(params, state, action, dt, substeps, model_substep):
    if not isinstance(substeps, int) or isinstance(substeps, bool) or substeps < 1:
        raise ValueError(f"substeps must be a positive Python int (static under jit), got {substeps!r}")
    target, throttle_cmd, brake = _parse_action(params, action)
    h = jnp.asarray(dt, jnp.float32) / substeps

    def body(_, carry):
        s, ax_sum, ay_sum = carry
        steer = _steer_update(params, s.steer, target, h)
        throttle = _throttle_update(params, s.throttle, throttle_cmd, h)
        fz_f, fz_r = _axle_loads(params, s.ax)
        lon = _longitudinal(params, s.vx, _pedal_map(throttle, params.throttle_gamma), brake, fz_f, fz_r)
        s = s.replace(steer=steer, throttle=throttle)
        new = _advance_pose(s, _capped(params, model_substep(params, s, steer, lon, fz_f, fz_r, h)), h)
        # IMU acceleration: rate of change of the car-frame velocity plus the frame's rotation.
        r_mid = 0.5 * (s.yaw_rate + new.yaw_rate)
        ax = (new.vx - s.vx) / h - r_mid * 0.5 * (s.vy + new.vy)
        ay = (new.vy - s.vy) / h + r_mid * 0.5 * (s.vx + new.vx)
        new = new.replace(yaw=_wrap_angle(new.yaw), ax=ax, ay=ay)
        return new, ax_sum + ax, ay_sum + ay

    zero = jnp.zeros_like(state.vx)
    final, ax_sum, ay_sum = jax.lax.fori_loop(0, substeps, body, (state, zero, zero))
    return final.replace(ax=ax_sum / substeps, ay=ay_sum / substeps)


def _kinematic_model(params, s, steer, lon, fz_f, fz_r, h):
    return _kinematic_substep(params, s, steer, lon, h)


def _relax_to_kinematic(params, s: CarState, kin: _Velocity, h) -> _Velocity:
    """The kinematic update, reached from an off-manifold (sliding) state at a friction-limited rate.

    The kinematic model's velocities are algebraic in speed and steer; snapping a sliding car onto
    them would be an unbounded acceleration. The tyres can remove lateral sliding no faster than
    friction allows, so the velocity change is capped at the grip acceleration and the yaw-rate change
    at the largest yaw acceleration the axle forces can produce. On the manifold nothing changes.
    """
    grip = params.mu * params.g * jnp.maximum(1.0, params.rear_grip_ratio)
    dvx, dvy = kin.vx - s.vx, kin.vy - s.vy
    scale = jnp.minimum(1.0, grip * h / jnp.maximum(_safe_norm(dvx, dvy), 1e-9))
    yaw_acc = grip * params.mass * jnp.maximum(params.lf, params.lr) / params.yaw_inertia
    d_r = jnp.clip(kin.yaw_rate - s.yaw_rate, -yaw_acc * h, yaw_acc * h)
    return _Velocity(s.vx + scale * dvx, s.vy + scale * dvy, s.yaw_rate + d_r)


def _blended_model(params, s, steer, lon, fz_f, fz_r, h):
    kin = _relax_to_kinematic(params, s, _kinematic_substep(params, s, steer, lon, h), h)
    dyn = _dynamic_substep(params, s, steer, lon, fz_f, fz_r, h)
    t = jnp.clip((_safe_norm(s.vx, s.vy) - V_BLEND_LO) / (V_BLEND_HI - V_BLEND_LO), 0.0, 1.0)
    w = t * t * (3.0 - 2.0 * t)  # smoothstep: the blend has no kink in speed
    return _blend(w, dyn, kin)


def kinematic_step(params: CarParams, state: CarState, action: jax.Array, dt, substeps: int = 4) -> CarState:
    """Advance one control period dt (s) with the kinematic single-track model."""
    return _integrate(params, state, action, dt, substeps, _kinematic_model)


def dynamic_step(params: CarParams, state: CarState, action: jax.Array, dt, substeps: int = 4) -> CarState:
    """Advance one control period dt (s) with the dynamic single-track model (kinematic at low speed)."""
    return _integrate(params, state, action, dt, substeps, _blended_model)


MODELS = {"kinematic": kinematic_step, "dynamic": dynamic_step}

__all__ = [
    "CarParams", "CarParamsError", "CarState", "MODELS", "PARAM_NAMES", "PARAM_RANGES", "PARAM_UNITS",
    "V_BLEND_HI", "V_BLEND_LO", "car_params_from_dict", "car_params_to_dict", "dynamic_step", "fast_atan", "fast_sincos",
    "init_car_state", "kinematic_step", "sample_car_params", "speed", "top_speed", "validate_car_params",
]
