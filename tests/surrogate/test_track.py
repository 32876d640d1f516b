from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from surrogate.track import (
    Track,
    arc_delta,
    interp,
    lookahead,
    make_track,
    on_track,
    project,
    project_global,
    reference_xy,
    select_track,
    stack_tracks,
)
from surrogate.track_io import TrackData, bundled_tracks, load_track
from surrogate.trackgen import random_track

TUM_DIR = Path(__file__).resolve().parents[2].parent / "shared/tracks/tum"

# Jitted once per track size: op-by-op dispatch of these would dominate the test time.
project_global_jit = jax.jit(project_global)
arc_delta_jit = jax.jit(arc_delta)
project_many = jax.jit(jax.vmap(project_global, in_axes=(None, 0, 0, 0)))


def circle(radius=80.0, clockwise=False, n=100, w_left=4.0, w_right=6.0) -> TrackData:
    th = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    sign = -1.0 if clockwise else 1.0
    return TrackData("circle", radius * np.cos(th), sign * radius * np.sin(th), np.full(n, w_right), np.full(n, w_left))


@pytest.mark.parametrize("clockwise", [False, True], ids=["ccw", "cw"])
def test_circle_has_length_two_pi_r_and_curvature_one_over_r_signed_by_turn_direction(clockwise):
    r = 80.0
    t = make_track(circle(r, clockwise), n_points=1024, smoothing=0.0)
    assert float(t.length) == pytest.approx(2 * np.pi * r, rel=1e-4)
    assert float(t.ds) == pytest.approx(float(t.length) / 1024, rel=1e-6)
    np.testing.assert_allclose(np.asarray(t.s), np.arange(1024) * float(t.ds), rtol=1e-5, atol=1e-3)
    sign = -1.0 if clockwise else 1.0
    np.testing.assert_allclose(np.asarray(t.curvature), sign / r, rtol=2e-3)
    # Starts at (r, 0) driving up (CCW) or down (CW).
    assert float(t.heading[0]) == pytest.approx(sign * np.pi / 2, abs=1e-3)
    # The default smoothing keeps a clean circle's size.
    ts = make_track(circle(r, clockwise), n_points=1024)
    assert float(ts.length) == pytest.approx(2 * np.pi * r, rel=1e-3)
    assert float(jnp.mean(ts.curvature)) == pytest.approx(sign / r, rel=1e-2)
    assert t.x.dtype == jnp.float32 and t.curvature.dtype == jnp.float32


def test_make_track_rejects_reference_arrays_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"ref_offset has shape \(100,\).*\(256,\)"):
        make_track(circle(), n_points=256, ref_offset=np.zeros(100))
    with pytest.raises(ValueError, match="ref_speed"):
        make_track(circle(), n_points=256, ref_speed=np.zeros((256, 2)))
    t = make_track(circle(), n_points=256, ref_offset=np.full(256, 1.5), ref_speed=np.full(256, 20.0))
    assert float(t.ref_offset[7]) == 1.5 and float(t.ref_speed[0]) == 20.0


def test_stack_and_select_tracks_under_jit_with_traced_index():
    a = make_track(circle(60.0), n_points=256)
    b = make_track(circle(90.0, clockwise=True), n_points=256)
    stacked = stack_tracks([a, b])
    assert stacked.x.shape == (2, 256) and stacked.length.shape == (2,)
    pick = jax.jit(lambda st, i: select_track(st, i).length)
    assert float(pick(stacked, 1)) == pytest.approx(float(b.length))
    assert float(pick(stacked, 0)) == pytest.approx(float(a.length))
    with pytest.raises(ValueError, match="track 1 has 128 points but track 0 has 256"):
        stack_tracks([a, make_track(circle(), n_points=128)])


# ---------------------------------------------------------------- driving along real layouts


def _track_params():
    params = [pytest.param(("bundled", n), id=n) for n in bundled_tracks()]
    params += [pytest.param(("random", seed), id=f"random_{seed}") for seed in (0, 1)]
    if TUM_DIR.is_dir():
        params += [pytest.param(("tum", p), id=p.stem) for p in sorted(TUM_DIR.glob("*.csv"))]
    else:
        params.append(pytest.param(None, id="tum", marks=pytest.mark.skip(reason=f"{TUM_DIR} is absent")))
    return params


def _load(param) -> TrackData:
    kind, what = param
    return random_track(what) if kind == "random" else load_track(what)


