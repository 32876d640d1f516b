import pytest

from surrogate.car import CarParams, car_params_to_dict
from surrogate.env import EnvConfig
from surrogate.env_params import make_params

CFG = EnvConfig(model="kinematic", n_track_points=1024)


def test_make_params_rejects_unphysical_car():
    bad = CarParams(**{**car_params_to_dict(CarParams()), "mass": -5.0})
    with pytest.raises(ValueError, match="mass"):
        make_params(["oval"], car=bad, config=CFG)


def test_a_sensor_noise_table_that_makes_no_sense_is_refused_by_make_params():
    with pytest.raises(ValueError, match="increasing speeds"):
        make_params(["oval"], config=CFG, sensor_noise={"speed_mps": [20.0, 10.0], "accel_lat": [1.0, 2.0]})
    params, _ = make_params(["oval"], config=CFG, sensor_noise={"speed_mps": [20.0], "accel_lat": [0.0]})
    assert params.sensor_noise is None  # all zero: no noise, no draws
