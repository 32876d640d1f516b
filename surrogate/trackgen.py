"""Track layouts from segments, and random closed tracks for domain randomisation (numpy).

A layout is a list of segments ``(length_m, curvature_1_per_m)`` driven by a turtle: curvature is
positive for left turns, 0 for a straight. ``from_segments`` closes the loop exactly (it rescales
the turns to a full revolution and adjusts the straights' lengths by the least relative amount)
and samples it every few metres. ``random_track`` builds a random simple polygon, rounds its
corners with arcs (hairpins where it is sharp, fast sweepers where it is open), drops chicanes
onto long straights, and keeps only layouts that a road car can drive: no overlapping tarmac and
curvature within bounds after the same smoothing the simulator applies.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from surrogate.track import centre_line_geometry
from surrogate.track_io import TrackData, TrackFileError, validate_track

Segment = tuple[float, float]
WidthSpec = float | Callable[[np.ndarray, float], np.ndarray]

# Total turn of a closed simple loop is +-2 pi; designs within this of it are rescaled to close.
_TURN_TOLERANCE = np.deg2rad(20.0)
# Integration step of the turtle (m); the output is interpolated from it.
_FINE = 0.2


def straight(length: float) -> Segment:
    return (float(length), 0.0)


def arc(radius: float, turn_deg: float) -> Segment:
    """A constant-radius corner turning ``turn_deg`` degrees, positive to the left."""
    if radius <= 0:
        raise ValueError(f"arc: radius = {radius} m must be positive")
    turn = np.deg2rad(turn_deg)
    return (float(radius * abs(turn)), float(np.sign(turn) / radius))


def _close_turn(lengths: np.ndarray, kappa: np.ndarray) -> np.ndarray:
    total = float(np.sum(lengths * kappa))
    target = 2.0 * np.pi * np.sign(total) if total != 0 else 2.0 * np.pi
    if abs(total - target) > _TURN_TOLERANCE:
        raise ValueError(
            f"from_segments: the segments turn {np.rad2deg(total):.1f} deg in total but a closed loop must turn "
            f"+-360 deg (within {np.rad2deg(_TURN_TOLERANCE):.0f} deg, which is rescaled away); adjust the arcs"
        )
    return kappa * (target / total)


def _straight_directions(lengths: np.ndarray, kappa: np.ndarray, heading0: float) -> np.ndarray:
    turn = lengths * kappa
    return heading0 + np.concatenate([[0.0], np.cumsum(turn)[:-1]])


def _trace(lengths: np.ndarray, kappa: np.ndarray, heading0: float, transition: float):
    """The layout on a fine grid: arc length and x, y of n+1 nodes, the last being the end."""
    total = float(lengths.sum())
    n = int(np.ceil(total / _FINE))
    h = total / n
    # Mean curvature of each cell, exact, so the total turn stays exactly +-2 pi.
    knots = np.concatenate([[0.0], np.cumsum(lengths)])
    turned = np.concatenate([[0.0], np.cumsum(lengths * kappa)])
    k = np.diff(np.interp(np.arange(n + 1) * h, knots, turned)) / h
    m = int(round(transition / h))
    if m > 1:
        # Circular moving average: curvature ramps linearly (a clothoid) into and out of each
        # corner, as on real roads, and the total turn is unchanged.
        pad = np.concatenate([k[-m:], k, k[:m]])
        k = np.convolve(pad, np.full(m, 1.0 / m), mode="same")[m:-m]
    theta = heading0 + np.concatenate([[0.0], np.cumsum(k * h)])
    th_mid = 0.5 * (theta[:-1] + theta[1:])
    x = np.concatenate([[0.0], np.cumsum(np.cos(th_mid) * h)])
    y = np.concatenate([[0.0], np.cumsum(np.sin(th_mid) * h)])
    return np.arange(n + 1) * h, x, y


def _close_position(lengths, kappa, heading0, transition, min_straight):
    """Adjust the straights until the loop ends where it starts, each time by the change
    minimising sum(dL_i^2 / L_i), so long straights absorb most of it. Lengthening a straight
    moves the end along the straight's direction, so this converges in a step or two."""
    st = np.flatnonzero(kappa == 0)
    a = None
    if st.size >= 2:
        h0 = _straight_directions(lengths, kappa, heading0)[st]
        a = np.stack([np.cos(h0), np.sin(h0)])  # (2, n_straights)
    first_gap = None
    for _ in range(8):
        s, x, y = _trace(lengths, kappa, heading0, transition)
        gap = np.array([x[-1], y[-1]])
        first_gap = gap if first_gap is None else first_gap
        if np.hypot(*gap) < 1e-7 * s[-1]:
            return lengths, s, x, y
        w = lengths[st]
        m = (a * w) @ a.T if a is not None else None
        if m is None or np.linalg.cond(m) > 1e8:
            raise ValueError(
                f"from_segments: the layout misses its start by ({gap[0]:.1f}, {gap[1]:.1f}) m and needs straights "
                "in at least two non-parallel directions to close; add or lengthen straights"
            )
        lengths = lengths.copy()
        lengths[st] = w + w * (a.T @ np.linalg.solve(m, -gap))
        short = [i for i in st if lengths[i] < min_straight]
        if short:
            i = short[0]
            raise ValueError(
                f"from_segments: the layout misses its start by ({first_gap[0]:.1f}, {first_gap[1]:.1f}) m; closing "
                f"it would make straight segment {i} {lengths[i]:.1f} m long (minimum {min_straight} m); change the "
                "segments so the loop nearly closes"
            )
    raise ValueError(f"from_segments: the layout still misses its start by {np.hypot(*gap):.3g} m after adjusting "
                     "its straights; lengthen the straights between corners")


