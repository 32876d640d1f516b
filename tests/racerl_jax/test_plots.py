import numpy as np
import pytest

from racerl_jax.plots import plot_lap
from surrogate.track import make_track
from surrogate.track_io import load_track


def _lap(track, n=200):
    s = np.linspace(0.0, 1.0, n)
    x, y = np.interp(s, np.linspace(0, 1, len(track.x)), track.x), np.interp(s, np.linspace(0, 1, len(track.y)), track.y)
    return x, y, np.full(n, 30.0)


def test_lap_plot_adds_the_speed_trace_with_dt_and_the_controls_under_it(tmp_path):
    import matplotlib.image as mpimg

    track = make_track(load_track("oval"), n_points=256)
    x, y, speed = _lap(track)
    controls = np.stack([np.sin(np.arange(len(x)) / 9.0), np.full(len(x), 0.9), np.zeros(len(x))], axis=1)
    alone = plot_lap(track, x, y, speed, tmp_path / "map.png", title="map")
    trace = plot_lap(track, x, y, speed, tmp_path / "trace.png", title="trace", dt=0.05)
    both = plot_lap(track, x, y, speed, tmp_path / "lap.png", title="lap", controls=controls, dt=0.05)
    h_alone, h_trace, h_both = (mpimg.imread(p).shape[0] for p in (alone, trace, both))
    assert h_trace > h_alone + 150  # the speed trace below the map
    assert h_both > h_trace + 150  # the controls below the trace


def test_lap_plot_refuses_controls_that_do_not_match_the_lap(tmp_path):
    track = make_track(load_track("oval"), n_points=256)
    x, y, speed = _lap(track)
    with pytest.raises(ValueError, match=r"controls must have shape \(200, 3\)"):
        plot_lap(track, x, y, speed, tmp_path / "lap.png", controls=np.zeros((199, 3)), dt=0.05)
    with pytest.raises(ValueError, match="give dt"):
        plot_lap(track, x, y, speed, tmp_path / "lap.png", controls=np.zeros((200, 3)))
