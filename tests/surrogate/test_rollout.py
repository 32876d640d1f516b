import numpy as np
import pytest

from surrogate.car import CarParams
from surrogate.env import EnvConfig
from surrogate.env_params import build_track
from surrogate.rollout import lap_trace
from surrogate.track import reference_xy
from surrogate.track_io import load_track

DT = 0.05


@pytest.fixture(scope="module")
def oval():
    return build_track(load_track("oval"), CarParams(), EnvConfig())


def _drive_reference(track, pace: float, start_frac: float = 0.3):
    """Poses every DT of a car on the reference line at ``pace`` times the reference speed, one
    lap from a point ``start_frac`` of the way round (so the lap crosses the start line)."""
    rx, ry = (np.asarray(a, np.float64) for a in reference_xy(track))
    v = np.asarray(track.ref_speed, np.float64) * pace
    seg = np.hypot(np.roll(rx, -1) - rx, np.roll(ry, -1) - ry)
    t_knots = np.concatenate([[0.0], np.cumsum(seg / (0.5 * (v + np.roll(v, -1))))])
    shift = int(start_frac * len(rx))
    order = np.roll(np.arange(len(rx)), -shift)
    t_knots = np.concatenate([[0.0], np.cumsum(np.diff(t_knots)[order])])
    xs, ys = np.append(rx[order], rx[order][0]), np.append(ry[order], ry[order][0])
    t = np.arange(0.0, t_knots[-1], DT)
    return np.interp(t, t_knots, xs), np.interp(t, t_knots, ys), t_knots[-1]


def test_reference_time_over_the_track_points_is_the_minimum_lap_time(oval):
    track, ref = oval
    x, y, _ = _drive_reference(track, 1.0)
    assert lap_trace(track, x, y, DT)["ref_lap_s"] == pytest.approx(ref.lap_time_s, rel=2e-3)


def test_a_lap_at_the_reference_speed_on_the_reference_line_loses_no_time(oval):
    track, _ = oval
    x, y, lap_s = _drive_reference(track, 1.0)
    trace = lap_trace(track, x, y, DT)
    assert np.max(np.abs(trace["delta"])) < 0.03
    # The distance runs on across the start line: one lap of the centre line, less the last step.
    assert trace["distance"][-1] == pytest.approx(float(track.length), abs=2.0)
    assert np.all(np.diff(trace["distance"]) > 0)


def test_a_slower_lap_loses_time_steadily_and_ends_its_lap_time_behind(oval):
    track, ref = oval
    x, y, lap_s = _drive_reference(track, 0.9)
    delta = lap_trace(track, x, y, DT)["delta"]
    assert np.all(np.diff(delta) > -1e-3)  # never gains on the reference
    assert delta[-1] == pytest.approx(lap_s - ref.lap_time_s, abs=0.06)
    assert delta[-1] == pytest.approx(ref.lap_time_s / 9.0, rel=0.01)


def test_lap_trace_refuses_poses_it_cannot_trace(oval):
    track, _ = oval
    with pytest.raises(ValueError, match="same length >= 2"):
        lap_trace(track, np.zeros(5), np.zeros(4), DT)
    with pytest.raises(ValueError, match="control period"):
        lap_trace(track, np.zeros(5), np.zeros(5), 0.0)