def from_segments(
    segments: Sequence[Segment],
    width: WidthSpec = 12.0,
    step: float = 5.0,
    name: str = "segments",
    transition: float = 0.0,
    heading0: float = 0.0,
    min_straight: float = 5.0,
) -> TrackData:
    """Drive a turtle along ``segments`` from (0, 0) at ``heading0`` and return the closed track.

    ``width`` is the total track width in metres, or a function ``f(s, length) -> widths`` of the
    arc length of each sampled point; the centre line sits in the middle. Points are ``step``
    metres apart. ``transition`` > 0 eases the curvature linearly into and out of corners over
    that many metres instead of jumping. Raises ValueError (naming the segment) when the layout
    cannot be closed.
    """
    if len(segments) < 2:
        raise ValueError(f"from_segments: got {len(segments)} segments; a closed layout needs at least 2")
    arr = np.asarray(segments, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"from_segments: segments must be (length_m, curvature) pairs, got shape {arr.shape}")
    lengths, kappa = arr[:, 0].copy(), arr[:, 1].copy()
    for i in np.flatnonzero(~np.isfinite(arr).all(axis=1) | (lengths <= 0)):
        raise ValueError(f"from_segments: segment {i} = {segments[i]} needs a positive length and a finite curvature")
    if step <= 0 or transition < 0:
        raise ValueError(
            f"from_segments: step = {step} m must be positive and transition = {transition} m not negative"
        )
    kappa = _close_turn(lengths, kappa)
    lengths, s_fine, x_fine, y_fine = _close_position(lengths, kappa, heading0, transition, min_straight)
    total = float(s_fine[-1])
    s = np.linspace(0.0, total, max(8, int(round(total / step))), endpoint=False)
    x, y = np.interp(s, s_fine, x_fine), np.interp(s, s_fine, y_fine)
    w = np.broadcast_to(np.asarray(width(s, total) if callable(width) else width, np.float64), s.shape).copy()
    if not np.all(np.isfinite(w) & (w > 0)):
        raise ValueError(f"from_segments: track widths must be positive and finite, got min {np.min(w)}")
    return validate_track(TrackData(name, x, y, 0.5 * w, 0.5 * w))


# ---------------------------------------------------------------- random tracks


def _corner_radius(rng: np.random.Generator, turn: float, min_radius: float) -> float:
    """Sharp corners get slow radii (hairpins), open ones fast sweeping radii, as on real circuits."""
    a = abs(turn)
    if a > np.deg2rad(110):
        lo, hi = min_radius, max(min_radius * 1.2, 30.0)
    elif a > np.deg2rad(60):
        lo, hi = max(min_radius, 20.0), 90.0
    else:
        lo, hi = max(min_radius, 40.0), 300.0
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _chicane(rng: np.random.Generator, min_radius: float) -> tuple[list[Segment], float]:
    """Arcs with no net turn and no net sideways shift, and the straight distance they replace."""
    r = rng.uniform(min_radius, max(min_radius * 1.5, 40.0))
    th = np.deg2rad(rng.uniform(18.0, 35.0))
    sgn = rng.choice([-1.0, 1.0])
    if rng.random() < 0.5:  # left-right-right-left
        parts = [(r * th, sgn / r), (r * th, -sgn / r), (r * th, -sgn / r), (r * th, sgn / r)]
    else:  # left-right-left, a kink
        parts = [(r * th, sgn / r), (2 * r * th, -sgn / r), (r * th, sgn / r)]
    return parts, 4.0 * r * np.sin(th)


