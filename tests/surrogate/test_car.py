"""Behaviour of the surrogate car models: geometry, friction limits, braking, top speed, robustness."""
from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from surrogate.car import (
    MODELS,
    PARAM_NAMES,
    PARAM_RANGES,
    CarParams,
    CarParamsError,
    car_params_from_dict,
    car_params_to_dict,
    dynamic_step,
    init_car_state,
    kinematic_step,
    sample_car_params,
    speed,
    top_speed,
    validate_car_params,
)

P = CarParams()


N_STEPS = 80  # one rollout length for every test, so each model compiles once per substep count


@functools.partial(jax.jit, static_argnames=("model", "substeps"))
def _simulate(model: str, params, state, actions, dt, substeps: int):
    step = MODELS[model]

    def body(s, a):
        s = step(params, s, a, dt, substeps)
        return s, s

    return jax.lax.scan(body, state, actions)[1]


def rollout(model: str, params, state, action, dt=0.05, substeps: int = 4):
    """States after each of N_STEPS steps (leading axis) with a constant action or an (N_STEPS, 3) sequence."""
    actions = jnp.broadcast_to(jnp.asarray(action, jnp.float32), (N_STEPS, 3))
    return _simulate(model, params, state, actions, dt, substeps)


def last(traj):
    return jax.tree_util.tree_map(lambda a: a[-1], traj)


def concat(*trajs):
    return jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *trajs)


def fit_circle(x, y):
    """Least-squares (Kasa) circle through points: centre and radius."""
    a = np.stack([x, y, np.ones_like(x)], axis=1)
    b = x * x + y * y
    cx2, cy2, c = np.linalg.lstsq(a, b, rcond=None)[0]
    cx, cy = cx2 / 2, cy2 / 2
    return cx, cy, float(np.sqrt(c + cx * cx + cy * cy))


def test_defaults_are_valid_and_top_speed_is_plausible():
    validate_car_params(P)
    assert 60.0 < float(top_speed(P)) < 80.0  # about 250 km/h for 150 kW


def test_kinematic_cornering_radius_is_wheelbase_over_tan_steer():
    steer_cmd = 0.4
    delta = steer_cmd * P.max_steer
    wheelbase = P.lf + P.lr
    s0 = init_car_state(0.0, 0.0, 0.0, 5.0).replace(steer=jnp.float32(delta))
    # Throttle balances rolling resistance and drag at 5 m/s; the path radius must not depend on it anyway.
    first = rollout("kinematic", P, s0, [steer_cmd, 0.03, 0.0])
    tr = concat(first, rollout("kinematic", P, last(first), [steer_cmd, 0.03, 0.0]))
    x, y, yaw = (np.asarray(a, np.float64) for a in (tr.x, tr.y, tr.yaw))
    # The rear axle (no lateral slip in the kinematic model) turns about the instantaneous centre at
    # wheelbase / tan(delta); the CoG at sqrt(that^2 + lr^2).
    r_axle = fit_circle(x - P.lr * np.cos(yaw), y - P.lr * np.sin(yaw))[2]
    r_cog = fit_circle(x, y)[2]
    expected = wheelbase / np.tan(delta)
    assert r_axle == pytest.approx(expected, rel=0.01)
    assert r_cog == pytest.approx(np.hypot(expected, P.lr), rel=0.01)
    # the rear axle rolls without sliding sideways: vy at the rear axle is zero
    rear_vy = np.asarray(tr.vy - P.lr * tr.yaw_rate)
    assert np.abs(rear_vy).max() < 1e-4 * np.asarray(speed(tr)).max()
    # The IMU sees the centripetal acceleration v^2 / R of the CoG.
    v = np.asarray(speed(tr))
    assert np.asarray(tr.ay)[-1] == pytest.approx(v[-1] ** 2 / r_cog, rel=0.02)


@pytest.mark.parametrize("steer_cmd", [0.1, 0.25])
def test_dynamic_matches_kinematic_at_low_speed(steer_cmd):
    s0 = init_car_state(0.0, 0.0, 0.3, 5.0)
    action = jnp.array([steer_cmd, 0.03, 0.0])
    kin = rollout("kinematic", P, s0, action)  # 4 s, about 20 m
    dyn = rollout("dynamic", P, s0, action)
    gap = np.hypot(np.asarray(kin.x - dyn.x), np.asarray(kin.y - dyn.y))
    travelled = np.cumsum(np.asarray(speed(kin))) * 0.05
    # The tyres' small slip angles make the dynamic car's body slip a little smaller: under 2% drift.
    assert np.all(gap <= 0.02 * travelled + 0.02)
    assert np.abs(np.asarray(kin.yaw - dyn.yaw)).max() < 0.03
    assert np.abs(np.asarray(speed(kin) - speed(dyn))).max() < 0.1
    # ...and they do turn: the comparison is not between two straight lines.
    assert float(kin.yaw[-1]) > 0.3 + 0.2


