"""The fit recovers a known car from its own telemetry, picks its input delay, and its multi-step
loss predicts seconds ahead where a one-step fit drifts."""
import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from surrogate import fit as F
from surrogate.car import PARAM_RANGES, CarParams, init_car_state, kinematic_step, speed
from surrogate.fit_data import prepare
from surrogate.residual import init_residual

DT = 0.04
# A car unlike the default: weaker engine, less grip, a slow steering rack, a progressive throttle
# behind a pedal filter.
TRUE = CarParams(mu=0.8, max_steer=0.3, max_steer_rate=1.0, max_drive_force=5000.0, engine_power=60e3,
                 max_brake_force=9000.0, drag_coef=0.6, throttle_gamma=1.5, throttle_rise_rate=3.0)
TRUE_DELAY = 1


def simulate(car, delay, seed, n=400, steer_scale=1.0):
    """One recorded episode of ``car`` under smooth random controls, frames as the recorder keeps them."""
    rng = np.random.default_rng(seed)
    smooth = lambda x, k: np.convolve(x, np.ones(k) / k, "same")  # noqa: E731
    steer = np.clip(smooth(rng.normal(0, 1.2 * steer_scale, n), 15), -1, 1)
    pedal = smooth(rng.normal(0.2, 1.5, n), 30)
    ctrl = np.stack([steer, np.clip(pedal, 0, 1), np.clip(-pedal, 0, 1)], 1).astype(np.float32)
    ctrl[0] = 0.0
    # frame j + 1 says which controls the game applied; the car felt those of `delay` frames before
    felt = np.concatenate([np.repeat(ctrl[:1], delay, 0), ctrl[:-delay]]) if delay else ctrl

    def body(s, u):
        s = kinematic_step(car, s, u, DT, 4)
        return s, jnp.stack([s.x, s.y, s.yaw, speed(s), s.yaw_rate, s.ax, s.ay])

    _, out = jax.lax.scan(body, init_car_state(0.0, 0.0, 0.0, 8.0), jnp.asarray(felt[1:]))
    out = np.concatenate([[[0, 0, 0, 8.0, 0, 0, 0]], np.asarray(out)])
    names = ("x", "y", "yaw", "speed", "yaw_rate", "accel_long", "accel_lat")
    fields = {k: out[:, i].astype(float) for i, k in enumerate(names)}
    fields.update(t=np.arange(n) * DT, seq=np.arange(n) + 10_000 * seed, steer=ctrl[:, 0].astype(float),
                  throttle=ctrl[:, 1].astype(float), brake=ctrl[:, 2].astype(float))
    return types.SimpleNamespace(episode=seed, fields=fields)


@pytest.fixture(scope="module")
def data():
    th = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    track = {"name": "c", "closed": True, "x": list(300 * np.cos(th)), "y": list(300 * np.sin(th)),
             "w_left": [10.0] * 64, "w_right": [10.0] * 64}
    rec = types.SimpleNamespace(episodes=[simulate(TRUE, TRUE_DELAY, s) for s in range(5)], track=track, meta={},
                                rejected=0, bad_lines=0)
    return prepare([rec], ["synthetic"], horizon_s=1.0, max_delay=2, stride=2, val_fraction=0.2)


def test_parameters_map_into_their_physical_ranges_with_finite_gradients():
    space = F.Space(F.FIT_FIELDS["dynamic"])
    values = space.values(CarParams())
    back = np.asarray(space.from_z(jnp.asarray(space.to_z(values))))
    # a value on an edge comes back a thousandth of its range inside it, on the field's own scale
    # (logarithmic for the ranges that span decades)
    log, lo, hi = space._t()
    scale = lambda v: np.where(log, np.log(np.maximum(v, 1e-12)), v)  # noqa: E731
    assert np.all(np.abs(scale(back) - scale(values)) <= 1e-3 * np.abs(scale(values)) + 1.01e-3 * (hi - lo)), (back, values)
    for z in (-30.0, 0.0, 30.0):  # far out in the unconstrained space: still inside the ranges
        v = np.asarray(space.from_z(jnp.full(len(space.fields), z)))
        for f, x in zip(space.fields, v):
            lo, hi = PARAM_RANGES[f]
            assert lo - 1e-6 * abs(lo) <= x <= hi * (1 + 1e-6), f
    g = jax.grad(lambda z: jnp.sum(space.from_z(z)))(jnp.zeros(len(space.fields)))
    assert np.all(np.isfinite(np.asarray(g)))