N_STEPS = 2000


@jax.jit
def _drive(track: Track, xs, ys, yaws):
    """Project poses one after another, carrying the hint from the previous step as the env does,
    and project each pose by brute force too."""
    start = project_global(track, xs[0], ys[0], yaws[0])

    def step(hint, pose):
        p = project(track, *pose, hint)
        return p.idx, p

    _, local = jax.lax.scan(step, start.idx, (xs, ys, yaws))
    glob = jax.vmap(project_global, in_axes=(None, 0, 0, 0))(track, xs, ys, yaws)
    travelled = jnp.sum(arc_delta(track, local.s[:-1], local.s[1:]))
    return local, glob, travelled


def _poses(t: Track, rng: np.random.Generator):
    """Poses near the centre line: steps of 0.5-6 m (some backwards), random lateral offsets
    within 90 % of the widths, heading noise."""
    x, y, h = (np.asarray(a, np.float64) for a in (t.x, t.y, t.heading))
    wl, wr = np.asarray(t.w_left, np.float64), np.asarray(t.w_right, np.float64)
    length, m = float(t.length), x.size
    steps = rng.uniform(0.5, 6.0, N_STEPS - 1) * np.where(rng.random(N_STEPS - 1) < 0.1, -0.3, 1.0)
    s = rng.uniform(0, length) + np.concatenate([[0.0], np.cumsum(steps)])
    u = np.mod(s, length) / (length / m)
    i0 = np.floor(u).astype(int) % m
    i1 = (i0 + 1) % m
    f = u - np.floor(u)
    lerp = lambda a: a[i0] * (1 - f) + a[i1] * f  # noqa: E731
    heading = h[i0] + f * np.angle(np.exp(1j * (h[i1] - h[i0])))
    lat = rng.uniform(-0.9, 0.9, N_STEPS)
    lat = np.where(lat > 0, lat * lerp(wl), lat * lerp(wr))
    px = lerp(x) - np.sin(heading) * lat
    py = lerp(y) + np.cos(heading) * lat
    yaw = heading + rng.normal(0.0, 0.3, N_STEPS)
    return px, py, yaw, s, lat


@pytest.mark.parametrize("which", _track_params())
def test_local_projection_matches_global_for_a_car_driven_along_the_track(which):
    t = make_track(_load(which))
    px, py, yaw, s_true, lat_true = _poses(t, np.random.default_rng(0))
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    local, glob, travelled = _drive(t, f32(px), f32(py), f32(yaw))
    ds_local_glob = np.asarray(arc_delta(t, local.s, glob.s))
    np.testing.assert_array_less(np.abs(ds_local_glob), 2e-3)
    np.testing.assert_allclose(np.asarray(local.lateral), np.asarray(glob.lateral), atol=1e-3)
    np.testing.assert_allclose(np.asarray(local.heading_error), np.asarray(glob.heading_error), atol=1e-3)
    idx_gap = (np.asarray(local.idx) - np.asarray(glob.idx)) % t.x.shape[0]
    assert np.all((idx_gap == 0) | (idx_gap == 1) | (idx_gap == t.x.shape[0] - 1))
    # And both are where the car really is.
    np.testing.assert_array_less(np.abs(np.asarray(arc_delta(t, f32(np.mod(s_true, float(t.length))), local.s))), 0.05)
    np.testing.assert_allclose(np.asarray(local.lateral), lat_true, atol=0.02)
    assert np.all(np.asarray(on_track(t, local)))
    # Summing arc_delta step by step (how the env counts laps) gives the distance driven,
    # start-line crossings included.
    assert float(travelled) == pytest.approx(s_true[-1] - s_true[0], abs=1.0)
    assert s_true[-1] - s_true[0] > float(t.length) or which[0] == "tum"


