"""Track files: reading, validating and resampling centre lines (numpy, not jitted).

The format is the TUM racetrack database CSV: a comment header
``# x_m,y_m,w_tr_right_m,w_tr_left_m`` then one row per centre-line point, closed loop (the last
point connects to the first). Widths are the distances from the centre line to the right and left
track edges, looking in the driving direction.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
from scipy import interpolate

HEADER = "x_m,y_m,w_tr_right_m,w_tr_left_m"
MIN_POINTS = 8
# The project's own layouts live in tracks/ at the repository root.
BUNDLED_DIR = Path(__file__).resolve().parents[1] / "tracks"
DEFAULT_TRACK = "oval"


class TrackFileError(ValueError):
    """A track file or track array that cannot be used, with what is wrong and where."""


@dataclasses.dataclass(frozen=True)
class TrackData:
    """A closed centre line with widths, in metres; arrays of shape (n,)."""

    name: str
    x: np.ndarray
    y: np.ndarray
    w_right: np.ndarray
    w_left: np.ndarray

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def length(self) -> float:
        return float(np.sum(np.hypot(np.diff(self.x, append=self.x[0]), np.diff(self.y, append=self.y[0]))))


def bundled_tracks() -> list[str]:
    """Names of the layouts the project ships."""
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.csv"))


def resolve_track_path(name_or_path: str | Path) -> Path:
    """A bundled track name (``flowing``) or a path to any TUM-format CSV file."""
    p = Path(name_or_path)
    if p.suffix == "" and not p.exists():
        bundled = BUNDLED_DIR / f"{p.name}.csv"
        if bundled.exists():
            return bundled
        raise TrackFileError(
            f"no track named {str(name_or_path)!r}: give a bundled name ({', '.join(bundled_tracks())}) "
            "or the path of a CSV file in the TUM racetrack format"
        )
    if not p.exists():
        raise TrackFileError(f"{p}: file not found; give a bundled track name or the path of a TUM-format CSV file")
    return p


def load_track(name_or_path: str | Path) -> TrackData:
    """Read and validate a track file; errors name the file, the row and what is expected."""
    path = resolve_track_path(name_or_path)
    rows: list[list[float]] = []
    linenos: list[int] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            cols = [c.strip() for c in text.split(",")]
            if len(cols) != 4:
                raise TrackFileError(
                    f"{path}:{lineno}: expected 4 columns ({HEADER}), got {len(cols)}: {text[:80]!r}"
                )
            try:
                vals = [float(c) for c in cols]
            except ValueError:
                raise TrackFileError(f"{path}:{lineno}: expected 4 numbers ({HEADER}), got {text[:80]!r}") from None
            rows.append(vals)
            linenos.append(lineno)
    if not rows:
        raise TrackFileError(f"{path}: no data rows; expected rows of {HEADER} after the header")
    arr = np.asarray(rows, dtype=np.float64)
    return validate_track(
        TrackData(path.stem, arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3]), source=str(path), rows=linenos
    )


def validate_track(data: TrackData, source: str | None = None, rows: list[int] | None = None) -> TrackData:
    """Check a closed centre line; returns it with repeated consecutive points removed.

    The line may cross itself at an angle (an overpass, as on Suzuka) but not run over itself
    along a stretch (see ``_check_no_overlap``).

    ``rows`` maps point index to the line number in ``source`` so errors can point at the file.
    """
    src = source or data.name
    where = (lambda i: f"{src}:{rows[i]}") if rows is not None else (lambda i: f"{src}: point {i}")
    arr = np.stack([data.x, data.y, data.w_right, data.w_left], axis=1).astype(np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise TrackFileError(f"{where(i)}: {HEADER.split(',')[j]} is not a finite number; every value must be finite")
    for j, col in ((2, "w_tr_right_m"), (3, "w_tr_left_m")):
        neg = np.flatnonzero(arr[:, j] <= 0.0)
        if neg.size:
            i = neg[0]
            raise TrackFileError(f"{where(i)}: {col} = {arr[i, j]} but track widths must be positive metres")
    # Repeated points (zero-length segments) carry no geometry; drop them.
    step = np.hypot(np.diff(arr[:, 0], append=arr[0, 0]), np.diff(arr[:, 1], append=arr[0, 1]))
    keep = step > 1e-6
    if rows is not None:
        rows = [r for r, k in zip(rows, keep) if k]
    arr = arr[keep]
    if arr.shape[0] < MIN_POINTS:
        raise TrackFileError(
            f"{src}: {arr.shape[0]} distinct centre-line points; a closed track needs at least {MIN_POINTS}"
        )
    _check_no_overlap(arr[:, 0], arr[:, 1], arr[:, 2] + arr[:, 3], src, where)
    return TrackData(data.name, arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2].copy(), arr[:, 3].copy())


# A centre line may cross itself at an angle: a bridge carries one part of the lap over another
# (Suzuka's figure-eight). The env's projection searches only near the car's last position, so it
# follows the car along its own branch through the crossing. What stays refused is a line that
# runs over itself along a stretch (a stretch listed twice, a line that doubles back, a crossing
# so shallow that both branches share the road for tens of metres): there two parts of the lap
# lie on the same tarmac and nothing tells them apart.
MIN_CROSSING_DEG = 25.0
# Sharper than this between consecutive points the line reverses (a spike), whatever the spacing.
MAX_TURN_DEG = 150.0
# A crossing closes a loop; one shorter than this many track widths (a circle of one width's
# radius) folds its own tarmac over itself: a knot in the data, not an overpass.
MIN_LOOP_WIDTHS = 2.0 * math.pi


def _check_no_overlap(x: np.ndarray, y: np.ndarray, width: np.ndarray, src: str, where) -> None:
    """Raise TrackFileError where the closed line reverses, crosses itself at a shallow angle or in
    a short loop, or runs within half the track's width of another of its stretches nearly
    parallel to it; crossings at an angle pass."""
    p = np.stack([x, y], 1)
    e = np.roll(p, -1, axis=0) - p
    seg = np.hypot(e[:, 0], e[:, 1])
    heading = np.arctan2(e[:, 1], e[:, 0])
    # The turn at point i, from segment i - 1 to segment i.
    turn = np.degrees(np.abs(np.angle(np.exp(1j * (heading - np.roll(heading, 1))))))
    if turn.max() > MAX_TURN_DEG:
        i = int(np.argmax(turn))
        raise TrackFileError(
            f"{where(i)}: the centre line turns back on itself here ({turn[i]:.0f} degrees between consecutive "
            f"points; at most {MAX_TURN_DEG:.0f}); remove the stray point or fix the order of the rows"
        )
    s = chord_param(x, y)
    length = s[-1]
    for i, j, angle in _self_crossings(p, e, seg):
        if angle < MIN_CROSSING_DEG:
            raise TrackFileError(
                f"{src}: the centre line crosses itself at {angle:.0f} degrees (segment from {where(i)} and "
                f"segment from {where(j)}); a crossing (an overpass) must be at least {MIN_CROSSING_DEG:.0f} "
                "degrees, a shallower one shares the road along a stretch: check for a stretch listed twice"
            )
        loop = min(s[j] - s[i], length - (s[j] - s[i]))
        need = MIN_LOOP_WIDTHS * max(width[i], width[j])
        if loop < need:
            raise TrackFileError(
                f"{src}: the centre line crosses itself after a loop of only {loop:.1f} m (segment from {where(i)} "
                f"and segment from {where(j)}); a loop through an overpass must be at least {need:.0f} m "
                f"({MIN_LOOP_WIDTHS:.1f} track widths): remove the knot from the file"
            )
    hit = _closest_overlap(p, e, seg, s, width)
    if hit is not None:
        i, j, dist, same_way = hit
        raise TrackFileError(
            f"{src}: the centre line runs over itself: {where(i)} lies {dist:.1f} m from the stretch at {where(j)}, "
            f"which runs {'the same way' if same_way else 'the opposite way'} (tracks here are "
            f"{width[i]:.1f} m wide); a track may cross itself at an angle (an overpass) but not share the road "
            "along a stretch: check the file for a stretch listed twice or a line that doubles back"
        )


def _segment_cross(o, u, v):
    return (u[..., 0] - o[..., 0]) * (v[..., 1] - o[..., 1]) - (u[..., 1] - o[..., 1]) * (v[..., 0] - o[..., 0])


def _self_crossings(p: np.ndarray, e: np.ndarray, seg: np.ndarray) -> list[tuple[int, int, float]]:
    """Every pair (i, j), i < j, of non-adjacent closed-polyline segments that cross, with the
    acute angle between them in degrees."""
    n = p.shape[0]
    q = p + e
    idx = np.arange(n)
    out = []
    for start in range(0, n, 256):
        i = idx[start : start + 256, None]
        j = idx[None, :]
        a, b = p[i[:, 0]][:, None, :], q[i[:, 0]][:, None, :]
        c, d = p[None, :, :], q[None, :, :]
        # Half-open sides (> 0 against <= 0): a crossing through a vertex, as a file's rounding
        # can leave one, counts once, for one of the two segments that share the vertex.
        inter = ((_segment_cross(a, b, c) > 0) != (_segment_cross(a, b, d) > 0)) & (
            (_segment_cross(c, d, a) > 0) != (_segment_cross(c, d, b) > 0))
        adjacent = (np.abs(i - j) <= 1) | (np.abs(i - j) == n - 1)
        inter &= ~adjacent & (j > i)
        for ii, jj in np.argwhere(inter):
            ii = int(start + ii)
            sin = abs(e[ii, 0] * e[jj, 1] - e[ii, 1] * e[jj, 0]) / (seg[ii] * seg[jj])
            out.append((ii, int(jj), math.degrees(math.asin(min(1.0, sin)))))
    return out


def _closest_overlap(p, e, seg, s, width) -> tuple[int, int, float, bool] | None:
    """The closest pair of a point i lying within half its track width of a segment j that is far
    from it along the lap and runs within MIN_CROSSING_DEG of parallel (or antiparallel) to the
    line at i: (i, j, distance, whether j runs the same way); None if there is none. At a crossing
    at an angle the nearby part of the other branch runs across, so it is never flagged."""
    n = p.shape[0]
    length = s[-1]
    d_close = 0.5 * width
    # Along a curve turning at most 180 degrees the straight-line distance is at least 2/pi of the
    # arc: beyond this arc distance the line's own neighbourhood is farther than d_close.
    exclude = 0.6 * math.pi * d_close
    tangent = np.roll(p, -1, axis=0) - np.roll(p, 1, axis=0)
    tangent /= np.hypot(tangent[:, 0], tangent[:, 1])[:, None]
    sin_max = math.sin(math.radians(MIN_CROSSING_DEG))
    worst = None
    for start in range(0, n, 256):
        rows = np.arange(start, min(n, start + 256))
        r = p[rows][:, None, :] - p[None, :, :]
        # A segment within d_close of the point starts within d_close plus its own length of it:
        # a cheap filter before the exact distances.
        near = r[..., 0] ** 2 + r[..., 1] ** 2 < (d_close[rows][:, None] + seg[None]) ** 2
        a, j = np.nonzero(near)
        i = rows[a]
        rx, ry = r[a, j, 0], r[a, j, 1]
        t = np.clip((rx * e[j, 0] + ry * e[j, 1]) / (seg[j] * seg[j]), 0.0, 1.0)
        dist = np.hypot(rx - t * e[j, 0], ry - t * e[j, 1])
        along = np.abs(s[i] - (s[j] + t * seg[j]))
        along = np.minimum(along, length - along)
        sin = np.abs(tangent[i, 0] * e[j, 1] - tangent[i, 1] * e[j, 0]) / seg[j]
        bad = np.flatnonzero((dist < d_close[i]) & (along > exclude[i]) & (sin < sin_max))
        if bad.size:
            k = bad[np.argmin(dist[bad])]
            if worst is None or dist[k] < worst[2]:
                worst = (int(i[k]), int(j[k]), float(dist[k]), bool(tangent[i[k]] @ e[j[k]] > 0.0))
    return worst


# Before smoothing, centre lines are interpolated at this step (TUM's spline approximation does
# the same, linearly): the smoothing factor then means the same thing whatever the
# spacing of a file's points. Without it a 10 m^2 factor let the spline through a 5 m-spaced
# designed oval overshoot its corner curvature by 20%.
DENSIFY_STEP_M = 1.0


def chord_param(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cumulative chord length of the closed polyline, n+1 values ending at the closing point."""
    seg = np.hypot(np.diff(x, append=x[0]), np.diff(y, append=y[0]))
    return np.concatenate([[0.0], np.cumsum(seg)])