def test_the_multi_step_fit_recovers_the_car_and_its_input_delay(data):
    cfg = F.FitConfig(steps=150, delay_starts=1, starts=1, residual=False, one_step=False, horizon_s=1.0, max_delay=2,
                      learning_rate=0.15)
    res = F.fit_all(data, cfg, models=("kinematic",))
    kin = res.fits["kinematic"]
    assert kin.delay == TRUE_DELAY
    assert min(res.delay_scores, key=res.delay_scores.get) == TRUE_DELAY
    assert kin.val["pos_err_1s_median"] < 0.15 and kin.val["speed_err_1s_median"] < 0.1
    # what the motion pins down: the accelerations the pedals give and the grip
    assert float(kin.car.max_drive_force) == pytest.approx(TRUE.max_drive_force, rel=0.15)
    assert float(kin.car.throttle_gamma) == pytest.approx(TRUE.throttle_gamma, rel=0.15)
    assert float(kin.car.throttle_rise_rate) == pytest.approx(TRUE.throttle_rise_rate, rel=0.3)
    assert res.chosen in ("kinematic", "dynamic")
    assert set(res.best.spread) == set(F.FIT_FIELDS[res.best.model])
    assert all(0.0 <= v <= 0.3 for v in res.best.spread.values())


def test_a_one_step_fit_drifts_further_one_second_ahead_than_the_multi_step_fit(data):
    cfg = F.FitConfig(steps=120, starts=1, horizon_s=1.0, max_delay=2)
    start = F.initial_car(data)
    multi = F.fit_model(data, "kinematic", [TRUE_DELAY], [start], cfg, steps=120)[0][0]
    one = F.fit_model(data, "kinematic", [TRUE_DELAY], [start], cfg, steps=120, one_step=True)[0][0]
    e_multi = F.evaluate(data, data.val, "kinematic", TRUE_DELAY, multi, None)
    e_one = F.evaluate(data, data.val, "kinematic", TRUE_DELAY, one, None)
    assert e_one["pos_err_1s_median"] > 1.5 * e_multi["pos_err_1s_median"]


def test_an_untrained_residual_changes_no_prediction(data):
    car = F.initial_car(data)
    plain = F.predict(data, data.val, "kinematic", 1, car, None)
    with_net = F.predict(data, data.val, "kinematic", 1, car, init_residual(jax.random.PRNGKey(0), (8,)))
    np.testing.assert_allclose(with_net, plain, atol=1e-5)


def test_window_loss_counts_only_the_steps_inside_the_horizon():
    target = jnp.zeros((1, 6, 5))
    pred = target.at[0, 3:, 0].set(100.0)  # wrong only from step 3 on
    assert float(F.window_loss(pred, target, 3)[0]) == 0.0
    assert float(F.window_loss(pred, target, 6)[0]) > 10.0


