import json

import jax
import numpy as np
import pytest

from surrogate.car import CarParams
from surrogate.env import MAX_DELAY_STEPS
from surrogate.residual import init_residual
from surrogate.surrogate_file import SurrogateFileError, default_speed_limit, load_surrogate, save_surrogate, speed_limit_for
from surrogate.track_io import load_track


def test_surrogate_file_round_trip_keeps_car_and_track(tmp_path):
    car = CarParams(mass=1234.0, mu=1.2)
    track = load_track("oval")
    path = save_surrogate(tmp_path / "fit.json", "kinematic", car, track)
    doc = json.loads(path.read_text())
    assert (doc["format"], doc["version"], doc["model"]) == ("racerl-surrogate", 2, "kinematic")
    fitted = load_surrogate(path)
    assert fitted.model == "kinematic" and fitted.car == car
    np.testing.assert_allclose(fitted.track.x, track.x)
    np.testing.assert_allclose(fitted.track.w_left, track.w_left)



@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(format="csv"), "field 'format' is 'csv'"),
        (lambda d: d.update(version=3), "field 'version' is 3"),
        (lambda d: d.update(delay_steps=MAX_DELAY_STEPS + 1), "field 'delay_steps' is 11"),
        (lambda d: d.update(delay_steps=1.5), "field 'delay_steps' is 1.5"),
        (lambda d: d["control"].update(dt=-0.1), "field 'control.dt' is -0.1"),
        (lambda d: d["control"].update(dt=0.5), "field 'control.dt' is 0.5 s"),
        (lambda d: d["spread"].update(grip=0.1), "field 'spread' names 'grip'"),
        (lambda d: d["spread"].update(mu=1.5), r"field 'spread.mu' is 1.5"),
        (lambda d: d.update(residual={"hidden": [4]}), "field 'residual': expected an object"),
        (lambda d: d.update(residual={**d["residual"], "in_scale": [1.0]}), r"field 'residual': in_scale has shape"),
        (lambda d: d.update(provenance=[1]), "field 'provenance' must be an object"),
        (lambda d: d.update(sensor_noise={"speed_mps": [10.0, 5.0]}), "field 'sensor_noise': .*increasing speeds"),
        (lambda d: d.update(sensor_noise={"speed_mps": [5.0], "accel_lat": [-1.0]}),
         "field 'sensor_noise': .*'accel_lat' must hold 1 standard deviations >= 0"),
        (lambda d: d.update(sensor_noise={"speed_mps": [5.0], "gps": [1.0]}), "field 'sensor_noise': .*names \\['gps'\\]"),
        (lambda d: d.update(trusted_speed_mps=-5.0), "field 'trusted_speed_mps' is -5.0"),
        (lambda d: d.update(trusted_speed_mps="fast"), "field 'trusted_speed_mps' is 'fast'"),
        (lambda d: d.update(model="magic"), "field 'model' is 'magic'"),
        (lambda d: d.pop("car"), r"missing field\(s\) \['car'\]"),
        (lambda d: d.update(extra=1), r"unknown field\(s\) \['extra'\]"),
        (lambda d: d["car"].update(mass=-5.0), "field 'car': car parameter mass=-5.0"),
        (lambda d: d["car"].update(wings=1.0), "field 'car': unknown car parameter"),
        (lambda d: d["track"]["x"].pop(), "track arrays differ in length"),
        (lambda d: d["track"].update(y="abc"), "'track.y' must be a list of numbers"),
        (lambda d: d["track"]["w_left"].__setitem__(3, -1.0), "w_tr_left_m = -1.0"),
        (lambda d: d["track"].pop("name"), r"field 'track' lacks \['name'\]"),
    ],
)
def test_surrogate_file_errors_name_the_field(tmp_path, edit, message):
    path = save_surrogate(tmp_path / "fit.json", "dynamic", CarParams(), load_track("oval"), dt=0.04,
                          residual=init_residual(jax.random.PRNGKey(0), hidden=(4,)))
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(SurrogateFileError, match=message) as err:
        load_surrogate(path)
    assert str(path) in str(err.value)