def resample(data: TrackData, n_points: int | None = None, step: float | None = None, smoothing: float = 10.0,
             densify_step: float | None = DENSIFY_STEP_M, densify: str = "cubic") -> TrackData:
    """Smooth the centre line with a periodic spline and resample it at equal arc-length steps.

    Give either the number of points or the step in metres. The points are first interpolated
    every ``densify_step`` metres (None: used as they are), by a periodic cubic through them or,
    as TUM does, linearly (``densify``); ``smoothing`` is the spline's
    smoothing factor in m^2 summed over those points (0 interpolates exactly): raw centre lines
    from maps are noisy and their curvature is unusable without it.
    """
    if (n_points is None) == (step is None):
        raise ValueError("resample: give exactly one of n_points or step")
    if densify_step is not None:
        if not densify_step > 0.0:
            raise ValueError(f"resample: densify_step = {densify_step}; give a step in metres (> 0) or None")
        chord = chord_param(data.x, data.y)
        t = np.linspace(0.0, chord[-1], max(int(math.ceil(chord[-1] / densify_step)), MIN_POINTS), endpoint=False)
        lin = lambda v: np.interp(t, chord, np.append(v, v[0]))  # noqa: E731
        if densify == "cubic":
            # Through the points exactly: sparse points of a clean layout keep their curves
            # (straight chords between them would cut every corner by the sagitta).
            cub = lambda v: interpolate.CubicSpline(chord, np.append(v, v[0]), bc_type="periodic")(t)  # noqa: E731
            data = TrackData(data.name, cub(data.x), cub(data.y), lin(data.w_right), lin(data.w_left))
        elif densify == "linear":
            data = TrackData(data.name, lin(data.x), lin(data.y), lin(data.w_right), lin(data.w_left))
        else:
            raise ValueError(f"resample: densify = {densify!r}; expected 'cubic' or 'linear'")
    xy = np.stack([data.x, data.y])
    # Periodic spline through the points; the closing point repeats the first.
    pts = np.concatenate([xy, xy[:, :1]], axis=1)
    w = np.stack([data.w_right, data.w_left])
    w = np.concatenate([w, w[:, :1]], axis=1)
    tck, u = interpolate.splprep(pts, s=smoothing, per=1, k=3)
    # Arc length of the spline on a fine grid, then equal steps in arc length.
    fine = np.linspace(0.0, 1.0, max(20 * pts.shape[1], 4000), endpoint=True)
    fx, fy = interpolate.splev(fine, tck)
    seg = np.hypot(np.diff(fx), np.diff(fy))
    s_fine = np.concatenate([[0.0], np.cumsum(seg)])
    length = s_fine[-1]
    if n_points is None:
        n_points = max(MIN_POINTS, int(round(length / step)))
    s_new = np.linspace(0.0, length, n_points, endpoint=False)
    u_new = np.interp(s_new, s_fine, fine)
    nx, ny = interpolate.splev(u_new, tck)
    wr = np.interp(u_new, u, w[0])
    wl = np.interp(u_new, u, w[1])
    return TrackData(data.name, np.asarray(nx), np.asarray(ny), wr, wl)


def save_track(data: TrackData, path: str | Path) -> None:
    """Write a track in the TUM CSV format."""
    arr = np.stack([data.x, data.y, data.w_right, data.w_left], axis=1)
    np.savetxt(path, arr, delimiter=",", header=HEADER, comments="# ", fmt="%.4f")