def test_progress_is_smooth_for_a_car_on_the_inside_and_outside_of_a_hairpin():
    """Plain point-to-segment projection jumps on the inside of each vertex and sticks on the
    outside; the projection must advance smoothly with the car."""
    t = make_track(load_track("technical"), n_points=1024)  # coarse points make jumps large
    k = np.asarray(t.curvature)
    i = int(np.argmax(k))  # the tightest left-hander
    s_mid = float(t.s[i])
    s_true = s_mid + np.arange(-20.0, 20.0, 0.05)
    for lat in (4.0, -4.0):
        u = np.mod(s_true, float(t.length)) / float(t.ds)
        i0 = np.floor(u).astype(int)
        f = u - i0
        x, y, h = (np.asarray(a, np.float64) for a in (t.x, t.y, t.heading))
        hh = h[i0] + f * np.angle(np.exp(1j * (h[(i0 + 1) % x.size] - h[i0])))
        px = x[i0] * (1 - f) + x[(i0 + 1) % x.size] * f - np.sin(hh) * lat
        py = y[i0] * (1 - f) + y[(i0 + 1) % x.size] * f + np.cos(hh) * lat
        pos = project_many(t, jnp.asarray(px, jnp.float32), jnp.asarray(py, jnp.float32), jnp.zeros(px.size))
        steps = np.diff(np.asarray(pos.s))
        np.testing.assert_allclose(steps, 0.05, atol=5e-3)
        np.testing.assert_allclose(np.asarray(pos.lateral), lat, atol=5e-3)


# ---------------------------------------------------------------- arc length, edges, lookahead


def test_arc_delta_is_small_and_signed_across_the_start_line():
    t = make_track(circle(), n_points=512, smoothing=0.0)
    length = float(t.length)
    assert float(arc_delta_jit(t, length - 1.0, 2.0)) == pytest.approx(3.0, abs=1e-3)
    assert float(arc_delta_jit(t, 2.0, length - 1.0)) == pytest.approx(-3.0, abs=1e-3)
    assert float(arc_delta_jit(t, 10.0, 25.0)) == pytest.approx(15.0, abs=1e-3)
    assert float(arc_delta_jit(t, 25.0, 10.0)) == pytest.approx(-15.0, abs=1e-3)
    # Projected poses just before and after the start line.
    r = 80.0
    before = project_global_jit(t, r * np.cos(-0.02), r * np.sin(-0.02), np.pi / 2)
    after = project_global_jit(t, r * np.cos(0.03), r * np.sin(0.03), np.pi / 2)
    assert float(before.s) > length - 2.0 and float(after.s) < 3.0
    assert float(arc_delta_jit(t, before.s, after.s)) == pytest.approx(0.05 * r, rel=1e-2)
    assert float(arc_delta_jit(t, after.s, before.s)) == pytest.approx(-0.05 * r, rel=1e-2)


def test_interp_wraps_round_the_loop():
    t = make_track(circle(), n_points=512)
    vals = jnp.arange(512, dtype=jnp.float32)
    length, ds = float(t.length), float(t.ds)
    assert float(interp(t, vals, 10.5 * ds)) == pytest.approx(10.5, abs=1e-3)
    assert float(interp(t, vals, 10.5 * ds + length)) == pytest.approx(10.5, abs=1e-2)
    assert float(interp(t, vals, -0.5 * ds)) == pytest.approx(0.5 * 511, abs=1e-2)  # between last and first


def test_on_track_holds_up_to_each_edge_and_not_beyond():
    # Left edge 4 m, right edge 6 m; the car sits at s = 0, (80, 0), driving up, left = -x.
    t = make_track(circle(80.0, w_left=4.0, w_right=6.0), n_points=512, smoothing=0.0)

    def at(lateral, margin=0.0):
        p = project_global_jit(t, 80.0 - lateral, 0.0, np.pi / 2)
        assert float(p.lateral) == pytest.approx(lateral, abs=1e-3)
        return bool(jax.jit(on_track)(t, p, margin))

    assert at(3.99) and at(-5.99) and at(0.0)
    assert not at(4.01) and not at(-6.01)
    assert at(2.9, margin=1.0) and not at(3.1, margin=1.0)
    assert at(-4.9, margin=1.0) and not at(-5.1, margin=1.0)