@pytest.mark.parametrize("model", ["kinematic", "dynamic"])
def test_lateral_acceleration_saturates_at_friction_limit_and_scales_with_mu(model):
    peaks = {}
    for mu in (1.0, 1.3):
        p = P.replace(mu=mu)
        tr = rollout(model, p, init_car_state(0.0, 0.0, 0.0, 30.0), [1.0, 0.0, 0.0])
        # Skip the first steps: the wheels are still turning in at the rate limit.
        ay = np.asarray(tr.ay)[10:60] / (mu * p.g)
        peaks[mu] = ay.max()
        assert ay.max() <= 1.04, f"mu={mu}: lateral acceleration {ay.max():.3f} mu g exceeds the friction limit"
        assert ay.max() >= 0.93, f"mu={mu}: full steer at 30 m/s reached only {ay.max():.3f} mu g"
        assert np.median(ay[:30]) >= 0.9  # it stays on the limit, not just one spike
    assert peaks[1.3] == pytest.approx(peaks[1.0], rel=0.03)  # in units of mu g: proportional to mu


def test_dynamic_car_stays_on_the_limit_without_spinning_when_lifting_at_full_lock():
    # The default car understeers at the limit (rear_grip_ratio > 1): lifting off at full lock
    # does not spin it. Heading and velocity stay within a modest body slip angle.
    tr = rollout("dynamic", P, init_car_state(0.0, 0.0, 0.0, 30.0), [1.0, 0.0, 0.0])
    beta = np.arctan2(np.asarray(tr.vy), np.asarray(tr.vx))
    assert np.abs(beta).max() < 0.6
    # whereas with a grippier front than rear the same manoeuvre spins the car
    loose = rollout("dynamic", P.replace(rear_grip_ratio=0.8), init_car_state(0.0, 0.0, 0.0, 30.0),
                    [1.0, 0.0, 0.0])
    assert np.abs(np.arctan2(np.asarray(loose.vy), np.asarray(loose.vx))).max() > 1.5


@pytest.mark.parametrize("model", ["kinematic", "dynamic"])
def test_braking_is_friction_limited_stops_and_never_reverses(model):
    s0 = init_car_state(0.0, 0.0, 0.0, 30.0)
    tr = rollout(model, P, s0, [0.0, 0.0, 1.0])
    vx, x, ax = np.asarray(tr.vx), np.asarray(tr.x), np.asarray(tr.ax)
    stop = int(np.argmax(vx == 0.0))
    assert vx[stop] == 0.0 and stop > 0
    decel = -ax[: stop - 1]
    drag = (P.drag_coef * 30.0**2 + P.rolling_resistance) / P.mass
    # brake force (10 m/s^2 requested) is capped by grip: at most mu g, plus drag
    assert decel.max() <= P.mu * P.g + drag + 0.05
    assert decel.min() >= 0.85 * P.mu * P.g
    # stopped and stays stopped: no reversal, no creeping
    assert np.all(vx >= 0.0)
    assert np.all(vx[stop:] == 0.0) and np.all(np.asarray(tr.vy)[stop:] == 0.0)
    assert np.ptp(x[stop:]) == 0.0
    assert np.all(ax[stop + 1:] == 0.0)
    # a light brake below the grip limit decelerates at brake force / mass (+ drag, rolling resistance)
    light = rollout(model, P, init_car_state(0.0, 0.0, 0.0, 20.0), [0.0, 0.0, 0.3])
    expected = (0.3 * P.max_brake_force + P.drag_coef * 20.0**2 + P.rolling_resistance) / P.mass
    assert -float(light.ax[1]) == pytest.approx(expected, rel=0.03)


