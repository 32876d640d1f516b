from pathlib import Path

import numpy as np
import pytest

from surrogate import track_io
from surrogate.track_io import TrackData, TrackFileError, load_track, resample, save_track, validate_track


def _curvature(t: TrackData) -> np.ndarray:
    x, y = t.x, t.y
    dx, dy = (np.roll(x, -1) - np.roll(x, 1)) / 2, (np.roll(y, -1) - np.roll(y, 1)) / 2
    ddx, ddy = np.roll(x, -1) - 2 * x + np.roll(x, 1), np.roll(y, -1) - 2 * y + np.roll(y, 1)
    return (dx * ddy - dy * ddx) / (dx * dx + dy * dy) ** 1.5


def test_smoothing_means_the_same_whatever_the_spacing_of_the_file_points():
    full = load_track("oval")  # 5 m between points
    sparse = TrackData(full.name, full.x[::2], full.y[::2], full.w_right[::2], full.w_left[::2])  # 10 m
    a, b = (_curvature(resample(t, n_points=1200)) for t in (full, sparse))
    assert np.abs(a - b).max() < 1e-3 * np.abs(a).max() * 10  # within 1% of the peak curvature
    # smoothing the file's own points instead (no densifying) depends on their spacing
    a0, b0 = (_curvature(resample(t, n_points=1200, densify_step=None)) for t in (full, sparse))
    assert np.abs(a0 - b0).max() > 0.1 * np.abs(a0).max()


def test_sparse_points_of_a_circle_keep_its_radius_through_the_cubic_densifying():
    r, n = 80.0, 40  # 12.6 m between points: straight chords would cut 0.25 m inside
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    circle = TrackData("c", r * np.cos(th), r * np.sin(th), np.full(n, 5.0), np.full(n, 5.0))
    out = resample(circle, n_points=500, smoothing=0.0)
    assert np.hypot(out.x, out.y) == pytest.approx(r, abs=0.02)
    linear = resample(circle, n_points=500, smoothing=0.0, densify="linear")
    assert np.hypot(linear.x, linear.y).min() < r - 0.2
    with pytest.raises(ValueError, match="densify"):
        resample(circle, n_points=500, densify="quadratic")


# ---------------------------------------------------------------- circuits that cross themselves

TUM_DIR = Path(__file__).resolve().parents[2].parent / "shared/tracks/tum"
SUZUKA = TUM_DIR / "Suzuka.csv"
needs_suzuka = pytest.mark.skipif(
    not SUZUKA.is_file(), reason=f"{SUZUKA} is absent (the TUM racetrack database beside the checkout)")


def _closed_curve(fx, fy, step=5.0, width=12.0, name="curve") -> TrackData:
    """A closed parametric curve over t in [0, 2 pi), a point every ``step`` metres along it."""
    t = np.linspace(0.0, 2 * np.pi, 40001)
    x, y = fx(t), fy(t)
    s = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
    n = int(round(s[-1] / step))
    tn = np.interp(np.linspace(0.0, s[-1], n, endpoint=False), s, t)
    return TrackData(name, fx(tn), fy(tn), np.full(n, width / 2), np.full(n, width / 2))


def _figure_eight(crossing_deg: float, a: float = 200.0) -> TrackData:
    """x = a sin t, y = (b/2) sin 2t: the lobes meet at the origin at 2 atan(b/a)."""
    b = a * np.tan(np.radians(crossing_deg) / 2)
    return _closed_curve(lambda t: a * np.sin(t), lambda t: 0.5 * b * np.sin(2 * t), name=f"eight{crossing_deg:g}")


def _crossings(d: TrackData) -> list[tuple[int, int, float]]:
    p = np.stack([d.x, d.y], 1)
    e = np.roll(p, -1, axis=0) - p
    return track_io._self_crossings(p, e, np.hypot(e[:, 0], e[:, 1]))


def _write(tmp_path, d: TrackData) -> Path:
    path = tmp_path / f"{d.name}.csv"
    save_track(d, path)
    return path


@pytest.mark.parametrize("crossing_deg", [30.0, 62.0, 90.0])
def test_a_figure_eight_crossing_itself_at_an_angle_loads(crossing_deg):
    d = _figure_eight(crossing_deg)
    assert validate_track(d).n == d.n
    (hit,) = _crossings(d)
    assert hit[2] == pytest.approx(crossing_deg, abs=1.0)


def test_the_bundled_figure_eight_crosses_itself_once_at_62_degrees():
    d = load_track("figure8")
    assert d.length() == pytest.approx(998.0, abs=2.0)
    (hit,) = _crossings(d)
    assert hit[2] == pytest.approx(62.0, abs=1.0)


