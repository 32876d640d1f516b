"""The baseline driver turns the wheels to the angle pure pursuit asks for, whatever the car's steering map."""
import jax.numpy as jnp
import numpy as np
import pytest

from surrogate.baseline import baseline_action, baseline_params_for
from surrogate.car import CarParams, steer_angle_target
from surrogate.env import EnvConfig
from surrogate.env_params import make_params
from surrogate.observation import Telemetry
from surrogate.track import project_global, select_track


@pytest.mark.parametrize("lateral_offset", [0.5, 3.0])
def test_the_baseline_steers_to_the_same_wheel_angle_whatever_command_reaches_the_lock(lateral_offset):
    params, _ = make_params(["oval"], config=EnvConfig(model="kinematic", n_track_points=1024))
    track = select_track(params.tracks, 0)
    i = 40
    x, y, h = (float(np.asarray(a)[i]) for a in (track.x, track.y, track.heading))
    # a car beside the line, heading along it, at speed: pure pursuit asks for some wheel angle
    x, y = x - np.sin(h) * lateral_offset, y + np.cos(h) * lateral_offset
    tel = Telemetry(x=jnp.float32(x), y=jnp.float32(y), yaw=jnp.float32(h), speed=jnp.float32(20.0),
                    accel_long=jnp.float32(0.0), accel_lat=jnp.float32(0.0), yaw_rate=jnp.float32(0.0))
    pos = project_global(track, jnp.float32(x), jnp.float32(y), jnp.float32(h))
    linear = CarParams(max_steer=0.4)
    locked = linear.replace(steer_lock_command=0.4)  # CarRacing's map: the command is the angle in rad
    cmd_linear = float(baseline_action(track, pos, tel, baseline_params_for(linear))[0])
    cmd_locked = float(baseline_action(track, pos, tel, baseline_params_for(locked))[0])
    assert cmd_linear != 0.0
    assert cmd_locked == pytest.approx(0.4 * cmd_linear, rel=1e-5)
    assert float(steer_angle_target(locked, cmd_locked)) == pytest.approx(float(steer_angle_target(linear, cmd_linear)),
                                                                        rel=1e-5)