def tyre_brake_decel(p: CarParams) -> float:
    """Full-brake deceleration from the tyres alone: per-axle grip caps with longitudinal load transfer."""
    a, wheelbase = 0.0, p.lf + p.lr
    for _ in range(100):  # fixed point: the loads depend on the deceleration they allow
        fz_f = p.mass * (p.g * p.lr + p.cg_height * a) / wheelbase
        fz_r = p.mass * (p.g * p.lf - p.cg_height * a) / wheelbase
        front = min(p.brake_front_share * p.max_brake_force, p.mu * fz_f)
        rear = min((1.0 - p.brake_front_share) * p.max_brake_force, p.mu * p.rear_grip_ratio * fz_r)
        a = (front + rear) / p.mass
    return a


@pytest.mark.parametrize("model", ["kinematic", "dynamic"])
def test_full_braking_follows_axle_grip_and_load_transfer(model):
    # A higher centre of gravity unloads the rear axle more, which then locks earlier: less deceleration.
    decels = []
    for cg in (0.1, 0.9):
        p = P.replace(cg_height=cg)
        tr = rollout(model, p, init_car_state(0.0, 0.0, 0.0, 25.0), [0.0, 0.0, 1.0])
        vx, ax = np.asarray(tr.vx), np.asarray(tr.ax)
        i = 10  # past the first steps, while the load transfer settles
        v_mid = vx[i] + 0.5 * ax[i] * 0.05
        measured = -ax[i] - (p.drag_coef * v_mid**2 + p.rolling_resistance) / p.mass
        assert measured == pytest.approx(tyre_brake_decel(p), rel=0.02), cg
        decels.append(measured)
    assert decels[1] < decels[0] - 0.5