@needs_suzuka
def test_suzuka_from_the_tum_database_loads_with_its_bridge():
    d = load_track(SUZUKA)
    assert d.length() == pytest.approx(5808.0, rel=0.01)
    (hit,) = _crossings(d)
    assert hit[2] == pytest.approx(60.0, abs=3.0)


def test_a_shallow_crossing_is_refused_naming_its_angle_and_rows(tmp_path):
    path = _write(tmp_path, _figure_eight(20.0))
    with pytest.raises(TrackFileError, match=rf"crosses itself at 20 degrees \(segment from {path}:\d+ and segment "
                                             rf"from {path}:\d+\); a crossing \(an overpass\) must be at least 25"):
        load_track(path)


def test_a_crossing_after_a_short_loop_is_refused_as_a_knot():
    # A limacon r = 90 + 100 cos(phi): its inner loop, about 30 m round, crosses the outer one.
    r = lambda t: 90.0 + 100.0 * np.cos(t)  # noqa: E731
    d = _closed_curve(lambda t: r(t) * np.cos(t), lambda t: r(t) * np.sin(t), name="knot")
    with pytest.raises(TrackFileError, match=r"crosses itself after a loop of only \d+\.\d m .* remove the knot"):
        validate_track(d)


def _narrow_stadium(gap: float) -> TrackData:
    """Two 200 m straights ``gap`` apart joined by half circles: a line that doubles back."""
    r, step = gap / 2, 0.5
    ang = np.linspace(-np.pi / 2, np.pi / 2, int(np.pi * r / step), endpoint=False)
    xs = np.arange(0.0, 200.0, step)
    x = np.concatenate([xs, 200.0 + r * np.cos(ang), xs[::-1], -r * np.cos(ang)])
    y = np.concatenate([np.full(xs.size, -r), r * np.sin(ang), np.full(xs.size, r), -r * np.sin(ang)])
    return TrackData("stadium", x, y, np.full(x.size, 6.0), np.full(x.size, 6.0))


def test_a_line_that_doubles_back_alongside_itself_is_refused():
    with pytest.raises(TrackFileError, match=r"runs over itself: stadium: point \d+ lies 2\.0 m from the stretch "
                                             r"at stadium: point \d+, which runs the opposite way \(tracks here are "
                                             r"12\.0 m wide\)"):
        validate_track(_narrow_stadium(2.0))
    # The same legs a track width and a half apart are a hairpin, not a fold.
    assert validate_track(_narrow_stadium(18.0)).n > 0


def test_a_lap_listed_twice_is_refused():
    d = load_track("oval")
    twice = TrackData("twice", *(np.tile(a, 2) for a in (d.x, d.y, d.w_right, d.w_left)))
    with pytest.raises(TrackFileError, match=r"check for a stretch listed twice"):
        validate_track(twice)
    # Side by side, 3 m apart (the jogs between the copies cross at 62 degrees, which alone is legal).
    h = np.arctan2(np.roll(d.y, -1) - np.roll(d.y, 1), np.roll(d.x, -1) - np.roll(d.x, 1))
    beside = TrackData("beside", np.concatenate([d.x, d.x - 3 * np.sin(h)]), np.concatenate([d.y, d.y + 3 * np.cos(h)]),
                       np.tile(d.w_right, 2), np.tile(d.w_left, 2))
    with pytest.raises(TrackFileError,
                       match=r"runs over itself: beside: point \d+ lies 3\.0 m from .* which runs the same way"):
        validate_track(beside)


def test_a_spike_in_the_file_is_refused_naming_its_row(tmp_path):
    d = load_track("oval")
    k = 10  # a stray point 20 m off the line between points 10 and 11 (file lines 12 and 13)
    h = np.arctan2(d.y[k + 1] - d.y[k], d.x[k + 1] - d.x[k])
    sx, sy = 0.5 * (d.x[k] + d.x[k + 1]) - 20 * np.sin(h), 0.5 * (d.y[k] + d.y[k + 1]) + 20 * np.cos(h)
    ins = lambda a, v: np.insert(a, k + 1, v)  # noqa: E731
    spiked = TrackData("spiked", ins(d.x, sx), ins(d.y, sy), ins(d.w_right, 6.0), ins(d.w_left, 6.0))
    path = _write(tmp_path, spiked)
    with pytest.raises(TrackFileError, match=rf"{path}:13: the centre line turns back on itself here \(1\d\d degrees"):
        load_track(path)
