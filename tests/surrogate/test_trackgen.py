import importlib.util
from pathlib import Path

import numpy as np
import pytest

from surrogate.track import centre_line_geometry
from surrogate.track_io import BUNDLED_DIR, load_track, validate_track
from surrogate.trackgen import arc, edges_overlap, from_segments, random_track, straight

MAKE_TRACKS = Path(__file__).resolve().parents[2] / "scripts" / "make_tracks.py"


def _steps(d):
    return np.hypot(np.diff(d.x, append=d.x[0]), np.diff(d.y, append=d.y[0]))


def _features(d):
    """(has hairpin, has fast sweeper, has chicane or esses) from the smoothed curvature."""
    g = centre_line_geometry(d, n_points=2048)
    k, ds = g["curvature"], g["length"] / 2048

    def max_run_turn(mask):
        best, acc = 0.0, 0.0
        for kk, m in zip(np.concatenate([k, k]), np.concatenate([mask, mask])):
            acc = acc + kk * ds if m else 0.0
            best = max(best, abs(acc))
        return best

    hairpin = max_run_turn(np.abs(k) > 1 / 35) > np.deg2rad(120)
    sweeper = max_run_turn((np.abs(k) > 1 / 400) & (np.abs(k) < 1 / 90)) > np.deg2rad(20)
    sign = np.where(np.abs(k) > 1 / 60, np.sign(k), 0.0)
    window = int(80 / ds)
    flip = any((sign[(i + np.arange(window)) % k.size] == -sign[i]).any() for i in np.flatnonzero(sign))
    return hairpin, sweeper, flip


def test_fifty_random_tracks_are_valid_closed_drivable_and_varied():
    feats = []
    for seed in range(50):
        d = random_track(seed)
        assert validate_track(d).n == d.n  # finite, positive widths, no crossing, no repeated points
        steps = _steps(d)
        assert steps[-1] == pytest.approx(np.median(steps), rel=0.05)  # the loop closes
        assert 1500.0 <= d.length() <= 4000.0
        w = d.w_left + d.w_right
        assert w.min() >= 8.0 and w.max() <= 15.0
        assert not edges_overlap(d, 2.0), f"seed {seed}: tarmac overlaps"
        g = centre_line_geometry(d)
        assert np.abs(g["curvature"]).max() <= 1 / 12, f"seed {seed}: corner too tight"
        feats.append(_features(d))
    hairpins, sweepers, flips = np.mean(feats, axis=0)
    assert hairpins >= 0.1 and sweepers >= 0.5 and flips >= 0.5, (hairpins, sweepers, flips)


def test_same_seed_gives_same_track_and_different_seeds_differ():
    a, b, c = random_track(11), random_track(11), random_track(12)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.w_left, b.w_left)
    assert a.n != c.n or not np.allclose(a.x, c.x)
    g = random_track(np.random.default_rng(5), length_range=(1000.0, 1200.0), width_range=(9.0, 10.0))
    assert 1000.0 <= g.length() <= 1200.0
    assert 9.0 <= (g.w_left + g.w_right).min() and (g.w_left + g.w_right).max() <= 10.0


def test_random_track_rejects_bad_ranges():
    with pytest.raises(ValueError, match="length_range"):
        random_track(0, length_range=(3000.0, 2000.0))
    with pytest.raises(ValueError, match="max_curvature"):
        random_track(0, max_curvature=0.5)


def test_from_segments_builds_a_rounded_square_of_known_size():
    segs = [straight(100), arc(20, 90)] * 4
    d = from_segments(segs, width=10.0, step=2.0)
    assert d.length() == pytest.approx(400 + 4 * 20 * np.pi / 2, abs=0.2)
    assert np.ptp(d.x) == pytest.approx(140.0, abs=0.1) and np.ptp(d.y) == pytest.approx(140.0, abs=0.1)
    assert _steps(d).max() == pytest.approx(2.0, rel=1e-3)
    np.testing.assert_allclose(d.w_left, 5.0)
    k = centre_line_geometry(d, n_points=1024, smoothing=0.0)["curvature"]
    assert np.percentile(k, 90) == pytest.approx(1 / 20, rel=0.01)


def test_from_segments_closes_a_layout_that_misses_its_start_by_stretching_straights():
    # 10 m too long one way and 2 degrees short: the builder rescales the turns and the straights.
    segs = [straight(110), arc(20, 90), straight(100), arc(20, 90), straight(100), arc(20, 90), straight(100),
            arc(20, 88)]
    d = from_segments(segs, width=10.0, step=2.0)
    steps = _steps(d)
    assert steps[-1] == pytest.approx(np.median(steps), rel=1e-3)
    assert 520.0 < d.length() < 540.0


def test_from_segments_transition_eases_curvature_and_keeps_the_loop_closed():
    segs = [straight(200), arc(50, 180)] * 2
    sharp = centre_line_geometry(from_segments(segs, step=1.0), n_points=1024, smoothing=0.0)
    eased = centre_line_geometry(from_segments(segs, step=1.0, transition=30.0), n_points=1024, smoothing=0.0)
    slope = lambda g: np.abs(np.diff(g["curvature"])).max() / (g["length"] / 1024)  # noqa: E731
    assert slope(eased) <= 1.2 * (1 / 50) / 30 < slope(sharp) / 3
    assert eased["curvature"].max() == pytest.approx(1 / 50, rel=0.02)


def test_from_segments_explains_layouts_that_cannot_close():
    with pytest.raises(ValueError, match="turn 270.0 deg"):
        from_segments([straight(100), arc(20, 90)] * 3)
    with pytest.raises(ValueError, match="straight segment"):
        # An S-bend shifts the loop 59 m sideways; the 10 m cross straights cannot take that up.
        s_bend = [arc(100, 45), arc(100, -45)]
        from_segments([straight(100), *s_bend, arc(20, 90), straight(10), arc(20, 90), straight(300), arc(20, 90),
                       straight(10), arc(20, 90)])
    with pytest.raises(ValueError, match="segment 1"):
        from_segments([straight(100), (-5.0, 0.1), arc(20, 360)])


# ---------------------------------------------------------------- bundled layouts


def _load_make_tracks():
    spec = importlib.util.spec_from_file_location("make_tracks", MAKE_TRACKS)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_make_tracks_regenerates_the_committed_files(tmp_path):
    written = _load_make_tracks().write_tracks(tmp_path)
    assert sorted(p.name for p in written) == ["flowing.csv", "oval.csv", "technical.csv"]
    for p in written:
        committed = BUNDLED_DIR / p.name
        new_lines, old_lines = p.read_text().splitlines(), committed.read_text().splitlines()
        assert new_lines[0] == old_lines[0] == "# x_m,y_m,w_tr_right_m,w_tr_left_m"
        # Equal to the file's 4 decimals; a last-digit flip from another platform's libm is tolerated.
        np.testing.assert_allclose(np.loadtxt(p, delimiter=","), np.loadtxt(committed, delimiter=","), atol=2e-4)


@pytest.mark.parametrize(("name", "length"), [("oval", 1200.0), ("technical", 1800.0), ("flowing", 3000.0)])
def test_bundled_track_has_its_designed_length_width_and_spacing(name, length):
    d = load_track(name)
    assert d.length() == pytest.approx(length, rel=0.05)
    w = d.w_left + d.w_right
    assert 10.0 <= w.min() and w.max() <= 14.0
    np.testing.assert_allclose(_steps(d), 5.0, rtol=0.02)
    assert not edges_overlap(d, 4.0)
    assert np.abs(centre_line_geometry(d)["curvature"]).max() <= 1 / 12
