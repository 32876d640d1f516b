"""Minimum-lap-time reference for a point-mass car (numpy/scipy, offline, not jitted).

The flow follows the quasi-steady-state method of TUM's global race trajectory optimisation:
smooth and resample the centre line, move each point along its normal to minimise the summed
squared curvature (a QP on the linearised curvature, solved again around its own solution), then
a forward/backward velocity profile on a friction ellipse with an engine limit gives the speed
and the lap time. It is the yardstick an RL driver's lap time is compared against, for the same
car. The QP solver is Clarabel (interior point, sparse).

Sign convention: lateral offsets are positive to the LEFT of the driving direction, the left
normal being ``(-sin h, cos h)``; ``w_left`` / ``w_right`` are the widths on either side.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import clarabel
import numpy as np
from scipy import interpolate, optimize, sparse
from scipy.sparse.linalg import splu

from surrogate.track_io import TrackData, chord_param, resample

# TUM's smoothing factor, m^2 summed over the centre line's points once densified to one a metre
# (track_io.resample does the densifying).
SMOOTHING_M2 = 10.0


@dataclasses.dataclass(frozen=True)
class LapLimits:
    """Point-mass limits of a car, all per unit mass (m/s^2), so the mass never appears.

    Tyres: a friction ellipse with lateral semi-axis ``a_lat_max`` and longitudinal semi-axis
    ``a_long_max`` (the same for a friction circle). Engine: ``min(drive_force_per_mass,
    drive_power_per_mass / v)``; ``None`` for the power means no power limit. Brakes:
    ``brake_force_per_mass`` (``None``: the tyres are the only braking limit). Resistances:
    ``drag_per_mass * v^2 + roll_per_mass`` slow the car down, in traction and in braking alike.
    """

    a_lat_max: float
    a_long_max: float
    drive_force_per_mass: float
    v_max: float
    drive_power_per_mass: float | None = None
    brake_force_per_mass: float | None = None
    drag_per_mass: float = 0.0
    roll_per_mass: float = 0.0

    def __post_init__(self) -> None:
        for name in ("a_lat_max", "a_long_max", "drive_force_per_mass", "v_max"):
            val = getattr(self, name)
            if not (math.isfinite(val) and val > 0.0):
                raise ValueError(f"LapLimits.{name} = {val!r}; it must be a positive finite number")
        for name in ("drive_power_per_mass", "brake_force_per_mass"):
            val = getattr(self, name)
            if val is not None and not (math.isfinite(val) and val > 0.0):
                raise ValueError(f"LapLimits.{name} = {val!r}; give a positive finite number, or None for no limit")
        for name in ("drag_per_mass", "roll_per_mass"):
            val = getattr(self, name)
            if not (math.isfinite(val) and val >= 0.0):
                raise ValueError(f"LapLimits.{name} = {val!r}; it must be a finite number >= 0")

    @classmethod
    def reference(cls) -> "LapLimits":
        """The car of shared/reference/laptime-limits.md: 10 m/s^2 circle and engine, 80 m/s, no drag."""
        return cls(a_lat_max=10.0, a_long_max=10.0, drive_force_per_mass=10.0, v_max=80.0)

    @classmethod
    def from_car(cls, car: Any) -> "LapLimits":
        """From ``surrogate.car.CarParams`` (or anything with the same attribute names).

        Top speed: the lowest of the car's own ``v_max`` / ``max_speed`` (a cap) and the speed at
        which drag and rolling resistance use up the engine.
        """
        def field(name: str, default: Any = dataclasses.MISSING) -> float:
            val = getattr(car, name, default)
            if val is dataclasses.MISSING:
                raise ValueError(f"LapLimits.from_car: {type(car).__name__} has no field {name!r}; CarParams must define it")
            return float(val)

        mass = field("mass")
        if not mass > 0.0:
            raise ValueError(f"LapLimits.from_car: mass = {mass}; it must be positive kilograms")
        grip = field("mu") * field("g")
        power = field("engine_power", math.inf)
        brake = field("max_brake_force", math.inf)
        limits = dict(
            a_lat_max=grip,
            a_long_max=grip,
            drive_force_per_mass=field("max_drive_force") / mass,
            drive_power_per_mass=power / mass if math.isfinite(power) else None,
            brake_force_per_mass=brake / mass if math.isfinite(brake) else None,
            drag_per_mass=field("drag_coef", 0.0) / mass,
            roll_per_mass=field("rolling_resistance", 0.0) / mass,
        )
        caps = [float(v) for v in (getattr(car, "v_max", None), getattr(car, "max_speed", None)) if v is not None]
        if limits["drag_per_mass"] > 0.0 or not caps:
            caps.append(_drag_limited_speed(limits))
        return cls(v_max=min(caps), **limits)

    def drive_accel(self, v: float) -> float:
        """Engine acceleration available at speed ``v`` before resistances."""
        a = self.drive_force_per_mass
        if self.drive_power_per_mass is not None and v > 0.0:
            a = min(a, self.drive_power_per_mass / v)
        return a

    def resistance(self, v: float) -> float:
        return self.drag_per_mass * v * v + self.roll_per_mass

    def to_dict(self) -> dict[str, float | None]:
        return dataclasses.asdict(self)


def _drag_limited_speed(limits: dict[str, Any]) -> float:
    """Speed where the engine's push equals drag + rolling resistance."""
    drag, roll = limits["drag_per_mass"], limits["roll_per_mass"]
    force, power = limits["drive_force_per_mass"], limits["drive_power_per_mass"]
    if drag <= 0.0:
        raise ValueError(
            "LapLimits.from_car: the car has no drag and no v_max/max_speed, so its top speed is unbounded; "
            "give CarParams a positive drag_coef or a v_max"
        )

    def surplus(v: float) -> float:
        push = force if power is None else min(force, power / v)
        return push - drag * v * v - roll

    hi = 1.0
    while surplus(hi) > 0.0:
        hi *= 2.0
        if hi > 1e4:
            raise ValueError("LapLimits.from_car: drag-limited top speed above 10 km/s; check drag_coef and mass")
    return float(optimize.brentq(surplus, 1e-6, hi))