def test_lookahead_on_a_circle_gives_known_car_frame_points():
    r, off = 80.0, 2.0
    refs = dict(ref_offset=np.full(2048, off), ref_speed=np.full(2048, 25.0))
    t = make_track(circle(r), n_points=2048, smoothing=0.0, **refs)
    x, y, yaw = r, 0.0, np.pi / 2  # on the line at s = 0, driving along it
    pos = project_global_jit(t, x, y, yaw)
    dist = (0.0, 10.0, 40.0, 120.0)
    lookahead_jit = jax.jit(lookahead, static_argnums=5)
    la = lookahead_jit(t, pos, x, y, yaw, dist)
    phi = np.asarray(dist) / r
    np.testing.assert_allclose(la["centre_dx"], r * np.sin(phi), atol=2e-2)
    np.testing.assert_allclose(la["centre_dy"], r * (1 - np.cos(phi)), atol=2e-2)
    # Reference line 2 m to the left = towards the centre of a left-hand circle.
    np.testing.assert_allclose(la["ref_dx"], (r - off) * np.sin(phi), atol=2e-2)
    np.testing.assert_allclose(la["ref_dy"], r - (r - off) * np.cos(phi), atol=2e-2)
    np.testing.assert_allclose(la["curvature"], 1.0 / r, rtol=2e-3)
    np.testing.assert_allclose(la["ref_speed"], 25.0)
    np.testing.assert_allclose(la["w_left"], 4.0, atol=1e-4)
    np.testing.assert_allclose(la["w_right"], 6.0, atol=1e-4)
    # A car yawed 0.3 rad left sees the same points rotated 0.3 rad right.
    la2 = lookahead_jit(t, pos, x, y, yaw + 0.3, dist)
    c, s = np.cos(-0.3), np.sin(-0.3)
    np.testing.assert_allclose(la2["centre_dx"], c * la["centre_dx"] - s * la["centre_dy"], atol=2e-3)
    np.testing.assert_allclose(la2["centre_dy"], s * la["centre_dx"] + c * la["centre_dy"], atol=2e-3)
    # The whole reference line is the circle of radius r - off.
    rx, ry = reference_xy(t)
    np.testing.assert_allclose(np.hypot(rx, ry), r - off, atol=1e-3)


def test_projection_edges_and_lookahead_jit_and_vmap_over_1000_cars():
    t = make_track(load_track("technical"))
    rng = np.random.default_rng(1)
    n = 1000
    idx = rng.integers(0, t.x.shape[0], n)
    lat = rng.uniform(-4.0, 4.0, n)
    h = np.asarray(t.heading)[idx]
    x = np.asarray(t.x)[idx] - np.sin(h) * lat
    y = np.asarray(t.y)[idx] + np.cos(h) * lat
    yaw = h + rng.normal(0, 0.2, n)
    hint = (idx - 3) % t.x.shape[0]  # the previous step's segment

    @jax.jit
    def per_car(track, x, y, yaw, hint):
        def one(x, y, yaw, hint):
            p = project(track, x, y, yaw, hint)
            return p, on_track(track, p, 0.5), lookahead(track, p, x, y, yaw, (5.0, 20.0, 60.0))

        return jax.vmap(one)(x, y, yaw, hint)

    args = [jnp.asarray(a, jnp.float32) for a in (x, y, yaw)] + [jnp.asarray(hint, jnp.int32)]
    pos, ok, la = per_car(t, *args)
    assert pos.s.shape == (n,) and pos.idx.dtype == jnp.int32 and ok.shape == (n,)
    assert la["ref_dx"].shape == (n, 3) and la["curvature"].shape == (n, 3)
    glob = project_many(t, *args[:3])
    np.testing.assert_array_less(np.abs(np.asarray(arc_delta_jit(t, pos.s, glob.s))), 2e-3)
    np.testing.assert_allclose(np.asarray(pos.lateral), lat, atol=0.05)
    assert np.all(np.asarray(ok))  # |lat| <= 4 < half width - 0.5 everywhere on this track
    # Lookahead points lie ahead of the car, about d metres away.
    np.testing.assert_allclose(np.hypot(la["centre_dx"], la["centre_dy"])[:, 0], np.hypot(5.0, lat), rtol=0.1)


# ---------------------------------------------------------------- a track that crosses itself

SUZUKA = TUM_DIR / "Suzuka.csv"
CROSSING_TRACKS = [
    pytest.param("figure8", id="figure8"),
    pytest.param(SUZUKA, id="Suzuka", marks=pytest.mark.skipif(
        not SUZUKA.is_file(), reason=f"{SUZUKA} is absent (the TUM racetrack database beside the checkout)")),
]


def _on_line(t: Track, s: np.ndarray, lateral: float):
    """Poses at arc lengths ``s`` (wrapping) ``lateral`` metres left of the centre line, heading along it."""
    x, y, h = (np.asarray(a, np.float64) for a in (t.x, t.y, t.heading))
    u = np.mod(s, float(t.length)) / float(t.ds)
    i0 = np.floor(u).astype(int) % x.size
    i1, f = (i0 + 1) % x.size, u - np.floor(u)
    heading = h[i0] + f * np.angle(np.exp(1j * (h[i1] - h[i0])))
    cx, cy = x[i0] * (1 - f) + x[i1] * f, y[i0] * (1 - f) + y[i1] * f
    return cx - np.sin(heading) * lateral, cy + np.cos(heading) * lateral, heading


