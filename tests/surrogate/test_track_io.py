import numpy as np
import pytest

from surrogate.track_io import TrackData, load_track, resample


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