# ---------------------------------------------------------------------------------------------
# Velocity profile
# ---------------------------------------------------------------------------------------------


def _tyre_long(v: float, kappa: float, limits: LapLimits) -> float:
    """Longitudinal acceleration the friction ellipse leaves after cornering at ``v`` on ``kappa``."""
    use = v * v * abs(kappa) / limits.a_lat_max
    return limits.a_long_max * math.sqrt(1.0 - use * use) if use < 1.0 else 0.0


def _accel(v: float, kappa: float, limits: LapLimits) -> float:
    return min(_tyre_long(v, kappa, limits), limits.drive_accel(v)) - limits.resistance(v)


def _decel(v: float, kappa: float, limits: LapLimits) -> float:
    brake = _tyre_long(v, kappa, limits)
    if limits.brake_force_per_mass is not None:
        brake = min(brake, limits.brake_force_per_mass)
    return brake + limits.resistance(v)


def _step(v0: float, k0: float, k1: float, ds: float, rate, limits: LapLimits) -> float:
    """Speed after ``ds`` metres of d(v^2)/ds = 2 rate(v, kappa), Heun's scheme.

    The plain explicit step evaluates the grip at the start point only; leaving an apex at the
    cornering limit it then finds no grip left and lags one step behind, which costs time on
    every corner exit. Averaging with the end point removes that first-order error.
    """
    a0 = rate(v0, k0, limits)
    v1 = math.sqrt(max(v0 * v0 + 2.0 * a0 * ds, 0.0))
    a1 = rate(v1, k1, limits)
    return math.sqrt(max(v0 * v0 + (a0 + a1) * ds, 0.0))


def _as_steps(ds: float | np.ndarray, n_steps: int) -> np.ndarray:
    arr = np.asarray(ds, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n_steps, float(arr))
    if arr.shape != (n_steps,):
        raise ValueError(f"ds has shape {arr.shape}; expected a scalar or ({n_steps},) step lengths")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0.0):
        raise ValueError("ds: every step length must be a positive finite number of metres")
    return arr