@pytest.mark.parametrize("model", ["kinematic", "dynamic"])
def test_resistance_and_brake_do_not_move_a_car_at_rest(model):
    s0 = init_car_state(5.0, -2.0, 1.0, 0.0)
    for action in ([0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [-1.0, 0.0, 0.5]):
        tr = rollout(model, P, s0, action)
        assert float(tr.x[-1]) == 5.0 and float(tr.y[-1]) == -2.0 and float(speed(tr)[-1]) < 1e-5


@pytest.mark.parametrize("model", ["kinematic", "dynamic"])
def test_top_speed_on_a_long_straight_approaches_top_speed(model):
    v_top = float(top_speed(P))
    # Near the top the approach is exponential with a time constant of about 16 s: start at 55 m/s, run 100 s.
    s, vx = init_car_state(0.0, 0.0, 0.0, 55.0), []
    for _ in range(25):
        tr = rollout(model, P, s, [0.0, 1.0, 0.0])
        s = last(tr)
        vx.append(np.asarray(tr.vx))
    vx = np.concatenate(vx)
    assert vx[-1] == pytest.approx(v_top, rel=0.002)
    assert np.all(np.diff(vx) >= 0.0) and vx.max() <= v_top * 1.001
    # at the top speed the power-limited drive force balances drag and rolling resistance
    assert P.engine_power / v_top == pytest.approx(P.drag_coef * v_top**2 + P.rolling_resistance, rel=1e-4)


@pytest.mark.parametrize("model", ["kinematic", "dynamic"])
def test_full_throttle_from_rest_is_force_limited_then_power_limited(model):
    first = rollout(model, P, init_car_state(0.0, 0.0, 0.0, 0.0), [0.0, 1.0, 0.0])
    tr = concat(first, rollout(model, P, last(first), [0.0, 1.0, 0.0]))  # 8 s
    vx, ax = np.asarray(tr.vx), np.asarray(tr.ax)
    # below engine_power / max_drive_force (21 m/s): max_drive_force minus resistance, straight ahead
    slow = vx < 15.0
    expected = (P.max_drive_force - P.rolling_resistance - P.drag_coef * vx[slow] ** 2) / P.mass
    np.testing.assert_allclose(ax[slow][2:], expected[2:], rtol=0.03)
    assert np.abs(np.asarray(tr.y)).max() < 1e-6 and np.abs(np.asarray(tr.yaw)).max() < 1e-6
    # above it: the engine's power, P / v
    fast = vx > 25.0
    assert fast.any()
    v_mid = vx[fast] - 0.5 * ax[fast] * 0.05
    expected = (P.engine_power / v_mid - P.rolling_resistance - P.drag_coef * v_mid**2) / P.mass
    np.testing.assert_allclose(ax[fast], expected, rtol=0.03)


def test_top_speed_is_force_limited_when_the_drive_force_cap_binds():
    p = P.replace(engine_power=1e6, max_drive_force=2000.0)
    assert float(top_speed(p)) == pytest.approx(np.sqrt((2000.0 - p.rolling_resistance) / p.drag_coef), rel=1e-5)


@pytest.mark.parametrize("model", ["kinematic", "dynamic"])
def test_steering_rate_limit_is_respected(model):
    dt = 0.05
    s0 = init_car_state(0.0, 0.0, 0.0, 10.0)
    up = rollout(model, P, s0, [1.0, 0.0, 0.0])
    steer = np.concatenate([[0.0], np.asarray(up.steer)])
    assert np.abs(np.diff(steer)).max() <= P.max_steer_rate * dt + 1e-6
    assert steer[-1] == pytest.approx(P.max_steer)  # 0.45 rad at 2 rad/s: reached within 0.25 s
    # reversing the command: again at most rate * dt per step, then holds at -max_steer
    down = rollout(model, P, last(up), [-5.0, 0.0, 0.0])  # out of range: clipped to -1
    steer = np.concatenate([[steer[-1]], np.asarray(down.steer)])
    assert np.abs(np.diff(steer)).max() <= P.max_steer_rate * dt + 1e-6
    assert steer[-1] == pytest.approx(-P.max_steer)


@pytest.mark.parametrize("model", ["kinematic", "dynamic"])
def test_no_nan_or_inf_for_random_extreme_states_actions_and_steps(model):
    n = 1000
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    u = lambda k, lo, hi: jax.random.uniform(k, (n,), minval=lo, maxval=hi)
    ks = jax.random.split(keys[0], 9)
    states = init_car_state(u(ks[0], -1e3, 1e3), u(ks[1], -1e3, 1e3), u(ks[2], -4.0, 4.0), 0.0).replace(
        vx=u(ks[3], -30.0, 90.0), vy=u(ks[4], -30.0, 30.0), yaw_rate=u(ks[5], -6.0, 6.0),
        steer=u(ks[6], -1.0, 1.0), ax=u(ks[7], -30.0, 30.0), ay=u(ks[8], -30.0, 30.0),
    )
    # a quarter of the cars exactly at rest
    rest = jnp.arange(n) % 4 == 0
    states = states.replace(vx=jnp.where(rest, 0.0, states.vx), vy=jnp.where(rest, 0.0, states.vy),
                            yaw_rate=jnp.where(rest, 0.0, states.yaw_rate))
    actions = jax.random.uniform(keys[1], (n, 3), minval=-3.0, maxval=3.0)  # out of range both ways
    params = jax.vmap(lambda k: sample_car_params(k, P, 0.9))(jax.random.split(keys[2], n))
    step = MODELS[model]
    run = jax.jit(jax.vmap(lambda p, s, a, dt: step(p, s, a, dt, 4), in_axes=(0, 0, 0, None)))
    for dt in (0.05, 0.02, 1.0, 10.0):
        s = states
        for _ in range(10):
            s = run(params, s, actions, dt)
        for name, leaf in zip(s.__dataclass_fields__, jax.tree_util.tree_leaves(s)):
            assert np.isfinite(np.asarray(leaf)).all(), f"{model} dt={dt}: non-finite {name}"
        assert np.all(np.abs(np.asarray(s.yaw)) <= np.pi + 1e-6)


@pytest.mark.parametrize("model", ["kinematic", "dynamic"])
def test_reverse_motion_decelerates_to_rest_without_nan(model):
    s0 = init_car_state(0.0, 0.0, 0.0, -10.0)
    tr = rollout(model, P, s0, [0.5, 0.0, 1.0])
    vx = np.asarray(tr.vx)
    assert np.isfinite(vx).all() and np.all(vx <= 0.0) and vx[-1] == 0.0


def slalom(s0, amp, dt, substeps):
    """Dynamic model, steer alternating +-amp every second, half throttle, N_STEPS steps."""
    t = np.arange(N_STEPS) * dt
    actions = np.stack([amp * np.where(np.sin(np.pi * t) >= 0.0, 1.0, -1.0), np.full_like(t, 0.5), np.zeros_like(t)], 1)
    return rollout("dynamic", P, s0, actions, dt, substeps)


def test_dynamic_integration_is_stable_and_converges_at_control_periods():
    for dt in (0.05, 0.02):
        # Fast slalom below the limit: 4 substeps agree with 64 (the converged reference) to centimetres.
        fast = init_car_state(0.0, 0.0, 0.0, 45.0)
        ref = slalom(fast, 0.04, dt, 64)
        tr = slalom(fast, 0.04, dt, 4)
        if dt == 0.05:
            assert np.abs(np.asarray(ref.ay)).max() > 7.0
        assert np.hypot(np.asarray(tr.x - ref.x), np.asarray(tr.y - ref.y)).max() < (0.2 if dt == 0.05 else 0.05)
        assert np.abs(np.asarray(tr.yaw_rate - ref.yaw_rate)).max() < 0.01
        # Full-lock slalom, sliding at high yaw rate: sensitive to every digit, but coarse steps stay
        # bounded and track the reference for the first two seconds, even with a single substep.
        slide = init_car_state(0.0, 0.0, 0.0, 20.0)
        ref = slalom(slide, 1.0, dt, 64)
        assert np.abs(np.asarray(ref.yaw_rate)).max() > 1.0
        head = int(round(min(2.0, N_STEPS * dt) / dt))
        for substeps in (4, 1):
            tr = slalom(slide, 1.0, dt, substeps)
            assert np.hypot(np.asarray(tr.x - ref.x), np.asarray(tr.y - ref.y))[:head].max() < 0.5
            assert np.abs(np.asarray(tr.yaw_rate)).max() < 1.2 * np.abs(np.asarray(ref.yaw_rate)).max()
            assert np.abs(np.asarray(tr.vy)).max() < 1.2 * np.abs(np.asarray(ref.vy)).max() + 0.1


def test_gradients_of_a_dynamic_step_are_finite_and_match_finite_differences():
    # One step from states covering rest, the kinematic blend, grip and a slide, braking and driving.
    states = init_car_state(jnp.zeros(5), jnp.zeros(5), jnp.zeros(5), jnp.array([0.0, 2.5, 15.0, 40.0, 25.0])).replace(
        vy=jnp.array([0.0, 0.3, -1.0, -3.0, -6.0]), yaw_rate=jnp.array([0.0, 0.2, 0.5, 0.3, 1.2]),
        steer=jnp.array([0.0, 0.1, 0.2, 0.1, 0.4]))
    actions = jnp.array([[0.5, 1.0, 0.0], [0.5, 0.5, 0.2], [1.0, 0.3, 0.0], [0.2, 0.0, 1.0], [1.0, 0.2, 0.0]])

    def loss(p):
        s = dynamic_step(p, states, actions, 0.05, 1)
        return jnp.sum(s.x + 2.0 * s.y + s.vx + 3.0 * s.vy + 5.0 * s.yaw_rate)

    grads = jax.jit(jax.grad(loss))(P)
    assert np.isfinite(np.array(jax.tree_util.tree_leaves(grads))).all()
    loss_jit = jax.jit(loss)
    for name, eps in (("mass", 5.0), ("mu", 0.005), ("tyre_B", 0.05), ("cg_height", 0.01)):
        up = loss_jit(P.replace(**{name: getattr(P, name) + eps}))
        down = loss_jit(P.replace(**{name: getattr(P, name) - eps}))
        fd = float(up - down) / (2 * eps)
        assert float(getattr(grads, name)) == pytest.approx(fd, rel=0.05, abs=1e-3 * abs(fd) + 1e-4), name


def test_validate_car_params_names_field_value_and_range():
    with pytest.raises(CarParamsError, match=r"mass=-5\.0.*\[100, 4000\]"):
        validate_car_params(P.replace(mass=-5.0))
    with pytest.raises(CarParamsError, match="tyre_E"):
        validate_car_params(P.replace(tyre_E=1.5))
    with pytest.raises(CarParamsError, match="mu=nan"):
        validate_car_params(P.replace(mu=float("nan")))
    with pytest.raises(CarParamsError, match=r"lf.*element 2 of 3"):
        validate_car_params(P.replace(lf=np.array([1.0, 1.2, 9.0])))
    with pytest.raises(CarParamsError, match="outside jit"):
        jax.jit(validate_car_params)(P)
    assert issubclass(CarParamsError, ValueError)


def test_car_params_dict_round_trip_and_errors():
    p = P.replace(mass=1234.5, mu=1.1)
    d = car_params_to_dict(p)
    assert set(d) == set(PARAM_NAMES)
    assert car_params_from_dict(json.loads(json.dumps(d))) == p
    assert car_params_from_dict({"mass": 900}).mass == 900.0  # missing fields keep their defaults
    with pytest.raises(CarParamsError, match=r"'masss'.*valid names"):
        car_params_from_dict({"masss": 900.0})
    with pytest.raises(CarParamsError, match="mu='high'"):
        car_params_from_dict({"mu": "high"})
    with pytest.raises(CarParamsError, match="mass=10"):
        car_params_from_dict({"mass": 10.0})


def test_sample_car_params_stays_in_range_and_is_deterministic_per_key():
    keys = jax.random.split(jax.random.PRNGKey(42), 512)
    sample = jax.jit(jax.vmap(lambda k: sample_car_params(k, P, 0.95)))
    batch = sample(keys)
    for name in PARAM_NAMES:
        lo, hi = PARAM_RANGES[name]
        v = np.asarray(getattr(batch, name))
        assert v.shape == (512,) and np.all((v >= lo) & (v <= hi)), name
        nominal = getattr(P, name)
        assert np.all(np.abs(v - nominal) <= 0.95 * abs(nominal) + 1e-3 * abs(nominal)), name
    assert np.std(np.asarray(batch.mass)) > 100.0  # actually randomised
    again = sample(keys)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(batch), jax.tree_util.tree_leaves(again)))
    # per-field spread: only the named fields move
    one = sample_car_params(keys[0], P, {"mu": 0.2})
    assert abs(float(one.mu) - P.mu) > 0.0 and abs(float(one.mu) - P.mu) <= 0.2 * P.mu + 1e-6
    assert float(one.mass) == pytest.approx(P.mass)
    with pytest.raises(CarParamsError, match="'grip'"):
        sample_car_params(keys[0], P, {"grip": 0.1})
    with pytest.raises(CarParamsError, match=r"\[0, 1\)"):
        sample_car_params(keys[0], P, 1.5)