def _polygon(rng: np.random.Generator) -> np.ndarray:
    """A random star-shaped (hence simple) counter-clockwise polygon of unit size. Vertices pulled
    in make right-handers and esses; a vertex pushed out between pulled-in neighbours makes a
    sharp spike that becomes a hairpin."""
    n = int(rng.integers(7, 16))
    ang = 2 * np.pi * (np.arange(n) + rng.uniform(-0.35, 0.35, n)) / n
    rad = rng.uniform(0.35, 1.0, n)
    for k in rng.choice(n, size=int(rng.integers(0, 3)), replace=False):
        rad[k] = 1.0
        rad[(k - 1) % n] = min(rad[(k - 1) % n], 0.5)
        rad[(k + 1) % n] = min(rad[(k + 1) % n], 0.5)
    return np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)


def _layout(rng: np.random.Generator, length: float, min_radius: float, min_straight: float) -> list[Segment] | None:
    p = _polygon(rng)
    e = np.roll(p, -1, axis=0) - p  # edge k runs from vertex k to k+1
    elen = np.hypot(e[:, 0], e[:, 1])
    eang = np.arctan2(e[:, 1], e[:, 0])
    turn = np.angle(np.exp(1j * (eang - np.roll(eang, 1))))  # turn at vertex k, from edge k-1 to edge k
    if np.any(np.abs(turn) > np.deg2rad(160)) or not np.isclose(turn.sum(), 2 * np.pi):
        return None
    radius = np.array([_corner_radius(rng, t, min_radius) for t in turn])
    for _ in range(8):
        tan_len = radius * np.tan(np.abs(turn) / 2)
        # Radii are in metres, so the lap length is linear in the polygon's scale: solve for it.
        scale = (length + np.sum(2 * tan_len - radius * np.abs(turn))) / elen.sum()
        free = scale * elen - tan_len - np.roll(tan_len, -1) - min_straight
        if np.all(free >= 0):
            break
        # Corners too big for their edges: tighten the ones at both ends of the short edges.
        for k in np.flatnonzero(free < 0):
            for v in (k, (k + 1) % len(elen)):
                radius[v] = max(min_radius, radius[v] * 0.6)
    else:
        return None
    chicanes: dict[int, tuple[list[Segment], float]] = {}
    for k in range(len(elen)):
        if free[k] > 150.0 and rng.random() < 0.3:
            parts, span = _chicane(rng, min_radius)
            if span + 60.0 < free[k]:
                chicanes[k] = (parts, span)
    # A chicane's arcs are a few metres longer than the straight they replace; the lap-length
    # check after sampling tolerates that.
    tan_len = radius * np.tan(np.abs(turn) / 2)
    segs: list[Segment] = []
    for k in range(len(elen)):
        run = scale * elen[k] - tan_len[k] - tan_len[(k + 1) % len(elen)]
        if k in chicanes:
            parts, span = chicanes[k]
            a = rng.uniform(0.2, 0.8) * (run - span)
            segs += [straight(a), *parts, straight(run - span - a)]
        else:
            segs.append(straight(run))
        v = (k + 1) % len(elen)
        segs.append((radius[v] * abs(turn[v]), np.sign(turn[v]) / radius[v]))
    return segs


def _width_profile(rng: np.random.Generator, width_range: tuple[float, float]) -> WidthSpec:
    lo, hi = width_range
    base = rng.uniform(lo + 0.25 * (hi - lo), hi - 0.25 * (hi - lo))
    amp = rng.uniform(0.0, 1.0, 3) / np.arange(1, 4)
    phase = rng.uniform(0, 2 * np.pi, 3)

    def width(s: np.ndarray, total: float) -> np.ndarray:
        wave = sum(amp[i] * np.cos(2 * np.pi * (i + 1) * s / total + phase[i]) for i in range(3))
        room = min(base - lo, hi - base)
        peak = max(np.max(np.abs(wave)), 1e-9)
        return base + wave * min(1.0, 0.95 * room / peak)

    return width