def test_a_rollout_cut_to_its_active_steps_predicts_those_steps_as_the_whole_one_and_holds_after(data):
    car, w = F.initial_car(data), F._as_arrays(data.val)
    whole = np.asarray(F._predict_batch("dynamic", data.max_delay, 4, car, None, 1, w))
    cut = np.asarray(jax.jit(lambda k: F._predict_batch("dynamic", data.max_delay, 4, car, None, 1, w, k))(5))
    np.testing.assert_allclose(cut[:, :5], whole[:, :5], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(cut[:, 5:], np.repeat(cut[:, 4:5], whole.shape[1] - 5, axis=1))
    assert not np.allclose(cut[:, -1], whole[:, -1])


def test_least_grip_lowers_an_unmeasured_grip_while_the_held_out_error_stays_within_tolerance(data):
    # The synthetic car never slides much, so a far higher grip fits as well: the search walks it down.
    fit = F.ModelFit("kinematic", "kinematic", TRUE_DELAY, TRUE.replace(mu=8.0), None, 0.0, {}, 0.0)
    car, changed = F.least_grip(data, fit, 0.05)
    assert changed["mu"][0] == 8.0 and float(car.mu) < 8.0
    assert changed["score"][1] <= 1.05 * changed["score"][0]
    # with no tolerance it never trades accuracy for less grip
    _, strict = F.least_grip(data, dataclasses.replace(fit, car=TRUE), 0.0)
    assert not strict or strict["score"][1] <= strict["score"][0]
    with pytest.raises(ValueError, match="grip_tolerance"):
        F.FitConfig(grip_tolerance=2.0)


def test_balanced_sampling_draws_rare_regimes_more_often_and_is_off_by_default(data):
    from surrogate.fit_regimes import window_regimes

    assert F.sampling_probabilities(data, F.FitConfig()) is None
    p = F.sampling_probabilities(data, F.FitConfig(balance=True))
    keys = window_regimes(data.train, data.max_delay, data.dt)["key"]
    assert p.shape == (len(data.train),) and p.sum() == pytest.approx(1.0)
    # the rarest regime (with enough windows to count whole) gets as much weight as the commonest
    ks, counts = np.unique(keys, return_counts=True)
    big, rare = ks[np.argmax(counts)], ks[np.argmin(np.where(counts >= 20, counts, 10**9))]
    assert p[keys == big].sum() == pytest.approx(p[keys == rare].sum(), rel=1e-5)


def test_a_fit_of_chosen_fields_moves_only_those_and_keeps_the_rest_of_the_start(data):
    cfg = F.FitConfig(steps=5, starts=1, horizon_s=1.0, max_delay=2)
    start = F.initial_car(data)
    car = F.fit_model(data, "kinematic", [TRUE_DELAY], [start], cfg, steps=5, fields=("mu", "max_steer"))[0][0]
    moved = {f for f in F.KINEMATIC_FIELDS if float(getattr(car, f)) != pytest.approx(float(getattr(start, f)), rel=1e-5)}
    assert moved and moved <= {"mu", "max_steer"}


def test_the_fit_finds_a_steering_lock_inside_the_commands_travel():
    # A car whose wheels stop at 0.25 rad from command 0.5 on, steered past it half the time with grip
    # to spare (where friction caps the turn, the lock is hidden): the fit moves the lock in from the
    # start's 0.7 to where the recording shows it.
    true = TRUE.replace(mu=2.0, max_steer=0.25, steer_lock_command=0.5, max_steer_rate=5.0)
    th = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    track = {"name": "c", "closed": True, "x": list(300 * np.cos(th)), "y": list(300 * np.sin(th)),
             "w_left": [10.0] * 64, "w_right": [10.0] * 64}
    rec = types.SimpleNamespace(episodes=[simulate(true, 0, s, steer_scale=2.5) for s in range(4)], track=track, meta={},
                                rejected=0, bad_lines=0)
    d = prepare([rec], ["synthetic"], horizon_s=1.0, max_delay=0, stride=2, val_fraction=0.25)
    cfg = F.FitConfig(steps=150, starts=1, horizon_s=1.0, max_delay=0, learning_rate=0.15)
    # fitted only on request (FitConfig.fit_steer_lock): the default fit keeps the lock at the command's end
    assert "steer_lock_command" not in F.model_fields("dynamic") and "steer_lock_command" in F.model_fields("dynamic", True)
    assert float(F.initial_car(d).steer_lock_command) == 1.0
    start = F.initial_car(d, steer_lock=True).replace(max_steer=0.3)
    assert float(start.steer_lock_command) == 0.7
    fields = ("max_steer", "steer_lock_command", "max_steer_rate")
    car = F.fit_model(d, "kinematic", [0], [start], cfg, steps=150, fields=fields)[0][0]
    assert float(car.steer_lock_command) == pytest.approx(0.5, abs=0.08)
    assert float(car.max_steer) == pytest.approx(0.25, rel=0.1)
    assert float(car.max_steer_rate) == pytest.approx(5.0, rel=0.2)


def test_a_speed_the_recordings_hold_on_the_throttle_is_the_cars_cap_and_one_passed_through_is_not(data):
    capped = TRUE.replace(max_speed=11.0)
    th = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    track = {"name": "c", "closed": True, "x": list(300 * np.cos(th)), "y": list(300 * np.sin(th)),
             "w_left": [10.0] * 64, "w_right": [10.0] * 64}
    rec = types.SimpleNamespace(episodes=[simulate(capped, 0, s) for s in range(3)], track=track, meta={},
                                rejected=0, bad_lines=0)
    d = prepare([rec], ["synthetic"], horizon_s=1.0, max_delay=0, stride=2, val_fraction=0.34)
    assert F.held_top_speed(d) == pytest.approx(11.0, rel=1e-4)
    # the fit runs without it; the car written for training gets it
    assert float(F.initial_car(d).max_speed) == CarParams().max_speed
    assert float(F.with_speed_cap(TRUE, F.held_top_speed(d)).max_speed) == pytest.approx(11.0, rel=1e-4)
    # the uncapped car's fastest frame was passed through: no cap, the fitted drag sets its top speed
    assert F.held_top_speed(data) is None
    assert F.with_speed_cap(TRUE, F.held_top_speed(data)) == TRUE


def test_the_servo_is_refitted_from_the_slow_windows_alone():
    """Windows below a speed from a car with a slow steering servo, above it from the same car with a
    fast one: refitted below that speed the servo is the slow car's, whatever the fast windows say."""
    fast = TRUE.replace(max_steer_rate=8.0)
    th = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    track = {"name": "c", "closed": True, "x": list(300 * np.cos(th)), "y": list(300 * np.sin(th)),
             "w_left": [10.0] * 64, "w_right": [10.0] * 64}

    def windows(car):
        rec = types.SimpleNamespace(episodes=[simulate(car, TRUE_DELAY, s, steer_scale=2.0) for s in range(4)],
                                    track=track, meta={}, rejected=0, bad_lines=0)
        return prepare([rec], ["synthetic"], horizon_s=1.0, max_delay=2, stride=2, val_fraction=0.25)

    slow_data, fast_data = windows(TRUE), windows(fast)
    below = float(np.median(F.window_speeds(slow_data.train)))
    mixed = dataclasses.replace(slow_data, train=F.Windows(*(
        np.concatenate([getattr(slow_data.train.take(F.window_speeds(slow_data.train) < below), f.name),
                        getattr(fast_data.train.take(F.window_speeds(fast_data.train) >= below), f.name)])
        for f in dataclasses.fields(F.Windows))))
    cfg = F.FitConfig(steps=120, batch=64, horizon_s=1.0, max_delay=2, learning_rate=0.15)
    start = TRUE.replace(max_steer_rate=4.0, steer_tau=0.05)
    refit = F.fit_servo(mixed, "kinematic", TRUE_DELAY, start, cfg, below)
    assert float(refit.max_steer_rate) == pytest.approx(1.0, rel=0.2) and float(refit.steer_tau) < 0.03
    assert all(float(getattr(refit, f)) == float(getattr(start, f)) for f in F.KINEMATIC_FIELDS if f not in F.SERVO_FIELDS)
    over_all = F.fit_servo(mixed, "kinematic", TRUE_DELAY, start, cfg, np.inf)
    assert float(over_all.max_steer_rate) > 1.5 * float(refit.max_steer_rate)  # the fast windows pull it up
    assert F.fit_servo(mixed, "kinematic", TRUE_DELAY, start, cfg, 0.5) is None  # no window starts that slowly