def test_substeps_must_be_a_static_positive_int():
    s0 = init_car_state(0.0, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="substeps"):
        kinematic_step(P, s0, jnp.zeros(3), 0.05, substeps=0)
    with pytest.raises(ValueError, match="substeps"):
        dynamic_step(P, s0, jnp.zeros(3), 0.05, substeps=2.0)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_steering_servo_lag_follows_its_time_constant(model):
    # A slow servo: the road-wheel angle closes 1 - exp(-t / tau) of the gap, below the rate limit.
    lagged = P.replace(steer_tau=0.2, max_steer_rate=20.0)
    traj = rollout(model, lagged, init_car_state(0.0, 0.0, 0.0, 5.0), [0.5, 0.0, 0.0])
    target = 0.5 * P.max_steer
    for k in (0, 3, 9):
        t = 0.05 * (k + 1)
        assert float(traj.steer[k]) == pytest.approx(target * (1.0 - np.exp(-t / 0.2)), rel=0.03)
    instant = rollout(model, P.replace(max_steer_rate=20.0), init_car_state(0.0, 0.0, 0.0, 5.0), [0.5, 0.0, 0.0])
    assert float(instant.steer[0]) == pytest.approx(target, rel=1e-5)  # no lag by default


@pytest.mark.parametrize("model", sorted(MODELS))
def test_pedal_maps_scale_drive_and_brake_force_by_a_power_of_the_pedal(model):
    # From rest, force-limited: half throttle with gamma 2 pushes as hard as a quarter linear pedal.
    def speed_after_one_step(params, action):
        return float(rollout(model, params, init_car_state(0.0, 0.0, 0.0, 0.0), action).vx[0])

    quarter = speed_after_one_step(P, [0.0, 0.25, 0.0])
    assert speed_after_one_step(P.replace(throttle_gamma=2.0), [0.0, 0.5, 0.0]) == pytest.approx(quarter, rel=1e-4)
    assert speed_after_one_step(P, [0.0, 0.5, 0.0]) > 1.5 * quarter
    # Braking from 20 m/s with gamma 0.5: a quarter pedal brakes as hard as half the linear pedal.
    start = init_car_state(0.0, 0.0, 0.0, 20.0)
    soft = float(rollout(model, P.replace(brake_gamma=0.5), start, [0.0, 0.0, 0.25]).vx[0])
    linear = float(rollout(model, P, start, [0.0, 0.0, 0.5]).vx[0])
    assert soft == pytest.approx(linear, abs=1e-3)
    assert float(rollout(model, P.replace(throttle_gamma=3.0), init_car_state(0.0, 0.0, 0.0, 0.0), [0.0, 0.0, 0.0]).vx[-1]) == 0.0