def edges_overlap(data: TrackData, margin: float) -> bool:
    """Whether the track's edges (pushed out by margin/2) cross themselves or each other, i.e.
    two parts of the tarmac come closer than ``margin`` or an edge folds on the inside of a corner."""
    x, y = data.x, data.y
    h = np.arctan2(np.roll(y, -1) - np.roll(y, 1), np.roll(x, -1) - np.roll(x, 1))
    nx, ny = -np.sin(h), np.cos(h)
    wl, wr = data.w_left + margin / 2, data.w_right + margin / 2
    loops = [np.stack([x + wl * nx, y + wl * ny], 1), np.stack([x - wr * nx, y - wr * ny], 1)]
    n = x.size
    a = np.concatenate(loops)
    b = np.concatenate([np.roll(lp, -1, axis=0) for lp in loops])
    loop_id = np.repeat([0, 1], n)
    pos = np.tile(np.arange(n), 2)

    def cross(o, u, v):
        return (u[..., 0] - o[..., 0]) * (v[..., 1] - o[..., 1]) - (u[..., 1] - o[..., 1]) * (v[..., 0] - o[..., 0])

    for start in range(0, 2 * n, 256):
        sl = slice(start, start + 256)
        pa, pb = a[sl, None], b[sl, None]
        qa, qb = a[None], b[None]
        hit = (cross(pa, pb, qa) * cross(pa, pb, qb) < 0) & (cross(qa, qb, pa) * cross(qa, qb, pb) < 0)
        same = loop_id[sl, None] == loop_id[None]
        gap = np.abs(pos[sl, None] - pos[None])
        hit &= ~(same & ((gap <= 1) | (gap == n - 1)))
        if hit.any():
            return True
    return False


def random_track(
    seed_or_rng: int | np.random.Generator,
    length_range: tuple[float, float] = (1500.0, 4000.0),
    width_range: tuple[float, float] = (8.0, 15.0),
    max_curvature: float = 1.0 / 12.0,
    step: float = 5.0,
    transition: float = 15.0,
    edge_margin: float = 4.0,
    max_tries: int = 500,
    check_points: int = 2048,
    name: str | None = None,
) -> TrackData:
    """A random closed circuit: hairpins, medium corners, fast sweepers and chicanes.

    The lap length is drawn uniformly from ``length_range`` (m); the total width varies smoothly
    within ``width_range`` (m); after ``make_track``'s default smoothing at ``check_points``
    points, |curvature| <= ``max_curvature`` (1/m). Separate parts of the tarmac stay at least
    ``edge_margin`` m apart. Corner entries ease in over ``transition`` m (see ``from_segments``).
    The same seed always gives the same track.
    """
    lo, hi = length_range
    if not 0 < lo <= hi:
        raise ValueError(f"random_track: length_range = {length_range} must be (min, max) metres with 0 < min <= max")
    if not 0 < width_range[0] <= width_range[1]:
        raise ValueError(f"random_track: width_range = {width_range} must be (min, max) metres with 0 < min <= max")
    if 2.0 / max_curvature < width_range[1] + edge_margin:
        raise ValueError(
            f"random_track: max_curvature = {max_curvature} 1/m allows corners too tight for a "
            f"{width_range[1]} m wide track; lower it or narrow width_range"
        )
    rng = np.random.default_rng(seed_or_rng)
    seed_name = name or (f"random_{seed_or_rng}" if isinstance(seed_or_rng, (int, np.integer)) else "random")
    # Spline smoothing rounds the arcs' ends but can overshoot slightly; aim below the bound.
    min_radius = max(1.25 / max_curvature, 0.5 * width_range[1] + edge_margin)
    for _ in range(max_tries):
        length = rng.uniform(lo, hi)
        segs = _layout(rng, length, min_radius, min_straight=10.0)
        if segs is None:
            continue
        if rng.random() < 0.5:  # clockwise
            segs = [(l, -k) for l, k in segs]
        width = _width_profile(rng, width_range)
        try:
            data = from_segments(segs, width=width, step=step, name=seed_name, transition=transition)
        except (ValueError, TrackFileError):
            continue
        if not lo <= data.length() <= hi or edges_overlap(data, edge_margin):
            continue
        g = centre_line_geometry(data, n_points=check_points)
        if np.max(np.abs(g["curvature"])) > max_curvature:
            continue
        return data
    raise RuntimeError(
        f"random_track: no valid track in {max_tries} tries for length_range={length_range}, "
        f"width_range={width_range}, max_curvature={max_curvature}; widen the ranges or raise max_tries"
    )
