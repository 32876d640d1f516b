"""Track geometry in JAX: a closed centre line sampled at equal arc-length steps, and the
projection of car poses onto it.

Sign convention: lateral offsets and curvature are positive to the LEFT of the driving direction;
the left normal at heading h is (-sin h, cos h). Everything after ``make_track`` is pure JAX,
float32, and works under ``jit`` and ``vmap`` over cars (scalar x, y, yaw, idx_hint per car).
"""
from __future__ import annotations

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from surrogate.track_io import MIN_POINTS, TrackData, resample


@struct.dataclass
class Track:
    """M points equally spaced in arc length along a closed loop (float32 arrays of shape (M,))."""

    x: jax.Array
    y: jax.Array
    heading: jax.Array
    curvature: jax.Array
    w_left: jax.Array
    w_right: jax.Array
    s: jax.Array
    ref_offset: jax.Array
    ref_speed: jax.Array
    length: jax.Array
    ds: jax.Array


@struct.dataclass
class TrackPos:
    """A pose in track coordinates."""

    idx: jax.Array  # int32, start index of the segment the pose projects onto
    s: jax.Array  # arc length in [0, length)
    lateral: jax.Array  # m, + left of the centre line
    heading_error: jax.Array  # car yaw minus track heading, wrapped to [-pi, pi]


def wrap_angle(a):
    return (a + jnp.pi) % (2.0 * jnp.pi) - jnp.pi


def centre_line_geometry(data: TrackData, n_points: int = 2048, smoothing: float = 10.0) -> dict[str, np.ndarray]:
    """The smoothed, resampled centre line in float64 numpy: x, y, heading, curvature, w_left,
    w_right (shape (n_points,)) and length (float). Shared with the track generator's checks."""
    if n_points < MIN_POINTS:
        raise ValueError(f"n_points = {n_points}: a track needs at least {MIN_POINTS} points")
    r = resample(data, n_points=n_points, smoothing=smoothing)
    x, y = np.asarray(r.x, np.float64), np.asarray(r.y, np.float64)
    # The points are equally spaced along the spline, so the closed polyline's length over M is
    # the step; central differences on the periodic arrays are then second-order accurate.
    length = float(np.sum(np.hypot(np.roll(x, -1) - x, np.roll(y, -1) - y)))
    ds = length / n_points
    heading = np.arctan2(np.roll(y, -1) - np.roll(y, 1), np.roll(x, -1) - np.roll(x, 1))
    dh = np.angle(np.exp(1j * (np.roll(heading, -1) - np.roll(heading, 1))))
    curvature = dh / (2.0 * ds)
    return dict(
        x=x, y=y, heading=heading, curvature=curvature,
        w_left=np.asarray(r.w_left, np.float64), w_right=np.asarray(r.w_right, np.float64), length=length,
    )


def _per_point(name: str, values, n_points: int) -> jax.Array:
    if values is None:
        return jnp.zeros((n_points,), jnp.float32)
    arr = np.asarray(values, dtype=np.float32)
    if arr.shape != (n_points,):
        raise ValueError(
            f"make_track: {name} has shape {arr.shape} but must have shape ({n_points},), one value per "
            f"resampled point (n_points={n_points}); compute it on a track made with the same n_points"
        )
    if not np.all(np.isfinite(arr)):
        bad = np.flatnonzero(~np.isfinite(arr))[:5]
        raise ValueError(f"make_track: {name} contains non-finite values at indices {bad}; give finite numbers")
    return jnp.asarray(arr)


def make_track(
    data: TrackData, n_points: int = 2048, smoothing: float = 10.0, ref_offset=None, ref_speed=None
) -> Track:
    """Smooth and resample a track file's centre line into a ``Track``.

    ``ref_offset`` (m, + left) and ``ref_speed`` (m/s), when given, are per resampled point.
    """
    g = centre_line_geometry(data, n_points=n_points, smoothing=smoothing)
    length = g["length"]
    f32 = lambda a: jnp.asarray(np.asarray(a, np.float32))  # noqa: E731
    return Track(
        x=f32(g["x"]), y=f32(g["y"]), heading=f32(g["heading"]), curvature=f32(g["curvature"]),
        w_left=f32(g["w_left"]), w_right=f32(g["w_right"]),
        s=f32(np.arange(n_points) * (length / n_points)),
        ref_offset=_per_point("ref_offset", ref_offset, n_points),
        ref_speed=_per_point("ref_speed", ref_speed, n_points),
        length=jnp.float32(length), ds=jnp.float32(length / n_points),
    )