@pytest.mark.parametrize("model", sorted(MODELS))
def test_the_applied_throttle_rises_at_its_rate_limit_and_is_released_at_once(model):
    # 4 /s: full throttle 0.25 s after the step; the car pulls as the pedal travel it has reached.
    slow = P.replace(throttle_rise_rate=4.0)
    s0 = init_car_state(0.0, 0.0, 0.0, 10.0)
    up = rollout(model, slow, s0, [0.0, 1.0, 0.0])
    np.testing.assert_allclose(np.asarray(up.throttle[:6]), [0.2, 0.4, 0.6, 0.8, 1.0, 1.0], atol=1e-5)
    assert float(up.vx[0]) < float(rollout(model, P, s0, [0.0, 1.0, 0.0]).vx[0])
    assert float(up.vx[0]) == pytest.approx(float(rollout(model, P, s0, [0.0, 0.125, 0.0]).vx[0]), abs=0.02)
    down = rollout(model, slow, last(up), [0.0, 0.3, 0.0])
    assert float(down.throttle[0]) == pytest.approx(0.3)
    # none by default: the command is applied within the first substep
    assert float(rollout(model, P, s0, [0.0, 1.0, 0.0]).throttle[0]) == 1.0


def test_a_slip_velocity_tyre_stiffens_with_speed_and_a_slip_angle_tyre_does_not():
    """tyre_speed_exp: cornering stiffness times (speed / 10 m/s) ** exp (CarRacing's tyres: exp 1)."""
    def lateral_accel(exp: float, v: float) -> float:
        alpha = 0.002  # rad of body slip: the linear part of the tyre curve
        s = init_car_state(0.0, 0.0, 0.0, v).replace(vy=jnp.float32(-v * np.tan(alpha)))
        return float(dynamic_step(CarParams(tyre_speed_exp=exp), s, jnp.zeros(3), 1e-4, substeps=1).ay)

    assert lateral_accel(0.0, 40.0) == pytest.approx(lateral_accel(0.0, 20.0), rel=0.02)
    assert lateral_accel(1.0, 40.0) / lateral_accel(1.0, 20.0) == pytest.approx(2.0, rel=0.05)
    assert lateral_accel(1.0, 10.0) == pytest.approx(lateral_accel(0.0, 10.0), rel=1e-3)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_steering_past_the_lock_command_turns_the_wheels_no_further(model):
    # CarRacing's kind of steering: the command is the wheel angle in radians, the wheels stop at 0.4.
    car = P.replace(max_steer=0.4, steer_lock_command=0.4, max_steer_rate=50.0)
    s0 = init_car_state(0.0, 0.0, 0.0, 5.0)
    angle = lambda params, cmd: float(last(rollout(model, params, s0, [cmd, 0.0, 0.0])).steer)  # noqa: E731
    assert angle(car, 0.2) == pytest.approx(0.2, rel=1e-4)  # 1 rad per unit of command below the lock
    assert angle(car, 0.4) == pytest.approx(0.4, rel=1e-4)
    assert angle(car, 1.0) == pytest.approx(0.4, rel=1e-4) and angle(car, -0.7) == pytest.approx(-0.4, rel=1e-4)
    # the default lock is at the end of the command's travel: linear throughout, as before the field
    assert P.steer_lock_command == 1.0
    assert angle(P.replace(max_steer_rate=50.0), 0.5) == pytest.approx(0.5 * P.max_steer, rel=1e-4)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_a_speed_cap_holds_the_car_at_it_on_full_throttle_with_no_acceleration_left(model):
    capped = P.replace(max_speed=25.0)
    traj = rollout(model, capped, init_car_state(0.0, 0.0, 0.0, 20.0), [0.0, 1.0, 0.0])
    v = np.asarray(speed(traj))
    assert v.max() <= 25.0 + 1e-4 and v[-1] == pytest.approx(25.0, rel=1e-5)
    assert abs(float(traj.ax[-1])) < 1e-3  # the IMU feels the cap: no push left
    assert float(top_speed(capped)) == pytest.approx(25.0)
    # the default cap is beyond anything the default car reaches: its top speed is drag's
    assert float(top_speed(P)) < P.max_speed
