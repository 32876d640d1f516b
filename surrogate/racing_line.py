"""The racing line learned from driven laps: once a driver laps faster than the minimum-curvature
line allows, its own line is the better reference.

``line_from_laps`` aligns the clean laps by distance along the track, cuts the track into sectors,
takes each sector from the lap that drove it fastest, blends the seams, smooths the line and keeps
it inside the track, and returns a ``laptime.Reference`` of it (its speed profile for the car and
its lap time), the same kind the env's reference line and speed come from.
``laps_from_drive`` cuts clean laps out of a drive (``evaluate.py``'s ``agent_drive.npz``, a run's
``best_lap.npz``).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from surrogate.laptime import LapLimits, Reference, _project, prepare_track, reference_on
from surrogate.track_io import TrackData, chord_param


class RacingLineError(ValueError):
    """Laps a line cannot be learned from: says why and what to give instead."""


def laps_from_drive(rows: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The clean, completed laps of a drive: x, y and the time since the lap began, from the steps
    between one crossing of the line and the next (a drive's per-step ``x``, ``y``, ``dt``,
    ``lap_completed``, ``lap_clean`` and ``done``). The first stretch of an episode counts when it
    ends in a clean lap (a standing start)."""
    need = ("x", "y", "dt", "lap_completed", "lap_clean", "done")
    missing = [k for k in need if k not in rows]
    if missing:
        raise RacingLineError(f"a drive needs the per-step fields {', '.join(need)}; missing {', '.join(missing)}")
    x, y, dt = (np.asarray(rows[k], np.float64) for k in ("x", "y", "dt"))
    completed, clean, done = (np.asarray(rows[k], bool) for k in ("lap_completed", "lap_clean", "done"))
    laps, start = [], 0
    for i in range(len(x)):
        if completed[i]:
            if clean[i] and i - start >= 10:
                laps.append({"x": x[start:i + 1], "y": y[start:i + 1], "t": np.cumsum(dt[start:i + 1]) - dt[start]})
            start = i + 1
        elif done[i]:
            start = i + 1
    return laps


def first_reached(s: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """``values`` (one per entry of the driven distance ``s``) when the drive first reached each
    distance in ``at``, linear between entries. A car that rolls back or stands still passes a
    point once: its later time there (a stuck car's seconds at rest) is not when it got there."""
    reach = np.maximum.accumulate(s)
    i = np.clip(np.searchsorted(reach, at, side="left"), 1, len(reach) - 1)
    lo, hi = reach[i - 1], reach[i]
    w = np.clip(np.where(hi > lo, (at - lo) / np.where(hi > lo, hi - lo, 1.0), 1.0), 0.0, 1.0)
    return values[i - 1] + w * (values[i] - values[i - 1])


def _aligned(track: TrackData, s_knots: np.ndarray, bounds: np.ndarray, lap: Mapping[str, np.ndarray]):
    """A lap's lateral offset at each point of ``track`` and its time at each of ``bounds`` (by
    distance along the track, the first time it got there)."""
    length = float(bounds[-1])
    x, y, t = (np.asarray(lap[k], np.float64) for k in ("x", "y", "t"))
    s, lateral = _project(TrackData("lap", x, y, np.zeros_like(x), np.zeros_like(x)), track)
    s = np.unwrap(s, period=length)  # one lap from the line: 0 .. length, not back to 0
    if s[0] > 0.5 * length:  # started a hair before the line
        s = s - length
    if s[-1] < 0.95 * length:
        raise RacingLineError(f"a lap covers {max(s[-1], 0.0):.0f} m of the {length:.0f} m track; give complete laps")
    return first_reached(s, lateral, s_knots), first_reached(s, t, bounds)


def _circular_smooth(a: np.ndarray, k: int) -> np.ndarray:
    if k <= 1:
        return a
    pad = np.concatenate([a[-k:], a, a[:k]])
    return np.convolve(pad, np.ones(k) / k, mode="same")[k:-k]


def line_from_laps(data: TrackData, laps: Sequence[Mapping[str, np.ndarray]], limits: LapLimits,
                   vehicle_width: float = 2.0, sectors: int = 12, blend_m: float = 20.0, smooth_m: float = 12.0,
                   step: float = 3.0) -> tuple[Reference, dict]:
    """The line stitched from the fastest sectors of ``laps`` (each ``x``, ``y`` and ``t``, from the
    start line round to it), smoothed over ``smooth_m``, seams blended over ``blend_m`` and kept
    inside the track with the car's half-width to spare; its Reference for ``limits``, and where
    each sector came from (``{"sector_lap": [...], "sector_time_s": [...], "stitched_time_s": f}``)."""
    if not laps:
        raise RacingLineError("no clean lap to learn a line from; drive laps first (evaluate.py writes them)")
    if sectors < 1:
        raise RacingLineError(f"sectors = {sectors}; give at least 1")
    track = prepare_track(data, step)
    s_knots = chord_param(track.x, track.y)
    length = float(s_knots[-1])
    s_knots = s_knots[:-1]
    bounds = np.linspace(0.0, length, sectors + 1)
    lateral, t_bounds = (np.stack(a) for a in zip(*(_aligned(track, s_knots, bounds, lap) for lap in laps)))
    sector_times = np.diff(t_bounds, axis=1)  # (laps, sectors)
    best = np.argmin(sector_times, axis=0)
    sector_of = np.minimum((s_knots / length * sectors).astype(int), sectors - 1)
    # Blend the seams: each point's weights over the laps are the chosen laps' sector masks,
    # smoothed along the track over blend_m.
    k = max(1, int(round(blend_m / step)))
    weights = np.stack([_circular_smooth((best[sector_of] == j).astype(np.float64), k) for j in range(len(laps))])
    offsets = np.sum(weights * lateral, axis=0) / np.maximum(np.sum(weights, axis=0), 1e-9)
    offsets = _circular_smooth(offsets, max(1, int(round(smooth_m / step))))
    half = 0.5 * vehicle_width
    offsets = np.clip(offsets, -(track.w_right - half), track.w_left - half)
    ref = reference_on(data, track, offsets, limits)
    return ref, {"sector_lap": best.tolist(), "sector_time_s": sector_times[best, np.arange(sectors)].tolist(),
                 "stitched_time_s": float(sector_times[best, np.arange(sectors)].sum()),
                 "lap_times_s": (t_bounds[:, -1] - t_bounds[:, 0]).tolist()}