def velocity_profile(
    kappa: np.ndarray,
    ds: float | np.ndarray,
    limits: LapLimits,
    closed: bool = True,
    v_start: float = 0.0,
    v_end: float | None = None,
) -> np.ndarray:
    """Fastest speed at each point of a path with curvature ``kappa`` (rad/m).

    ``ds[i]`` is the length from point i to point i+1: n values when ``closed`` (the last one
    returns to point 0, a flying lap), n-1 when open. The open case starts at ``v_start`` and ends
    at most at ``v_end`` (free when None).
    """
    kappa = np.asarray(kappa, dtype=np.float64)
    if kappa.ndim != 1 or kappa.shape[0] < 2 or not np.all(np.isfinite(kappa)):
        raise ValueError(f"kappa must be a 1-D array of at least 2 finite curvatures, got shape {kappa.shape}")
    n = kappa.shape[0]
    steps = _as_steps(ds, n if closed else n - 1)
    with np.errstate(divide="ignore"):
        v_lim = np.minimum(limits.v_max, np.sqrt(limits.a_lat_max / np.abs(kappa)))
    v = v_lim.copy()
    k = kappa.tolist()
    if not closed:
        v[0] = min(v[0], max(v_start, 0.0))
        if v_end is not None:
            v[-1] = min(v[-1], max(v_end, 0.0))
        for i in range(n - 1):
            v[i + 1] = min(v[i + 1], _step(v[i], k[i], k[i + 1], steps[i], _accel, limits))
        for i in range(n - 1, 0, -1):
            v[i - 1] = min(v[i - 1], _step(v[i], k[i], k[i - 1], steps[i - 1], _decel, limits))
        return v
    # Flying lap: start where the car is slowest, then go round until nothing changes, because
    # with drag the speed can still decay below the cornering limit inside a long corner.
    start = int(np.argmin(v_lim))
    for _ in range(10):
        changed = False
        for j in range(n):
            i = (start + j) % n
            nxt = (i + 1) % n
            cand = _step(v[i], k[i], k[nxt], steps[i], _accel, limits)
            if cand < v[nxt] - 1e-12:
                v[nxt] = cand
                changed = True
        if not changed:
            break
    for _ in range(10):
        changed = False
        for j in range(n):
            i = (start - j) % n
            prv = (i - 1) % n
            cand = _step(v[i], k[i], k[prv], steps[prv], _decel, limits)
            if cand < v[prv] - 1e-12:
                v[prv] = cand
                changed = True
        if not changed:
            break
    return v


def lap_time(v: np.ndarray, ds: float | np.ndarray, closed: bool = True) -> float:
    """Time along the profile, constant acceleration between points (exact for d(v^2)/ds const)."""
    v = np.asarray(v, dtype=np.float64)
    n = v.shape[0]
    steps = _as_steps(ds, n if closed else n - 1)
    v_next = np.roll(v, -1) if closed else v[1:]
    v_here = v if closed else v[:-1]
    vs = v_here + v_next
    if np.any(vs <= 0.0):
        i = int(np.argmax(vs <= 0.0))
        raise ValueError(f"lap_time: the car stands still on step {i}; the lap time is infinite")
    return float(np.sum(2.0 * steps / vs))


# ---------------------------------------------------------------------------------------------
# Geometry and the minimum-curvature line
# ---------------------------------------------------------------------------------------------


def _periodic_splines(x: np.ndarray, y: np.ndarray):
    s = chord_param(x, y)
    sx = interpolate.CubicSpline(s, np.append(x, x[0]), bc_type="periodic")
    sy = interpolate.CubicSpline(s, np.append(y, y[0]), bc_type="periodic")
    return s[:-1], sx, sy


