"""A circuit that crosses itself (an overpass), end to end: the env's projection, lap timing and
off-track rule, the baseline driver, the minimum-curvature reference, the lap trace and the lap
plot on the bundled figure-eight. The geometry of the crossing itself is tested in test_track.py
and test_track_io.py."""
import jax
import numpy as np
import pytest

from racerl_jax.plots import plot_lap
from surrogate.baseline import baseline_action, baseline_params_for
from surrogate.car import CarParams
from surrogate.env import EnvConfig, RacingEnv
from surrogate.env_params import make_params
from surrogate.rollout import lap_metrics, lap_trace, rollout
from surrogate.track import select_track

STEPS = 1700  # two laps from a standing start at the baseline's pace (38 s a lap, 20 steps a second)


@pytest.fixture(scope="module")
def figure8_drive():
    car = CarParams()
    cfg = EnvConfig(start="line", max_episode_steps=100_000)
    params, (ref,) = make_params(["figure8"], car=car, config=cfg)
    env = RacingEnv(cfg)
    track = select_track(params.tracks, 0)
    bp = baseline_params_for(car)

    def policy(obs, state, key):
        return baseline_action(track, state.pos, env.telemetry(state.car), bp)

    traj = rollout(env, params, policy, jax.random.PRNGKey(0), STEPS)
    second = np.flatnonzero(traj["lap_completed"])[1]  # drive_baseline.py's two laps
    return track, ref, cfg, {k: v[: second + 1] for k, v in traj.items()}


def test_the_baseline_laps_the_figure_eight_clean_through_its_crossing(figure8_drive):
    track, ref, _, traj = figure8_drive
    assert not traj["done"].any()  # never off track, never the wrong way, never stuck
    m = lap_metrics(traj)
    assert m["clean_laps"] == 2
    # The flying lap within 15 % of the minimum lap time (the untuned baseline is about 12 % off).
    assert ref.lap_time_s < m["best_lap_s"] < 1.15 * ref.lap_time_s
    # Each lap passes the crossing twice: four times the car came within a half width (6 m) of the
    # point where the lobes meet, the origin.
    d = np.hypot(traj["x"], traj["y"])
    passes = np.flatnonzero((d[1:] < 6.0) & (d[:-1] >= 6.0))
    assert passes.size == 4


def test_the_reference_line_of_the_figure_eight_stays_inside_its_edges(figure8_drive):
    _, ref, cfg, _ = figure8_drive
    r, o, half_car = ref.resampled, ref.resampled_offsets, cfg.car_half_width
    room_left, room_right = r.w_left - half_car - o, o + r.w_right - half_car
    assert room_left.min() > -1e-6 and room_right.min() > -1e-6
    # It swings from edge to edge (wide on each lobe, across at the crossing), as a
    # minimum-curvature line does.
    assert room_left.min() < 0.05 and room_right.min() < 0.05
    assert 0.9 * ref.centre_lap_time_s < ref.lap_time_s < 1.1 * ref.centre_lap_time_s


def test_the_lap_trace_and_plot_follow_the_car_through_the_crossing(figure8_drive, tmp_path):
    track, ref, cfg, traj = figure8_drive
    trace = lap_trace(track, traj["x"], traj["y"], cfg.dt)
    dist = trace["distance"]
    # The distance runs on smoothly over both passes through the crossing: no jump to the
    # other branch (half a lap away) on either.
    assert np.all(np.diff(dist) >= -1e-3)
    assert np.max(np.diff(dist)) < 0.1 * 60.0  # at most a control period at 216 km/h
    assert dist[-1] == pytest.approx(2 * float(track.length), rel=0.02)
    # Step by step it grows as the car drives (speed x dt, less the lobes' curvature).
    np.testing.assert_allclose(np.diff(dist), traj["speed"][:-1] * cfg.dt, rtol=0.15, atol=0.2)
    png = plot_lap(track, traj["x"], traj["y"], traj["speed"], tmp_path / "lap.png", controls=traj["action"], dt=cfg.dt)
    assert png.stat().st_size > 10_000
