import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from surrogate.car import CarParams, car_params_to_dict
from surrogate.env import EnvConfig, RacingEnv
from surrogate.env_params import make_params

CFG = EnvConfig(model="kinematic", n_track_points=1024)


def test_make_params_rejects_unphysical_car():
    bad = CarParams(**{**car_params_to_dict(CarParams()), "mass": -5.0})
    with pytest.raises(ValueError, match="mass"):
        make_params(["oval"], car=bad, config=CFG)


def test_a_speed_limiter_caps_the_limit_but_the_observed_speed_profile_stays_the_cars_own():
    free, refs = make_params(["oval"], config=CFG)
    capped, capped_refs = make_params(["oval"], config=dataclasses.replace(CFG, speed_limit=20.0))
    assert capped_refs[0].lap_time_s >= capped_refs[0].line_length_m / 20.0 > refs[0].lap_time_s
    assert capped_refs[0].resampled_speed.max() <= 20.0 + 1e-9
    # the profile ahead says how fast each corner could be taken, as without the limiter
    np.testing.assert_allclose(np.asarray(capped.tracks.ref_speed), np.asarray(free.tracks.ref_speed), rtol=1e-5)
    with pytest.raises(ValueError, match="EnvConfig.reference = 'fastest'"):
        EnvConfig(reference="fastest")


def test_a_sensor_noise_table_that_makes_no_sense_is_refused_by_make_params():
    with pytest.raises(ValueError, match="increasing speeds"):
        make_params(["oval"], config=CFG, sensor_noise={"speed_mps": [20.0, 10.0], "accel_lat": [1.0, 2.0]})
    params, _ = make_params(["oval"], config=CFG, sensor_noise={"speed_mps": [20.0], "accel_lat": [0.0]})
    assert params.sensor_noise is None  # all zero: no noise, no draws


def test_actor_noise_is_a_table_of_its_own_that_only_the_actors_view_adds():
    noise = {"speed_mps": [0.0, 40.0], "accel_lat": [0.0, 20.0]}
    params, _ = make_params(["oval"], config=CFG, actor_noise=noise)
    assert params.sensor_noise is None and params.actor_noise.shape == (2, 5)  # the env observes cleanly
    env = RacingEnv(CFG)
    obs = jnp.zeros((64, env.observation_size)).at[:, 0].set(0.6)  # 30 m/s
    seen = np.asarray(env.actor_view(params, obs, jax.random.PRNGKey(0)))
    assert np.std(seen[:, 2]) > 0.5 and np.all(seen[:, 3:] == 0.0)
    clean, _ = make_params(["oval"], config=CFG)
    assert env.actor_view(clean, obs, jax.random.PRNGKey(0)) is obs  # without a table the actor sees the observation