def stack_tracks(tracks: list[Track]) -> Track:
    """Stack tracks along a new leading axis T; they must share the number of points M."""
    if not tracks:
        raise ValueError("stack_tracks: got an empty list; give at least one Track")
    m0 = tracks[0].x.shape[0]
    for i, t in enumerate(tracks):
        if t.x.ndim != 1:
            raise ValueError(
                f"stack_tracks: track {i} is already stacked (x has shape {t.x.shape}); give single tracks"
            )
        if t.x.shape[0] != m0:
            raise ValueError(
                f"stack_tracks: track {i} has {t.x.shape[0]} points but track 0 has {m0}; "
                "build every track with the same make_track(n_points=...)"
            )
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *tracks)


def select_track(stacked: Track, i) -> Track:
    """Track ``i`` of a stacked set; ``i`` may be traced."""
    return jax.tree_util.tree_map(lambda a: a[i], stacked)


def _wrap_s(track: Track, s):
    r = jnp.mod(s, track.length)
    # float32 rounding can land a value just below 0 or L exactly on L; keep s in [0, L).
    return jnp.where(r >= track.length, r - track.length, r)


def _locate(track: Track, s):
    """Segment index and fraction for arc length s (wrapped)."""
    m = track.x.shape[0]
    u = _wrap_s(track, s) / track.ds
    i = jnp.clip(jnp.floor(u), 0, m - 1)
    t = jnp.clip(u - i, 0.0, 1.0)
    i = i.astype(jnp.int32)
    return i, (i + 1) % m, t


def interp(track: Track, values, s):
    """Linear interpolation of a per-point field at arc length s (any shape), wrapping round the loop."""
    i0, i1, t = _locate(track, s)
    return values[i0] * (1.0 - t) + values[i1] * t


def _interp_heading(track: Track, s):
    i0, i1, t = _locate(track, s)
    h0 = track.heading[i0]
    return wrap_angle(h0 + t * wrap_angle(track.heading[i1] - h0))


def _cross(ax, ay, bx, by):
    return ax * by - ay * bx


def _frenet(track: Track, x, y, seg):
    """Position along segments ``seg`` in the frame whose normals vary linearly from one vertex's
    normal to the next: the t (unclipped) with p = c(t) + lateral * n(t), and that lateral.

    Plain point-to-segment projection jumps across the bisector on the inside of each vertex
    and sticks at the vertex on the outside; with interpolated normals s and lateral are
    continuous, so progress along the track is smooth."""
    m = track.x.shape[0]
    nxt = (seg + 1) % m
    c0x, c0y = track.x[seg], track.y[seg]
    ex, ey = track.x[nxt] - c0x, track.y[nxt] - c0y
    n0x, n0y = -jnp.sin(track.heading[seg]), jnp.cos(track.heading[seg])
    dnx, dny = -jnp.sin(track.heading[nxt]) - n0x, jnp.cos(track.heading[nxt]) - n0y
    ax, ay = x - c0x, y - c0y
    # cross(a - t e, n0 + t dn) = 0, a quadratic in t whose t^2 term is tiny; this root form
    # stays accurate as that term vanishes.
    qa = -_cross(ex, ey, dnx, dny)
    qb = _cross(ax, ay, dnx, dny) - _cross(ex, ey, n0x, n0y)
    qc = _cross(ax, ay, n0x, n0y)
    root = jnp.sqrt(jnp.maximum(qb * qb - 4.0 * qa * qc, 0.0))
    q = -0.5 * (qb + jnp.where(qb >= 0, root, -root))
    t = qc / jnp.where(q == 0, 1e-30, q)
    nx, ny = n0x + t * dnx, n0y + t * dny
    lateral = ((ax - t * ex) * nx + (ay - t * ey) * ny) / jnp.sqrt(nx * nx + ny * ny)
    return t, lateral


