"""The laps of a drive and their scores: a drive (per-step arrays from the surrogate or the game)
split into lap attempts (``LapBook``), scored (lap times, clean-lap rate, deviation from the
reference line, smoothness, time off track) and drawn. ``evaluate.py`` and fine-tuning use them.

Laps: every drive starts from rest on the start line; a lap completed leads straight into the
next (a flying lap); a lap that ends any other way (off the track, stuck, wrong way, the game
lost) is a failed lap, and the next starts again from rest. A game that puts the car anywhere but
on the line first drives an untimed out-lap to the line, which is not one of the N.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from surrogate.track import Track

# Pedal positions (throttle minus brake) closer to zero than this count as neither: a change of
# pedal is a move from one side of this band to the other.
PEDAL_DEADBAND = 0.05


# ----------------------------------------------------------------------------- laps


@dataclasses.dataclass
class Lap:
    """One lap attempt: from rest on the line (``standing``) or straight on from the lap before
    (``flying``); ``end`` is ``"lap"`` for a completed lap, else why the episode ended."""

    number: int
    start: str
    first: int  # step index of its first step in the drive
    last: int = -1
    end: str = ""
    time_s: float | None = None
    clean: bool = False
    distance_m: float = 0.0

    def to_dict(self, rows: dict[str, np.ndarray]) -> dict[str, Any]:
        seg = slice(self.first, self.last + 1)
        mean_dev, max_dev = _abs_stats(rows["ref_deviation"][seg])
        return {"lap": self.number, "start": self.start, "end": self.end, "time_s": self.time_s,
                "clean": self.clean, "steps": self.last - self.first + 1, "distance_m": self.distance_m,
                "ref_deviation_mean_abs_m": _num(mean_dev), "ref_deviation_max_abs_m": _num(max_dev),
                "off_track_s": float(np.sum(rows["dt"][seg] * rows["off_track"][seg]))}


class LapBook:
    """Splits a drive, step by step, into lap attempts until ``laps`` of them are over."""

    def __init__(self, laps: int, track_length: float):
        self.laps_asked = laps
        self.length = float(track_length)
        self.laps: list[Lap] = []
        self.out_laps = 0
        self.steps = 0
        self._current: Lap | None = None
        self._s = 0.0  # arc length along the track since the episode began, from the start line

    @property
    def done(self) -> bool:
        return len(self.laps) >= self.laps_asked

    def new_episode(self, start_s: float = 0.0) -> None:
        """A reset: the car at ``start_s`` along the track, at rest."""
        self._s = float(start_s) % self.length
        self._current = None

    def add(self, row: dict[str, Any]) -> bool:
        """One step of the drive (lap_completed, lap_time, lap_clean, done, end_reason, progress);
        returns whether the laps asked for are all over."""
        i = self.steps
        self.steps += 1
        if self._current is None:
            self._current = Lap(len(self.laps) + 1, "standing", i)
        lap = self._current
        old = math.floor(self._s / self.length)
        self._s += float(row["progress"])
        crossed = math.floor(self._s / self.length) > old
        lap.distance_m += float(row["progress"])
        if bool(row["lap_completed"]):
            lap.last, lap.end, lap.time_s, lap.clean = i, "lap", float(row["lap_time"]), bool(row["lap_clean"])
            self.laps.append(lap)
            self._current = None if bool(row["done"]) else Lap(len(self.laps) + 1, "flying", i + 1)
        elif bool(row["done"]):
            lap.last, lap.end = i, str(row["end_reason"] or "ended")
            self.laps.append(lap)
            self._current = None
        elif crossed and lap.start == "standing":
            # An untimed crossing: the car started off the line (a game's own start), and its first
            # timed lap begins here, at speed.
            self.out_laps += 1
            self._current = Lap(lap.number, "flying", i + 1)
        return self.done


# ----------------------------------------------------------------------------- scores


def _num(v: Any) -> float | None:
    """A float for JSON: None for NaN or infinity."""
    v = float(v)
    return v if math.isfinite(v) else None


def score(rows: dict[str, np.ndarray], book: LapBook, limit_s: float) -> dict[str, Any]:
    """The scores of one driver's drive: laps, clean-lap rate, lap times, deviation from the
    reference line, smoothness and time off the track. NaN (None in JSON) where there is nothing
    to measure."""
    laps = book.laps
    clean = [lap.time_s for lap in laps if lap.clean and lap.time_s is not None]
    flying = [lap.time_s for lap in laps if lap.clean and lap.time_s is not None and lap.start == "flying"]
    best = min(clean) if clean else float("nan")
    n = len(rows["dt"])
    act = rows["action"]
    # Changes within an episode only, not the jump at a reset.
    same = ~rows["done"][:-1].astype(bool) if n > 1 else np.zeros(0, bool)
    d_steer = np.abs(np.diff(act[:, 0]))[same] if n > 1 else np.zeros(0)
    pedal = act[:, 1] - act[:, 2]
    d_pedal = np.abs(np.diff(pedal))[same] if n > 1 else np.zeros(0)
    side = np.where(pedal > PEDAL_DEADBAND, 1, np.where(pedal < -PEDAL_DEADBAND, -1, 0))
    # A pedal change: from throttle to brake or back (the band in between skipped over).
    changes = 0
    for ep in _episodes(rows["done"]):
        s = side[ep][side[ep] != 0]
        changes += int(np.sum(s[1:] != s[:-1]))
    mean_dev, max_dev = _abs_stats(rows["ref_deviation"])
    driven_s = float(np.sum(rows["dt"]))
    return {
        "laps_asked": book.laps_asked,
        "laps_driven": len(laps),
        "laps_completed": sum(lap.end == "lap" for lap in laps),
        "clean_laps": len(clean),
        "failed_laps": sum(lap.end != "lap" for lap in laps),
        "laps_not_reached": book.laps_asked - len(laps),
        "out_laps": book.out_laps,
        "clean_lap_rate": len(clean) / book.laps_asked,
        "lap_times_s": [lap.time_s for lap in laps if lap.time_s is not None],
        "mean_lap_s": float(np.mean(clean)) if clean else float("nan"),
        "best_lap_s": best,
        "mean_flying_lap_s": float(np.mean(flying)) if flying else float("nan"),
        "limit_s": limit_s,
        "gap_pct": 100.0 * (best / limit_s - 1.0),
        "ref_deviation_mean_abs_m": mean_dev,
        "ref_deviation_max_abs_m": max_dev,
        "steer_change_mean": float(np.mean(d_steer)) if d_steer.size else float("nan"),
        "pedal_change_mean": float(np.mean(d_pedal)) if d_pedal.size else float("nan"),
        "pedal_changes_per_min": changes / (driven_s / 60.0) if driven_s > 0 else float("nan"),
        "pedal_overlap": float(np.mean((act[:, 1] > PEDAL_DEADBAND) & (act[:, 2] > PEDAL_DEADBAND))) if n else float("nan"),
        "off_track_s": float(np.sum(rows["dt"] * rows["off_track"])),
        "off_track_laps": sum(lap.end == "off_track" for lap in laps),
        "steps": n,
        "driven_s": driven_s,
        "laps": [lap.to_dict(rows) for lap in laps],
    }


def _abs_stats(v: np.ndarray) -> tuple[float, float]:
    """(mean, max) of |v| over its finite values (a step the game ended has no deviation); NaN for none."""
    a = np.abs(np.asarray(v, np.float64))
    a = a[np.isfinite(a)]
    return (float(np.mean(a)), float(np.max(a))) if a.size else (float("nan"), float("nan"))


def _episodes(done: np.ndarray) -> Iterator[slice]:
    ends = np.flatnonzero(done)
    start = 0
    for e in ends:
        yield slice(start, int(e) + 1)
        start = int(e) + 1
    if start < len(done):
        yield slice(start, len(done))


def summary_line(s: dict[str, Any]) -> str:
    return (f"clean_lap_rate={s['clean_lap_rate']:.2f} mean_lap_s={s['mean_lap_s']:.2f} "
            f"best_lap_s={s['best_lap_s']:.2f} limit_s={s['limit_s']:.2f} gap_pct={s['gap_pct']:.1f}")


def json_safe(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return _num(v)
    return v


# ----------------------------------------------------------------------------- plots


def plot_driver(track: Track, rows: dict[str, np.ndarray], book: LapBook, dt: float, name: str, limit_s: float,
                path: Path) -> Path | None:
    """The driver's best clean lap (map coloured by speed, speed and inputs against the distance),
    or, without one, its longest attempt; None when it drove less than two steps."""
    from racerl_jax.plots import plot_lap

    clean = [lap for lap in book.laps if lap.clean and lap.time_s is not None]
    if clean:
        lap = min(clean, key=lambda a: a.time_s)
        title = f"{name}: best clean lap {lap.time_s:.2f} s (lap {lap.number}, {lap.start}); limit {limit_s:.2f} s"
        seg = slice(lap.first, lap.last + 1)
    elif book.laps:
        lap = max(book.laps, key=lambda a: a.distance_m)
        title = f"{name}: no clean lap; lap {lap.number} ended {lap.end} after {lap.distance_m:.0f} m"
        seg = slice(lap.first, lap.last + 1)
    else:
        title = f"{name}: no lap over within the step budget ({len(rows['dt'])} steps)"
        seg = slice(0, len(rows["dt"]))
    if seg.stop - seg.start < 2:
        return None
    return plot_lap(track, rows["x"][seg], rows["y"][seg], rows["speed"][seg], path, title=title,
                    controls=rows["action"][seg], dt=dt)


def plot_lap_times(results: dict[str, dict[str, Any]], limit_s: float, path: Path) -> Path:
    """Every lap's time for each driver beside the minimum-lap-time reference; failed laps marked."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    for (name, res), color in zip(results.items(), ("tab:blue", "tab:green")):
        laps = res["laps"]
        ok = [(lap["lap"], lap["time_s"]) for lap in laps if lap["time_s"] is not None]
        if ok:
            ax.plot(*zip(*ok), "o-", color=color, label=f"{name} (clean-lap rate {res['clean_lap_rate']:.2f})")
        bad = [lap["lap"] for lap in laps if not lap["clean"]]
        if bad:
            ax.plot(bad, [limit_s] * len(bad), "x", color=color, ms=9, mew=2,
                    label=f"{name}: lap not clean (marked on the reference line)")
    ax.axhline(limit_s, color="tab:red", ls="--", lw=1, label=f"minimum-lap-time reference {limit_s:.2f} s")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("lap")
    ax.set_ylabel("lap time (s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