def _crossing(t: Track) -> tuple[float, float]:
    """Arc lengths of the two passes through the track's crossing: the closest pair of centre-line
    points more than 100 m apart along the lap."""
    x, y, s = (np.asarray(a, np.float64) for a in (t.x, t.y, t.s))
    d = np.hypot(x[:, None] - x[None], y[:, None] - y[None])
    gap = np.abs(s[:, None] - s[None])
    d[np.minimum(gap, float(t.length) - gap) < 100.0] = np.inf
    i, j = np.unravel_index(np.argmin(d), d.shape)
    assert d[i, j] < float(t.ds), "the track does not cross itself"
    return float(s[i]), float(s[j])


@pytest.mark.parametrize("which", CROSSING_TRACKS)
def test_a_car_driving_through_a_crossing_keeps_its_own_branch_on_both_passes(which):
    t = make_track(load_track(which))
    length = float(t.length)
    # Both passes through the crossing and the first again; as many poses as _drive's other
    # callers, so its compilation is shared.
    s_true = _crossing(t)[0] - 60.0 + np.linspace(0.0, length + 120.0, N_STEPS)
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    cx, cy = np.asarray(t.x, np.float64), np.asarray(t.y, np.float64)
    # figure8 is 12 m wide (edges 6 m either side); Suzuka at least 7.8 m.
    laterals = (-6.5, -3.5, 0.0, 3.5, 6.5) if which == "figure8" else (-3.5, 0.0, 3.5)
    for lateral in laterals:
        px, py, yaw = _on_line(t, s_true, lateral)
        local, glob, travelled = _drive(t, f32(px), f32(py), f32(yaw))
        np.testing.assert_array_less(np.abs(np.asarray(arc_delta(t, f32(np.mod(s_true, length)), local.s))), 0.05)
        np.testing.assert_allclose(np.asarray(local.lateral), lateral, atol=0.02)
        # Off track is judged on the car's own branch: 6.5 m off its centre line it is off, also
        # where it is over the other branch's tarmac (below).
        assert np.all(np.asarray(on_track(t, local)) == (abs(lateral) < 6.0))
        assert float(travelled) == pytest.approx(s_true[-1] - s_true[0], abs=1.0)
        # The global search, told the car's heading, agrees pose by pose.
        np.testing.assert_array_less(np.abs(np.asarray(arc_delta(t, local.s, glob.s))), 2e-3)
        if lateral:
            # Off the centre line, some poses near the crossing are nearer the other branch's
            # centre line than their own: the nearest point alone would jump branches.
            dist = np.hypot(px[:, None] - cx[None], py[:, None] - cy[None])
            nearest = np.argmin(dist, axis=1)
            jump = np.abs(np.asarray(arc_delta(t, f32(np.asarray(t.s)[nearest]), f32(np.mod(s_true, length)))))
            assert np.any(jump > 50.0)
            if abs(lateral) > 6.0:
                assert np.any((jump > 50.0) & (dist.min(axis=1) < 6.0))


def test_at_a_crossing_the_global_search_takes_the_branch_the_car_heads_along():
    t = make_track(load_track("figure8"))
    s_a, s_b = _crossing(t)
    for s_own, s_other in ((s_a, s_b), (s_b, s_a)):
        for lateral in (0.0, 4.0, -4.0):
            x, y, yaw = (float(v[0]) for v in _on_line(t, np.array([s_own]), lateral))
            p = project_global_jit(t, x, y, yaw)
            assert abs(float(arc_delta_jit(t, s_own, p.s))) < 0.5
            assert float(p.lateral) == pytest.approx(lateral, abs=0.05)
        # Facing along the other branch, the same spot on the centre line is that branch's.
        x, y, _ = (float(v[0]) for v in _on_line(t, np.array([s_own]), 0.0))
        _, _, yaw_other = _on_line(t, np.array([s_other]), 0.0)
        assert abs(float(arc_delta_jit(t, s_other, project_global_jit(t, x, y, float(yaw_other[0])).s))) < 1.0