def _project_onto(track: Track, x, y, yaw, seg) -> TrackPos:
    """Nearest of the candidate segments ``seg`` (int32 array) by point-to-segment distance,
    then track coordinates from that segment or a neighbour (see ``_frenet``)."""
    m = track.x.shape[0]
    seg = jnp.mod(seg, m)
    nxt = (seg + 1) % m
    ax, ay = track.x[seg], track.y[seg]
    ex, ey = track.x[nxt] - ax, track.y[nxt] - ay
    rx, ry = x - ax, y - ay
    t = jnp.clip((rx * ex + ry * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    dx, dy = rx - t * ex, ry - t * ey
    near = seg[jnp.argmin(dx * dx + dy * dy)]
    # Near a vertex the nearest segment may be the neighbour of the one whose normals enclose
    # the pose; the enclosing one has 0 <= t <= 1.
    cand = (near + jnp.array([0, -1, 1], jnp.int32)) % m
    tc, latc = _frenet(track, x, y, cand)
    k = jnp.where((tc[0] >= 0.0) & (tc[0] <= 1.0), 0, jnp.where(tc[0] < 0.0, 1, 2))
    idx, tk, lateral = cand[k], jnp.clip(tc[k], 0.0, 1.0), latc[k]
    at_end = tk >= 1.0
    idx = jnp.where(at_end, (idx + 1) % m, idx).astype(jnp.int32)
    tk = jnp.where(at_end, 0.0, tk)
    s = _wrap_s(track, track.s[idx] + tk * track.ds)
    heading_error = wrap_angle(yaw - _interp_heading(track, s))
    return TrackPos(idx=idx, s=s, lateral=lateral, heading_error=heading_error)


def project(track: Track, x, y, yaw, idx_hint, window: int = 16) -> TrackPos:
    """Project a pose using only the segments near ``idx_hint`` (the previous step's ``idx``):
    idx_hint - window//4 ... idx_hint + window, wrapping. O(window); ``window`` is static, and
    must cover the distance a car moves in a step (window * ds metres forward)."""
    offsets = jnp.arange(-(window // 4), window + 1, dtype=jnp.int32)
    return _project_onto(track, x, y, yaw, jnp.asarray(idx_hint, jnp.int32) + offsets)


def project_global(track: Track, x, y, yaw) -> TrackPos:
    """Project a pose by searching every segment (for resets and checks)."""
    return _project_onto(track, x, y, yaw, jnp.arange(track.x.shape[0], dtype=jnp.int32))


def arc_delta(track: Track, s_old, s_new):
    """Signed arc distance from s_old to s_new, wrapped into [-L/2, L/2), so crossing the start
    line forwards gives a small positive value and backwards a small negative one."""
    half = 0.5 * track.length
    return jnp.mod(s_new - s_old + half, track.length) - half


def on_track(track: Track, pos: TrackPos, margin=0.0):
    """Whether the lateral offset lies within the (interpolated) track edges, less ``margin``."""
    wl = interp(track, track.w_left, pos.s)
    wr = interp(track, track.w_right, pos.s)
    return (pos.lateral >= -wr + margin) & (pos.lateral <= wl - margin)


def _to_car_frame(px, py, x, y, yaw):
    c, sn = jnp.cos(yaw), jnp.sin(yaw)
    rx, ry = px - x, py - y
    return c * rx + sn * ry, -sn * rx + c * ry


def lookahead(track: Track, pos: TrackPos, x, y, yaw, distances: tuple[float, ...]) -> dict[str, jax.Array]:
    """Track features at arc lengths pos.s + d for each d in ``distances`` (static tuple), points
    in the car frame (x forward, y left). Each value has shape (len(distances),)."""
    s = pos.s + jnp.asarray(distances, jnp.float32)
    cx, cy = interp(track, track.x, s), interp(track, track.y, s)
    h = _interp_heading(track, s)
    off = interp(track, track.ref_offset, s)
    centre_dx, centre_dy = _to_car_frame(cx, cy, x, y, yaw)
    ref_dx, ref_dy = _to_car_frame(cx - jnp.sin(h) * off, cy + jnp.cos(h) * off, x, y, yaw)
    return {
        "curvature": interp(track, track.curvature, s),
        "centre_dx": centre_dx,
        "centre_dy": centre_dy,
        "ref_dx": ref_dx,
        "ref_dy": ref_dy,
        "ref_speed": interp(track, track.ref_speed, s),
        "w_left": interp(track, track.w_left, s),
        "w_right": interp(track, track.w_right, s),
    }


def reference_xy(track: Track):
    """The reference line in world coordinates: the centre line shifted by ref_offset along the left normal."""
    return (
        track.x - jnp.sin(track.heading) * track.ref_offset,
        track.y + jnp.cos(track.heading) * track.ref_offset,
    )
