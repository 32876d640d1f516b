"""surrogate.racing_line: a line stitched from the fastest sectors of driven laps."""
import numpy as np
import pytest

from surrogate.car import CarParams
from surrogate.laptime import LapLimits, _left_normals, prepare_track
from surrogate.racing_line import RacingLineError, laps_from_drive, line_from_laps
from surrogate.track_io import chord_param, load_track

LIMITS = LapLimits.from_car(CarParams())


def lap(track, offset, speed_first, speed_second):
    """One lap from the line at a constant lateral ``offset`` (m, + left), at one speed over the
    first half of the track and another over the second."""
    nx, ny = _left_normals(track.x, track.y)
    x, y = track.x + offset * nx, track.y + offset * ny
    s = chord_param(track.x, track.y)
    x, y = np.append(x, x[0]), np.append(y, y[0])  # back on the line
    ds = np.hypot(np.diff(x), np.diff(y))
    v = np.where(s[1:] < 0.5 * s[-1], speed_first, speed_second)
    return {"x": x, "y": y, "t": np.concatenate([[0.0], np.cumsum(ds / v)])}


def test_each_sector_comes_from_the_lap_that_drove_it_fastest_and_the_line_stays_on_the_track():
    data = load_track("oval")
    track = prepare_track(data)
    a = lap(track, +2.0, 40.0, 20.0)  # fast in the first half, on the left
    b = lap(track, -2.0, 20.0, 40.0)  # fast in the second half, on the right
    wide = lap(track, +50.0, 10.0, 10.0)  # far outside the track, and slow: never chosen, never followed
    ref, info = line_from_laps(data, [a, b, wide], LIMITS, sectors=2)
    assert info["sector_lap"] == [0, 1]
    assert info["stitched_time_s"] < min(info["lap_times_s"])
    s = chord_param(data.x, data.y)[:-1] / chord_param(data.x, data.y)[-1]
    first, second = (s > 0.1) & (s < 0.4), (s > 0.6) & (s < 0.9)
    np.testing.assert_allclose(ref.offsets[first], 2.0, atol=0.5)  # the raw centre line is not the smoothed one
    np.testing.assert_allclose(ref.offsets[second], -2.0, atol=0.5)
    assert np.isfinite(ref.lap_time_s) and ref.lap_time_s > 0
    # with the wide lap alone, the line is held inside the edges with the car's half-width to spare
    ref_wide, _ = line_from_laps(data, [wide], LIMITS, sectors=2)
    assert np.all(ref_wide.offsets <= data.w_left - 1.0 + 0.5)


def test_clean_completed_laps_are_cut_from_a_drive_and_the_rest_left_out():
    n = 100
    rows = {"x": np.arange(3 * n, dtype=float), "y": np.zeros(3 * n), "dt": np.full(3 * n, 0.1),
            "lap_completed": np.zeros(3 * n, bool), "lap_clean": np.ones(3 * n, bool), "done": np.zeros(3 * n, bool)}
    rows["lap_completed"][[n - 1, 2 * n - 1, 3 * n - 1]] = True
    rows["lap_clean"][2 * n - 1] = False  # the second lap went off the track
    laps = laps_from_drive(rows)
    assert len(laps) == 2 and laps[0]["x"][0] == 0.0 and laps[1]["x"][0] == 2 * n
    assert laps[0]["t"][0] == 0.0 and laps[0]["t"][-1] == pytest.approx(0.1 * (n - 1))


def test_no_laps_or_part_of_a_lap_is_refused_with_the_fix():
    data = load_track("oval")
    with pytest.raises(RacingLineError, match="no clean lap"):
        line_from_laps(data, [], LIMITS)
    half = lap(prepare_track(data), 0.0, 20.0, 20.0)
    half = {k: v[: len(v) // 2] for k, v in half.items()}
    with pytest.raises(RacingLineError, match="give complete laps"):
        line_from_laps(data, [half], LIMITS)


def test_the_env_takes_a_learned_line_as_its_reference():
    from surrogate.env import EnvConfig
    from surrogate.env_params import make_params

    data = load_track("oval")
    track = prepare_track(data)
    ref, _ = line_from_laps(data, [lap(track, +2.0, 40.0, 20.0), lap(track, -2.0, 20.0, 40.0)], LIMITS, sectors=2)
    params, refs = make_params(["oval"], config=EnvConfig(model="kinematic", n_track_points=512), references=[ref])
    assert refs[0] is ref
    offset = np.asarray(params.tracks.ref_offset)[0]
    assert offset[50:200].mean() > 1.5 and offset[306:456].mean() < -1.5  # left, then right, as driven
    with pytest.raises(ValueError, match="2 reference lines for 1 tracks"):
        make_params(["oval"], references=[ref, ref])