def _left_normals(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit left normals of a closed line from its periodic spline's tangent."""
    s, sx, sy = _periodic_splines(x, y)
    tx, ty = sx(s, 1), sy(s, 1)
    norm = np.hypot(tx, ty)
    return -ty / norm, tx / norm


def _curvature(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    s, sx, sy = _periodic_splines(x, y)
    dx, dy, ddx, ddy = sx(s, 1), sy(s, 1), sx(s, 2), sy(s, 2)
    return (dx * ddy - dy * ddx) / np.power(dx * dx + dy * dy, 1.5)


def line_geometry(data: TrackData, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The closed line through centre + offset * left normal: (x, y, kappa, ds).

    ``kappa`` (rad/m, positive turning left) comes from a periodic cubic spline through the
    line's points; ``ds[i]`` is the chord from point i to i+1, the last one closing the loop.
    """
    offsets = np.asarray(offsets, dtype=np.float64)
    if offsets.shape != (data.n,):
        raise ValueError(f"offsets has shape {offsets.shape}; expected ({data.n},), one per point of track {data.name!r}")
    nx, ny = _left_normals(data.x, data.y)
    x = data.x + offsets * nx
    y = data.y + offsets * ny
    ds = np.diff(chord_param(x, y))
    if np.any(ds <= 1e-9):
        i = int(np.argmax(ds <= 1e-9))
        raise ValueError(f"line_geometry: line points {i} and {(i + 1) % data.n} coincide; the offsets fold the line")
    return x, y, _curvature(x, y), ds


def _periodic_spline_ops(h: np.ndarray):
    """Sparse operators of the periodic cubic spline through n knots with spacings ``h``.

    With p the knot values and m the second derivatives at the knots, the spline's continuity
    conditions read ``cyc @ m == rhs @ p`` and its first derivatives at the knots are
    ``dp @ p + dm @ m``. Keeping m as unknowns leaves every matrix banded; eliminating it would
    make each curvature depend on every point, a dense QP that takes minutes.
    """
    n = h.shape[0]
    i = np.arange(n)
    prv, nxt = (i - 1) % n, (i + 1) % n
    h_prev = h[prv]
    rows3, cols3 = np.tile(i, 3), np.concatenate([prv, i, nxt])
    cyc = sparse.csc_matrix((np.concatenate([h_prev, 2.0 * (h_prev + h), h]), (rows3, cols3)), shape=(n, n))
    rhs = sparse.csc_matrix(
        (6.0 * np.concatenate([1.0 / h_prev, -1.0 / h_prev - 1.0 / h, 1.0 / h]), (rows3, cols3)), shape=(n, n)
    )
    rows2, cols2 = np.tile(i, 2), np.concatenate([i, nxt])
    dp = sparse.csc_matrix((np.concatenate([-1.0 / h, 1.0 / h]), (rows2, cols2)), shape=(n, n))
    dm = sparse.csc_matrix((np.concatenate([-h / 3.0, -h / 6.0]), (rows2, cols2)), shape=(n, n))
    return cyc, rhs, dp, dm


OBJECTIVES = ("curvature", "tum")
# The lines a reference can follow: the minimum-curvature line, or the fastest between it and the
# shortest path (``min_time_offsets``).
LINES = ("curvature", "time")
# Their names on the command lines (``--reference-line``).
LINE_NAMES = {"min-curvature": "curvature", "min-time": "time"}


def min_curvature_offsets(
    data: TrackData,
    vehicle_width: float = 2.0,
    kappa_bound: float = 0.12,
    iterations: int | None = None,
    objective: str = "curvature",
) -> np.ndarray:
    """Lateral offsets (+ left) of the minimum-curvature line, keeping the car inside the track.

    Each point of ``data`` (evenly spaced, e.g. from ``track_io.resample``) moves along the
    centre line's left normal within ``[-(w_right - width/2), w_left - width/2]``; the line is
    the periodic cubic spline through the moved points, and ``|kappa| <= kappa_bound`` at them.

    ``objective="curvature"`` (default) minimises the sum of squared curvatures: a QP on the
    curvature linearised at the current line, repeated (Gauss-Newton with a backtracking step)
    up to ``iterations`` times (default 8), stopping early once the line moves less than 1 mm.
    ``objective="tum"`` solves the single QP of TUM's ``opt_min_curv`` as published: tangents
    frozen at the centre line and, as its quadprog call has it, the linear term of the cost
    doubled, which minimises ``sum((2 kappa_centre + dkappa)^2)`` rather than the curvature.
    That line reproduces the reference table in shared/reference/laptime-limits.md; the
    ``curvature`` line is the true minimum and laps several percent faster.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective = {objective!r}; choose one of {OBJECTIVES}")
    if objective == "tum" and iterations not in (None, 1):
        raise ValueError(f"objective='tum' is TUM's single QP; iterations = {iterations} must be 1 or None")
    iterations = (1 if objective == "tum" else 8) if iterations is None else iterations
    if iterations < 1:
        raise ValueError(f"iterations = {iterations}; at least one QP is needed")
    if not kappa_bound > 0.0:
        raise ValueError(f"kappa_bound = {kappa_bound}; it must be a positive curvature in rad/m")
    lo, hi = _line_bounds(data, vehicle_width)
    qp = _CurvatureQP(data, lo, hi, kappa_bound)
    alpha = np.clip(np.zeros(data.n), lo, hi)
    if objective == "tum":
        return qp.solve(alpha, frozen_tangents=True, doubled_linear_term=True)
    return _descend(qp, alpha, iterations)


# Weights of the chords' summed squares against the squared turning angles (both per point), tried
# in this order, each from the line of the one before: 0 is the minimum-curvature line, 1 about the
# shortest path. Lap time against the weight has one valley on the tracks and cars measured
# (docs/experiments.md, session 23), so the search narrows in on the best of them.
LENGTH_WEIGHTS = (0.0, 1e-3, 1e-2, 0.1, 1.0)


def min_time_offsets(data: TrackData, limits: LapLimits, vehicle_width: float = 2.0, kappa_bound: float = 0.12,
                     refine: int = 3, iterations: int = 4) -> tuple[np.ndarray, float]:
    """Lateral offsets (+ left) of the fastest line between the minimum-curvature line and the
    shortest path for the car of ``limits``, and its weight on length.

    The minimum-curvature line is the fastest where the tyres limit the car everywhere; where the
    engine or a speed cap does (a car at its limiter through fast corners), a shorter line is
    faster. The QP's cost is the squared turning angles plus ``w`` times the squared chords (TUM's
    shortest-path objective); ``w`` is searched over ``LENGTH_WEIGHTS`` and then ``refine`` times
    between the best one's neighbours (in log), by the lap time of each line's speed profile, each
    line ``iterations`` Gauss-Newton steps from its neighbour's. The minimum-curvature line is one
    of the candidates, so the line found is never slower than it.
    """
    lo, hi = _line_bounds(data, vehicle_width)
    qp = _CurvatureQP(data, lo, hi, kappa_bound)
    alpha = _descend(qp, np.clip(np.zeros(data.n), lo, hi), 8)
    tried: dict[float, tuple[float, np.ndarray]] = {}

    def lap(weight: float, start: np.ndarray) -> tuple[float, np.ndarray]:
        if weight not in tried:
            qp.length_weight = weight
            a = _descend(qp, start, iterations) if weight else start
            _, _, kappa, ds = line_geometry(data, a)
            tried[weight] = (lap_time(velocity_profile(kappa, ds, limits), ds), a)
        return tried[weight]

    for w in LENGTH_WEIGHTS:
        alpha = lap(w, alpha)[1]
    ws = list(LENGTH_WEIGHTS)
    for _ in range(refine):
        best = min(tried, key=lambda w: tried[w][0])
        i = ws.index(best)
        # between the best weight and each neighbour, at the geometric mean (0's neighbour: a third)
        for j in (i - 1, i + 1):
            if 0 <= j < len(ws):
                a, b = sorted((ws[i], ws[j]))
                mid = b / 3.0 if a == 0.0 else math.sqrt(a * b)
                lap(mid, tried[ws[i]][1])
        ws = sorted(tried)
    best = min(tried, key=lambda w: tried[w][0])
    return tried[best][1], best


def _line_bounds(data: TrackData, vehicle_width: float) -> tuple[np.ndarray, np.ndarray]:
    """Offsets (+ left) that keep a car of ``vehicle_width`` inside the track, per point."""
    half = vehicle_width / 2.0
    lo, hi = -(data.w_right - half), data.w_left - half
    if np.any(lo > hi):
        i = int(np.argmax(lo > hi))
        raise ValueError(
            f"track {data.name!r} point {i}: width {data.w_left[i] + data.w_right[i]:.2f} m is narrower than "
            f"the vehicle width {vehicle_width} m; lower vehicle_width or fix the track widths"
        )
    return lo, hi


def _descend(qp: "_CurvatureQP", alpha: np.ndarray, iterations: int) -> np.ndarray:
    """Gauss-Newton on ``qp.cost`` from ``alpha``: repeated linearised QPs with a backtracking step."""
    cost = qp.cost(alpha)
    lo, hi = qp.lo, qp.hi
    for _ in range(iterations):
        step = qp.solve(alpha) - alpha
        # The linearisation can overshoot where the line swings across a tight corner; take the
        # longest halved step that lowers the true cost.
        for frac in (1.0, 0.5, 0.25, 0.125):
            trial = np.clip(alpha + frac * step, lo, hi)
            trial_cost = qp.cost(trial)
            if trial_cost < cost:
                break
        else:
            break
        moved = float(np.max(np.abs(trial - alpha)))
        alpha, cost = trial, trial_cost
        if moved < 1e-3:
            break
    return alpha


class _CurvatureQP:
    """Curvature at the knots of the line ``centre + alpha * normal`` and its linearised QP.

    Unknowns z = [alpha, mx, my]: the offsets and the line's second derivatives at the knots,
    tied by the spline's equations; the knots keep the centre line's spacing.
    """

    def __init__(self, data: TrackData, lo: np.ndarray, hi: np.ndarray, kappa_bound: float):
        n = data.n
        self.n, self.lo, self.hi, self.kappa_bound = n, lo, hi, kappa_bound
        self.x0, self.y0 = data.x, data.y
        self.nx, self.ny = _left_normals(data.x, data.y)
        h = np.diff(chord_param(data.x, data.y))
        self.cyc, self.rhs, dp, dm = _periodic_spline_ops(h)
        self.cyc_lu = splu(self.cyc)
        zero = sparse.csc_matrix((n, n))
        eye = sparse.identity(n, format="csc")
        nxd, nyd = sparse.diags(self.nx), sparse.diags(self.ny)
        self.eq = sparse.bmat([[-self.rhs @ nxd, self.cyc, None], [-self.rhs @ nyd, None, self.cyc]], format="csc")
        self.eq_b = np.concatenate([self.rhs @ data.x, self.rhs @ data.y])
        # Tangents x' = tx_z @ z + tx_0, y' likewise; second derivatives are mx, my themselves.
        self.tx_z = sparse.hstack([dp @ nxd, dm, zero], format="csc")
        self.ty_z = sparse.hstack([dp @ nyd, zero, dm], format="csc")
        self.tx_0, self.ty_0 = dp @ data.x, dp @ data.y
        self.ddx_z = sparse.hstack([zero, eye, zero], format="csc")
        self.ddy_z = sparse.hstack([zero, zero, eye], format="csc")
        # Curvature times the mean step: order-one numbers for the solver.
        self.scale = float(np.mean(h))
        # The line's chords over the mean step, p[i+1] - p[i] = chord_z @ z + chord_0 (x, then y):
        # their summed squares are TUM's shortest-path objective, ``length_weight`` mixes it in.
        self.length_weight = 0.0
        nxt = sparse.csc_matrix((np.ones(n), (np.arange(n), (np.arange(n) + 1) % n)), shape=(n, n))
        diff = nxt - sparse.identity(n, format="csc")
        self.chord_z = sparse.vstack([sparse.hstack([diff @ nxd, zero, zero]),
                                      sparse.hstack([diff @ nyd, zero, zero])], format="csc") / self.scale
        self.chord_0 = np.concatenate([diff @ data.x, diff @ data.y]) / self.scale

    def _z(self, alpha: np.ndarray) -> np.ndarray:
        mx = self.cyc_lu.solve(self.rhs @ (self.x0 + self.nx * alpha))
        my = self.cyc_lu.solve(self.rhs @ (self.y0 + self.ny * alpha))
        return np.concatenate([alpha, mx, my])

    def _kappa_parts(self, z: np.ndarray):
        tx, ty = self.tx_z @ z + self.tx_0, self.ty_z @ z + self.ty_0
        ddx, ddy = self.ddx_z @ z, self.ddy_z @ z
        r2 = tx * tx + ty * ty
        den = np.power(r2, 1.5)
        return tx, ty, ddx, ddy, r2, den, (tx * ddy - ty * ddx) / den

    def cost(self, alpha: np.ndarray) -> float:
        z = self._z(alpha)
        chords = self.chord_z @ z + self.chord_0
        return float(np.sum((self._kappa_parts(z)[-1] * self.scale) ** 2) + self.length_weight * np.sum(chords ** 2))

    def solve(self, alpha: np.ndarray, frozen_tangents: bool = False, doubled_linear_term: bool = False) -> np.ndarray:
        """Offsets minimising the curvature linearised at ``alpha``, within bounds and kappa_bound."""
        z = self._z(alpha)
        tx, ty, ddx, ddy, r2, den, kap = self._kappa_parts(z)
        jac = sparse.diags(-ty / den) @ self.ddx_z + sparse.diags(tx / den) @ self.ddy_z
        if not frozen_tangents:
            jac = jac + sparse.diags(ddy / den - 3.0 * kap * tx / r2) @ self.tx_z
            jac = jac + sparse.diags(-ddx / den - 3.0 * kap * ty / r2) @ self.ty_z
        jac = sparse.csc_matrix(jac) * self.scale
        # Linearised curvature (scaled): jac @ z' + c.
        c = kap * self.scale - jac @ z
        # TUM's cost (1/2) a'Ha + f'a with f = 2 E'k: the residual target shifts by the reference curvature.
        target = c + kap * self.scale if doubled_linear_term else c
        n, m = self.n, jac.shape[1]
        pick = sparse.hstack([sparse.identity(n), sparse.csc_matrix((n, m - n))], format="csc")
        p_full = 2.0 * (jac.T @ jac)
        q_vec = 2.0 * (jac.T @ target)
        if self.length_weight:
            p_full = p_full + 2.0 * self.length_weight * (self.chord_z.T @ self.chord_z)
            q_vec = q_vec + 2.0 * self.length_weight * (self.chord_z.T @ self.chord_0)
        p_mat = sparse.triu(p_full, format="csc")
        bound = self.kappa_bound * self.scale
        a_mat = sparse.vstack([self.eq, pick, -pick, jac, -jac], format="csc")
        b_vec = np.concatenate([self.eq_b, self.hi, -self.lo, bound - c, bound + c])
        cones = [clarabel.ZeroConeT(self.eq.shape[0]), clarabel.NonnegativeConeT(4 * n)]
        settings = clarabel.DefaultSettings()
        settings.verbose = False
        sol = clarabel.DefaultSolver(p_mat, q_vec, a_mat, b_vec, cones, settings).solve()
        status = str(sol.status)
        if "Solved" not in status:
            raise RuntimeError(
                f"minimum-curvature QP not solved (Clarabel status {status}): the track may be too tight for "
                f"kappa_bound = {self.kappa_bound} rad/m or too narrow for the car; raise kappa_bound or lower "
                "vehicle_width"
            )
        return np.clip(np.asarray(sol.x)[:n], self.lo, self.hi)


# ---------------------------------------------------------------------------------------------
# The whole flow
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Reference:
    """A reference line of a track (minimum curvature, minimum time or learned), its speed profile
    and lap time.

    ``offsets`` (+ left of the centre), ``x``, ``y``, ``kappa`` and ``speed`` are given at the
    points of the TrackData passed to ``reference_line``, as they are; ``resampled`` is the
    smoothed centre line the optimisation ran on, with ``resampled_offsets`` and
    ``resampled_speed`` at its points.
    """

    offsets: np.ndarray
    x: np.ndarray
    y: np.ndarray
    kappa: np.ndarray
    speed: np.ndarray
    lap_time_s: float
    line_length_m: float
    centre_lap_time_s: float
    centre_length_m: float
    resampled: TrackData
    resampled_offsets: np.ndarray
    resampled_speed: np.ndarray


def prepare_track(data: TrackData, step: float = 3.0) -> TrackData:
    """TUM's spline approximation: points every metre, smoothing spline, equal ``step``s.

    Widths are measured again from the smoothed centre line so the track edges stay where the
    file puts them.
    """
    if not step > 0.0:
        raise ValueError(f"step = {step}; give the resampling step in metres (> 0), e.g. 3.0")
    s = chord_param(data.x, data.y)
    smooth = resample(data, step=step, smoothing=SMOOTHING_M2, densify="linear")  # as TUM does
    pos, lateral = _project(smooth, data)
    period = s[-1]
    w_left = np.interp(pos, s[:-1], data.w_left, period=period) - lateral
    w_right = np.interp(pos, s[:-1], data.w_right, period=period) + lateral
    if np.any(w_left <= 0.0) or np.any(w_right <= 0.0):
        i = int(np.argmin(np.minimum(w_left, w_right)))
        raise ValueError(
            f"track {data.name!r}: the smoothed centre line leaves the track near resampled point {i}; "
            "the centre line is too noisy or the track too narrow there"
        )
    return TrackData(data.name, smooth.x, smooth.y, w_right, w_left)


def _project(points: TrackData, line: TrackData) -> tuple[np.ndarray, np.ndarray]:
    """Arc length along ``line``'s closed polyline of each of ``points`` (the same track), and the
    signed lateral distance (+ left) of the point from it.

    The search starts from the proportional arc length and looks only nearby, so a point never
    snaps to another part of the track that passes close by.
    """
    s_line = chord_param(line.x, line.y)
    s_pts = chord_param(points.x, points.y)
    m = line.n
    guess = np.round(s_pts[:-1] / s_pts[-1] * m).astype(int)
    reach = int(math.ceil(24.0 / max(float(np.mean(np.diff(s_line))), 1e-9))) + 2
    window = np.arange(-reach, reach + 1)
    j = (guess[:, None] + window[None, :]) % m
    ax, ay = line.x[j], line.y[j]
    ux, uy = line.x[(j + 1) % m] - ax, line.y[(j + 1) % m] - ay
    seg = s_line[j + 1] - s_line[j]
    px, py = points.x[:, None], points.y[:, None]
    t = np.clip(((px - ax) * ux + (py - ay) * uy) / (seg * seg), 0.0, 1.0)
    dx, dy = px - (ax + t * ux), py - (ay + t * uy)
    best = np.argmin(np.hypot(dx, dy), axis=1)
    rows = np.arange(points.n)
    jb, tb = j[rows, best], t[rows, best]
    lateral = (ux[rows, best] * dy[rows, best] - uy[rows, best] * dx[rows, best]) / seg[rows, best]
    return s_line[jb] + tb * seg[rows, best], lateral


def reference_line(
    data: TrackData,
    limits: LapLimits,
    vehicle_width: float = 2.0,
    kappa_bound: float = 0.12,
    step: float = 3.0,
    objective: str = "curvature",
) -> Reference:
    """Smooth and resample ``data`` at ``step``, find the line (``objective``: "curvature" or "tum",
    ``min_curvature_offsets``; "time", ``min_time_offsets``), its flying-lap speed profile and lap
    time, and carry offsets and speeds back onto the points of ``data``."""
    if objective not in OBJECTIVES + LINES:
        raise ValueError(f"objective = {objective!r}; choose one of {OBJECTIVES + LINES[1:]}")
    track = prepare_track(data, step)
    if objective == "time":
        offsets, _ = min_time_offsets(track, limits, vehicle_width, kappa_bound)
    else:
        offsets = min_curvature_offsets(track, vehicle_width, kappa_bound, objective=objective)
    return reference_on(data, track, offsets, limits)


def reference_on(data: TrackData, track: TrackData, offsets: np.ndarray, limits: LapLimits) -> Reference:
    """The ``Reference`` of the line ``offsets`` (+ left, per point of ``track``, the prepared
    centre line of ``data``): its flying-lap speed profile for ``limits`` and lap time, carried back
    onto the points of ``data``."""
    x, y, kappa, ds = line_geometry(track, offsets)
    speed = velocity_profile(kappa, ds, limits)
    _, _, kc, dsc = line_geometry(track, np.zeros(track.n))
    centre_time = lap_time(velocity_profile(kc, dsc, limits), dsc)

    s, _ = _project(data, track)
    period = float(np.sum(np.hypot(np.diff(track.x, append=track.x[0]), np.diff(track.y, append=track.y[0]))))
    s_knots = chord_param(track.x, track.y)[:-1]

    def at(v: np.ndarray) -> np.ndarray:
        return np.interp(s, s_knots, v, period=period)

    lx, ly = at(x), at(y)
    nx, ny = _left_normals(data.x, data.y)
    return Reference(
        offsets=(lx - data.x) * nx + (ly - data.y) * ny,
        x=lx,
        y=ly,
        kappa=at(kappa),
        speed=at(speed),
        lap_time_s=lap_time(speed, ds),
        line_length_m=float(np.sum(ds)),
        centre_lap_time_s=centre_time,
        centre_length_m=float(np.sum(dsc)),
        resampled=track,
        resampled_offsets=offsets,
        resampled_speed=speed,
    )
