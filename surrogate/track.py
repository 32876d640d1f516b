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

from surrogate.fastmath import fast_sincos
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
    return _frenet_from(
        track.x[seg], track.y[seg], track.x[nxt], track.y[nxt],
        -jnp.sin(track.heading[seg]), jnp.cos(track.heading[seg]),
        -jnp.sin(track.heading[nxt]), jnp.cos(track.heading[nxt]), x, y,
    )


def _frenet_from(c0x, c0y, c1x, c1y, n0x, n0y, n1x, n1y, x, y):
    ex, ey = c1x - c0x, c1y - c0y
    dnx, dny = n1x - n0x, n1y - n0y
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


def _project_from(track: Track, x, y, yaw, near) -> TrackPos:
    """Track coordinates of a pose from segment ``near`` (the nearest of those searched) or a
    neighbour (see ``_frenet``)."""
    m = track.x.shape[0]
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
    return project_tables(single_tables(track, window), 0, x, y, yaw, idx_hint, window)[0]


def project_global(track: Track, x, y, yaw) -> TrackPos:
    """Project a pose by searching every segment (for resets, teleports and checks).

    Where the centre line crosses itself (an overpass) a car near the crossing is about as near
    to both branches, and only its heading tells which it is on: of the stretches whose nearest
    point lies within a track width of the nearest of all (each stretch's local minimum of the
    distance), the one running closest to the car's ``yaw`` is chosen. On a track that does not
    cross itself that is the nearest stretch for any car not facing backwards."""
    m = track.x.shape[0]
    seg = jnp.arange(m, dtype=jnp.int32)
    nxt = (seg + 1) % m
    ax, ay = track.x, track.y
    ex, ey = track.x[nxt] - ax, track.y[nxt] - ay
    rx, ry = x - ax, y - ay
    t = jnp.clip((rx * ex + ry * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    dx, dy = rx - t * ex, ry - t * ey
    dist = jnp.sqrt(dx * dx + dy * dy)
    nearest = jnp.argmin(dist)
    reach = dist[nearest] + track.w_left[nearest] + track.w_right[nearest]
    stretch = (dist <= jnp.roll(dist, 1)) & (dist <= jnp.roll(dist, -1)) & (dist <= reach)
    agree = jnp.where(stretch, jnp.cos(yaw - track.heading), -2.0)
    # The nearest segment is itself a local minimum, so some stretch always qualifies.
    return _project_from(track, x, y, yaw, jnp.argmax(agree).astype(jnp.int32))


PATH_WINDOW = 32  # segments searched per pose by ``project_path``: twice the env's default


def project_path(track: Track, x, y) -> TrackPos:
    """Track coordinates of a driven stretch (poses in driving order, a control period or so
    apart), each pose searched near the one before as the env does: a car driving through a
    crossing (an overpass) stays on its own branch. The first pose, and any that jumped out of
    the search window, are found globally, where the direction of travel tells the branches of a
    crossing apart (for the first pose, that of its first metre). The heading error is that of the
    direction of travel (from neighbouring poses). Shapes (n,)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    moved = np.flatnonzero(np.hypot(x - x[0], y - y[0]) > 1.0)
    yaw0 = np.arctan2(y[moved[0]] - y[0], x[moved[0]] - x[0]) if moved.size else 0.0
    travel = np.arctan2(np.gradient(y), np.gradient(x)) if x.size > 1 else np.zeros_like(x)
    # Padded to a power of two by repeating the last pose (the scan runs forward, so the poses
    # before are untouched): one compiled program serves stretches of many lengths.
    n = x.size
    pad = max(64, 1 << (n - 1).bit_length()) - n
    f32 = lambda a: jnp.asarray(np.pad(a, (0, pad), mode="edge"), jnp.float32)  # noqa: E731
    pos = _project_path(track, f32(x), f32(y), f32(travel), jnp.float32(yaw0))
    return jax.tree.map(lambda a: a[:n], pos)


@jax.jit
def _project_path(track: Track, x, y, yaw, yaw0) -> TrackPos:
    tables = single_tables(track, PATH_WINDOW)
    start = project_global(track, x[0], y[0], yaw0)

    def step(hint, pose):
        near, here = project_tables(tables, 0, *pose, hint, PATH_WINDOW)
        # A pose that jumped beyond the window (a game's dropped frames) is searched for
        # globally, as the real-game env does.
        lost = jnp.abs(near.lateral) > here.field("w_left") + here.field("w_right") + 5.0
        pos = jax.lax.cond(lost, lambda: project_global(track, *pose), lambda: near)
        return pos.idx, pos

    return jax.lax.scan(step, start.idx, (x, y, yaw))[1]


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


def lookahead(track: Track, pos: TrackPos, x, y, yaw, distances: tuple[float, ...]) -> dict[str, jax.Array]:
    """Track features at arc lengths pos.s + d for each d in ``distances`` (static tuple), points
    in the car frame (x forward, y left). Each value has shape (len(distances),)."""
    return lookahead_tables(single_tables(track), 0, pos, x, y, yaw, distances)


def reference_xy(track: Track):
    """The reference line in world coordinates: the centre line shifted by ref_offset along the left normal."""
    return (
        track.x - jnp.sin(track.heading) * track.ref_offset,
        track.y + jnp.cos(track.heading) * track.ref_offset,
    )


# --------------------------------------------------------------------------------------------
# Packed tables: the same geometry, laid out for batched env steps
# --------------------------------------------------------------------------------------------
# ``TrackTables`` packs the per-point fields row-wise so one row gather serves every field at a
# point (and its successor), and keeps a wrap-padded copy of the centre line so the projection
# window is one contiguous slice: gathering each field separately at two indices per point was
# some 150 scalar gathers per car and step, most of the step's time once vmapped over thousands
# of cars. The batched env builds the tables from the stacked tracks inside the step (cheap: they
# do not depend on the cars, so XLA hoists them out of rollout loops); ``project``, ``lookahead``
# and ``observe`` on one track build them for that track, so every backend runs the same lookups.

POINT_FIELDS = ("x", "y", "heading", "curvature", "w_left", "w_right", "ref_offset", "ref_speed", "ref_x", "ref_y")
_F = {name: i for i, name in enumerate(POINT_FIELDS)}
_NF = len(POINT_FIELDS)
_SEG_FIELDS = 5  # x, y, left normal x, left normal y, s


@struct.dataclass
class TrackTables:
    """Stacked tracks (leading axis T) packed for lookups by ``(track_id, index)``."""

    points: jax.Array  # (T, M, 2 * len(POINT_FIELDS)): the fields at point i, then at point i + 1
    segments: jax.Array  # (T, M + pad, 5): x, y, normal x, normal y, s at point i mod M
    length: jax.Array  # (T,)
    ds: jax.Array  # (T,)

    @property
    def n_points(self) -> int:
        return self.points.shape[-2]


def _window_rows(window: int) -> int:
    # Segments idx_hint - window//4 ... idx_hint + window need their end points too.
    return window + window // 4 + 2


def make_tables(tracks: Track, window: int = 16) -> TrackTables:
    """Pack stacked tracks (from ``stack_tracks``) for the batched env step; ``window`` as in ``project``."""
    if tracks.x.ndim != 2:
        raise ValueError(f"make_tables: expected stacked tracks (x of shape (T, M)), got x of shape {tracks.x.shape}")
    m = tracks.x.shape[1]
    ref_x, ref_y = reference_xy(tracks)
    fields = {"ref_x": ref_x, "ref_y": ref_y}
    here = jnp.stack([fields[f] if f in fields else getattr(tracks, f) for f in POINT_FIELDS], axis=-1)
    points = jnp.concatenate([here, jnp.roll(here, -1, axis=1)], axis=-1)
    seg = jnp.stack([tracks.x, tracks.y, -jnp.sin(tracks.heading), jnp.cos(tracks.heading), tracks.s], axis=-1)
    pad = max(_window_rows(window), 4)
    reps = -(-(m + pad) // m)
    segments = jnp.concatenate([seg] * reps, axis=1)[:, : m + pad]
    return TrackTables(points=points, segments=segments, length=tracks.length, ds=tracks.ds)


def single_tables(track: Track, window: int = 16) -> TrackTables:
    """``make_tables`` for one (unstacked) track, as track 0: the per-track functions above run
    on the same lookups as the batched env."""
    return make_tables(jax.tree_util.tree_map(lambda a: a[None], track), window)


def _locate_in(length, ds, m: int, s):
    r = jnp.mod(s, length)
    r = jnp.where(r >= length, r - length, r)
    u = r / ds
    i = jnp.clip(jnp.floor(u), 0, m - 1)
    t = jnp.clip(u - i, 0.0, 1.0)
    return i.astype(jnp.int32), t


@struct.dataclass
class PointSample:
    """Track fields interpolated at arc lengths s (any shape), from one row gather per point."""

    rows: jax.Array  # (..., 2 * len(POINT_FIELDS))
    t: jax.Array  # (...)

    def field(self, name: str) -> jax.Array:
        """Linear interpolation of a field, as ``interp``."""
        k = _F[name]
        return self.rows[..., k] * (1.0 - self.t) + self.rows[..., _NF + k] * self.t

    def heading(self) -> jax.Array:
        """The interpolated heading, as ``_interp_heading``."""
        k = _F["heading"]
        h0 = self.rows[..., k]
        return wrap_angle(h0 + self.t * wrap_angle(self.rows[..., _NF + k] - h0))


def sample_points(tables: TrackTables, track_id, s) -> PointSample:
    """Rows of track ``track_id`` around arc lengths ``s`` (any shape)."""
    i, t = _locate_in(tables.length[track_id], tables.ds[track_id], tables.n_points, s)
    return PointSample(rows=tables.points[track_id, i], t=t)


def project_tables(tables: TrackTables, track_id, x, y, yaw, idx_hint, window: int = 16) -> tuple[TrackPos, PointSample]:
    """``project`` on track ``track_id`` of packed tables; also the track fields at the projected s."""
    m = tables.n_points
    length, ds = tables.length[track_id], tables.ds[track_id]
    start = jnp.mod(jnp.asarray(idx_hint, jnp.int32) - window // 4, m)
    n_seg = _window_rows(window) - 1
    win = jax.lax.dynamic_slice(tables.segments, (track_id, start, 0), (1, n_seg + 1, _SEG_FIELDS))[0]
    px, py = win[:, 0], win[:, 1]
    ax, ay = px[:-1], py[:-1]
    ex, ey = px[1:] - ax, py[1:] - ay
    rx, ry = x - ax, y - ay
    t = jnp.clip((rx * ex + ry * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    dx, dy = rx - t * ex, ry - t * ey
    near = jnp.mod(start + _first_argmin(dx * dx + dy * dy), m)
    # The candidates near, near - 1, near + 1 and their end points: rows near - 1 ... near + 2.
    quad = jax.lax.dynamic_slice(tables.segments, (track_id, jnp.mod(near - 1, m), 0), (1, 4, _SEG_FIELDS))[0]
    c0, c1 = quad[jnp.array([1, 0, 2])], quad[jnp.array([2, 1, 3])]
    tc, latc = _frenet_from(c0[:, 0], c0[:, 1], c1[:, 0], c1[:, 1], c0[:, 2], c0[:, 3], c1[:, 2], c1[:, 3], x, y)
    k = jnp.where((tc[0] >= 0.0) & (tc[0] <= 1.0), 0, jnp.where(tc[0] < 0.0, 1, 2))
    tk, lateral = jnp.clip(tc[k], 0.0, 1.0), latc[k]
    at_end = tk >= 1.0
    # Row of the chosen segment's start within quad: candidate k starts at row (1, 0, 2)[k].
    row = jnp.where(k == 0, 1, jnp.where(k == 1, 0, 2)) + at_end.astype(jnp.int32)
    idx = jnp.mod(near - 1 + row, m).astype(jnp.int32)
    tk = jnp.where(at_end, 0.0, tk)
    r = jnp.mod(quad[row, 4] + tk * ds, length)
    s = jnp.where(r >= length, r - length, r)
    here = sample_points(tables, track_id, s)
    heading_error = wrap_angle(yaw - here.heading())
    return TrackPos(idx=idx, s=s, lateral=lateral, heading_error=heading_error), here


def _first_argmin(d):
    """``jnp.argmin`` of a short vector (first index of the minimum) as a chain of elementwise
    compares: vmapped, XLA:CPU vectorises these across cars, while a reduction with the distance
    computation fused into it runs element by element (it was a sixth of the step)."""

    def body(k, carry):
        best, best_k = carry
        better = d[k] < best
        return jnp.where(better, d[k], best), jnp.where(better, k, best_k)

    return jax.lax.fori_loop(1, d.shape[0], body, (d[0], jnp.int32(0)), unroll=True)[1]


def arc_delta_tables(tables: TrackTables, track_id, s_old, s_new):
    """``arc_delta`` on track ``track_id``."""
    length = tables.length[track_id]
    half = 0.5 * length
    return jnp.mod(s_new - s_old + half, length) - half


def lookahead_tables(tables: TrackTables, track_id, pos: TrackPos, x, y, yaw, distances: tuple[float, ...]):
    """``lookahead`` on track ``track_id``: one row gather per lookahead point.

    Each point is computed on its own scalar and the results stacked at the end: computed on a
    vector of the points, the batched step works on (N, points) arrays, which XLA:CPU ran 3x
    slower than the same arithmetic on (N,) arrays. The reference line's points are interpolated
    between its precomputed vertices (``ref_x``, ``ref_y``) rather than offset from the centre
    line along an interpolated heading: the same curve to within ds^2 * curvature, and no
    trigonometry per point."""
    sin_yaw, cos_yaw = fast_sincos(yaw)

    def car_frame(px, py):
        rx, ry = px - x, py - y
        return cos_yaw * rx + sin_yaw * ry, -sin_yaw * rx + cos_yaw * ry

    feats = []
    for d in distances:
        p = sample_points(tables, track_id, pos.s + jnp.float32(d))
        centre_dx, centre_dy = car_frame(p.field("x"), p.field("y"))
        ref_dx, ref_dy = car_frame(p.field("ref_x"), p.field("ref_y"))
        feats.append({"curvature": p.field("curvature"), "centre_dx": centre_dx, "centre_dy": centre_dy,
                      "ref_dx": ref_dx, "ref_dy": ref_dy, "ref_speed": p.field("ref_speed"),
                      "w_left": p.field("w_left"), "w_right": p.field("w_right")})
    if not feats:
        return {k: jnp.zeros((0,), jnp.float32) for k in LOOKAHEAD_KEYS}
    return {k: jnp.stack([f[k] for f in feats]) for k in LOOKAHEAD_KEYS}


LOOKAHEAD_KEYS = ("curvature", "centre_dx", "centre_dy", "ref_dx", "ref_dy", "ref_speed", "w_left", "w_right")