def test_surrogate_file_that_is_missing_or_not_json_is_named(tmp_path):
    with pytest.raises(SurrogateFileError, match="not found"):
        load_surrogate(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('{"format": ')
    with pytest.raises(SurrogateFileError, match=r"bad.json:1:\d+: not valid JSON"):
        load_surrogate(tmp_path / "bad.json")




def test_version_2_round_trip_keeps_delay_control_period_spread_residual_provenance_noise_and_trusted_speed(tmp_path):
    residual = init_residual(jax.random.PRNGKey(1), hidden=(8, 4))
    path = save_surrogate(tmp_path / "s.json", "dynamic", CarParams(steer_tau=0.02, throttle_gamma=1.5), load_track("oval"),
                          delay_steps=3, dt=0.04, game_dt=0.02, spread={"mu": 0.03}, residual=residual,
                          provenance={"recordings": ["runs/rec"], "frames": 1234},
                          sensor_noise={"speed_mps": [5.0, 45.0], "accel_lat": [0.1, 30.0], "yaw_rate": [0.0, 0.5]},
                          trusted_speed=60.0)
    f = load_surrogate(path)
    assert f.trusted_speed == 60.0
    assert load_surrogate(save_surrogate(tmp_path / "u.json", "dynamic", CarParams(), load_track("oval"))).trusted_speed is None
    assert f.sensor_noise == {"speed_mps": [5.0, 45.0], "accel_lat": [0.1, 30.0], "yaw_rate": [0.0, 0.5]}
    assert (f.model, f.delay_steps, f.dt, f.game_dt, f.spread) == ("dynamic", 3, 0.04, 0.02, {"mu": 0.03})
    assert f.car.steer_tau == pytest.approx(0.02) and f.car.throttle_gamma == pytest.approx(1.5)
    assert f.provenance == {"recordings": ["runs/rec"], "frames": 1234}
    assert f.residual.hidden == (8, 4)
    np.testing.assert_allclose(f.residual.params["hidden_0"]["kernel"], residual.params["hidden_0"]["kernel"], rtol=1e-6)


def test_version_1_files_load_with_no_delay_no_residual_and_the_default_control_period(tmp_path):
    path = save_surrogate(tmp_path / "s.json", "kinematic", CarParams(), load_track("oval"))
    doc = json.loads(path.read_text())
    v1 = {k: doc[k] for k in ("format", "model", "car", "track")} | {"version": 1}
    path.write_text(json.dumps(v1))
    f = load_surrogate(path)
    assert (f.delay_steps, f.dt, f.residual, f.spread) == (0, None, None, {})
    v1["delay_steps"] = 1
    path.write_text(json.dumps(v1))
    with pytest.raises(SurrogateFileError, match=r"unknown field\(s\) \['delay_steps'\]"):
        load_surrogate(path)


def test_a_surrogate_file_with_nan_is_refused_with_its_name(tmp_path):
    path = save_surrogate(tmp_path / "s.json", "kinematic", CarParams(), load_track("oval"))
    path.write_text(path.read_text().replace('"delay_steps": 0', '"delay_steps": NaN'))
    with pytest.raises(SurrogateFileError, match="s.json: not valid JSON"):
        load_surrogate(path)


def test_the_default_speed_limit_keeps_a_margin_under_the_trusted_speed_and_a_given_limit_wins(tmp_path):
    assert default_speed_limit(60.0) == 50.0  # one 10 m/s band under it
    assert default_speed_limit(14.0) == 7.0  # never under half of it
    assert default_speed_limit(None) == 0.0  # a fit that does not say: no limiter
    fitted = load_surrogate(save_surrogate(tmp_path / "s.json", "dynamic", CarParams(), load_track("oval"),
                                           trusted_speed=60.0))
    assert speed_limit_for(None, fitted) == 50.0
    assert speed_limit_for(55.0, fitted) == 55.0 and speed_limit_for(0.0, fitted) == 0.0  # --speed-limit wins
    assert speed_limit_for(None, None) == 0.0


def test_a_fitted_car_trains_and_tunes_inside_a_margin_by_default_and_a_given_one_wins():
    from surrogate.surrogate_file import FITTED_EDGE_MARGIN, edge_margin_for

    assert edge_margin_for(None, fitted=True) == FITTED_EDGE_MARGIN > 0.0
    assert edge_margin_for(None, fitted=False) == 0.0
    assert edge_margin_for(0.0, fitted=True) == 0.0 and edge_margin_for(0.4, fitted=False) == 0.4
