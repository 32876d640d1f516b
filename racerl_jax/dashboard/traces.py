"""What is drawn: stretches of driving (``Trace``) cut from a run's per-step stream (``StepLog``:
``steps.jsonl`` of a game run, or a recording's ``telemetry.ndjson``) and from its evaluations
(``eval_laps``)."""

from __future__ import annotations

import bisect
import math
from array import array
from dataclasses import dataclass, field

import numpy as np

from racerl_jax.dashboard.track import Track

COLUMNS = ("w", "t", "x", "y", "speed", "steer", "throttle", "brake", "value", "dist")


@dataclass
class Trace:
    """A stretch of driving: columns over its steps (NaN where unknown)."""

    label: str
    cols: dict[str, np.ndarray]  # COLUMNS; "t" in seconds from the stretch's start
    policy: np.ndarray | None = None  # (n, k) the policy's action in the env's units
    events: list[tuple[int, str]] = field(default_factory=list)  # (step, safety reason or end reason)
    lap_s: float = math.nan  # the lap time when the stretch is one completed lap

    def __len__(self) -> int:
        return len(self.cols["t"])

    def __getitem__(self, key: str) -> np.ndarray:
        return self.cols[key]


def make_trace(label: str, rows: dict, lo: int, hi: int, policy: list | None = None,
               events: list | None = None, lap_s: float = math.nan) -> Trace:
    cols = {k: np.asarray(rows[k][lo:hi], float) for k in COLUMNS}
    t = cols["t"] if np.isfinite(cols["t"]).all() and len(cols["t"]) else cols["w"]
    cols["t"] = t - t[0] if len(t) else t
    pol = None
    if policy is not None:
        seg = policy[lo:hi]
        try:
            pol = np.array(seg, dtype=float)  # None (a non-finite action) reads as NaN
        except ValueError:  # rows of different widths
            pol = None
        if pol is None or pol.ndim != 2:
            width = max((len(p) for p in seg), default=0)
            pol = np.full((len(seg), width), np.nan)
            for i, p in enumerate(seg):
                pol[i, :len(p)] = [np.nan if v is None else v for v in p]
        if pol.shape[1] == 0:
            pol = None
    # events are in row order: an hour of a game run holds 100k+ of them, a window a few
    events = events or []
    a, b = bisect.bisect_left(events, (lo, "")), bisect.bisect_left(events, (hi, ""))
    ev = [(i - lo, r) for i, r in events[a:b]]
    return Trace(label, cols, pol, ev, lap_s)


class StepLog:
    """The per-step stream of a run (``steps.jsonl``, or a recording's ``telemetry.ndjson``) as
    growable columns, split into episodes."""

    def __init__(self) -> None:
        # float64 arrays, not lists: an hour at 50 Hz is 180k rows, 14 MB here against 60 MB of floats
        self.rows: dict[str, array] = {k: array("d") for k in COLUMNS}
        self.policy: list[list] = []
        self.events: list[tuple[int, str]] = []
        self.episodes: list[tuple[object, int]] = []  # (episode id, first row)
        self.ends: dict[int, str] = {}  # row -> why the episode ended
        self.fastest: tuple[float, int, int] | None = None  # (lap time, first row, row after) of the fastest lap
        self._scanned = 0  # rows looked at for start-line crossings
        self._lap_from: int | None = None  # the row where the lap being driven started
        self._starts: set[int] = set()  # first rows of episodes

    def __len__(self) -> int:
        return len(self.rows["w"])

    def _start(self, ep: object) -> None:
        if not self.episodes or self.episodes[-1][0] != ep:
            self.episodes.append((ep, len(self)))
            self._starts.add(len(self))

    def scan_laps(self, length: float) -> None:
        """The laps driven in the stream, start line to start line within an episode (lap distance
        drops by more than half a lap where the car crosses it); keeps the fastest. Looks at the
        rows added since the last call only."""
        d, t, w = self.rows["dist"], self.rows["t"], self.rows["w"]
        for j in range(self._scanned, len(self)):
            if j in self._starts:
                self._lap_from = None
            elif d[j - 1] - d[j] > 0.5 * length:
                if self._lap_from is not None:
                    a, b = (t[self._lap_from], t[j]) if math.isfinite(t[j] - t[self._lap_from]) else (w[self._lap_from], w[j])
                    if self.fastest is None or b - a < self.fastest[0]:
                        self.fastest = (b - a, self._lap_from, j)
                self._lap_from = j
        self._scanned = len(self)

    def fastest_lap(self) -> Trace | None:
        if self.fastest is None:
            return None
        lap_s, lo, hi = self.fastest
        return make_trace(f"fastest lap driven: {lap_s:.2f} s", self.rows, lo, hi, self.policy, self.events, lap_s)

    def add_steps(self, recs: list[dict]) -> None:
        """``steps.jsonl`` records (racerl_jax.run_log.StepLog)."""
        for r in recs:
            self._start(r.get("ep"))
            applied = r.get("applied") or []
            for k in COLUMNS:
                self.rows[k].append(num(r.get(k)))
            for i, k in enumerate(("steer", "throttle", "brake")):
                self.rows[k][-1] = num(applied[i]) if i < len(applied) else math.nan
            self.policy.append(r.get("policy") or [])
            i = len(self) - 1
            for reason in r.get("safety") or ():
                self.events.append((i, str(reason)))
            if r.get("end"):
                self.ends[i] = str(r["end"])
                if r["end"] != "done":
                    self.events.append((i, str(r["end"])))

    def add_telemetry(self, recs: list[dict]) -> None:
        """``telemetry.ndjson`` records (bridge.recorder): frames only; actions and rejects are the
        recorder's own business."""
        for r in recs:
            d = r.get("d")
            if r.get("k") != "f" or not isinstance(d, dict):
                continue
            self._start(d.get("episode"))
            for k in COLUMNS:
                self.rows[k].append(num(d.get(k)))
            self.rows["w"][-1] = num(r.get("w"))
            self.rows["dist"][-1] = num(d.get("lap_dist"))
            self.policy.append([])
            if d.get("done"):
                self.ends[len(self) - 1] = str(d.get("reason") or "done")

    def fill_distance(self, track: Track | None, start: int = 0) -> None:
        """Lap distance by projection on the track where the stream did not give one."""
        if track is None or start >= len(self):
            return
        d = np.asarray(self.rows["dist"][start:], float)
        missing = np.flatnonzero(np.isnan(d))
        if missing.size:
            x = np.asarray(self.rows["x"][start:], float)[missing]
            y = np.asarray(self.rows["y"][start:], float)[missing]
            for j, v in zip(missing, track.project(x, y)):
                self.rows["dist"][start + j] = v

    def span(self, n: int) -> tuple[int, int]:
        """Rows of episode ``n`` (negative counts from the last)."""
        n = range(len(self.episodes))[n]
        lo = self.episodes[n][1]
        hi = self.episodes[n + 1][1] if n + 1 < len(self.episodes) else len(self)
        return lo, hi

    def episode(self, n: int, last: int | None = None) -> Trace:
        """Episode ``n`` (its last ``last`` steps only, when given)."""
        lo, hi = self.span(n)
        if last is not None:
            lo = max(lo, hi - last)
        ep = self.episodes[range(len(self.episodes))[n]][0]
        end = self.ends.get(hi - 1)
        label = f"episode {ep}" + (f" ({end})" if end else " (running)" if hi == len(self) else "")
        return make_trace(label, self.rows, lo, hi, self.policy, self.events)


def num(v: object) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


# ----------------------------------------------------------------------------- evaluation laps


def eval_laps(rec: dict, k: int, track: Track | None) -> list[Trace]:
    """One evaluation (an ``eval_laps.jsonl`` record) cut into its laps; what follows the last
    completed lap (a crash, the time limit) is a stretch of its own."""
    n = len(rec.get("x") or [])
    dt = num(rec.get("dt"))
    if n == 0 or not dt > 0:
        return []
    rows = {c: [math.nan] * n for c in COLUMNS}
    for c in ("x", "y", "speed", "steer", "throttle", "brake"):
        vals = rec.get(c) or []
        rows[c] = [num(v) for v in vals[:n]] + [math.nan] * (n - len(vals))
    rows["t"] = list(np.arange(n) * dt)
    rows["w"] = rows["t"]
    if track is not None:
        rows["dist"] = list(track.project(np.asarray(rows["x"]), np.asarray(rows["y"])))
    ends = [int(i) for i in rec.get("lap_end") or [] if isinstance(i, int) and 0 <= i < n]
    times = list(rec.get("lap_time") or [])
    clean = list(rec.get("lap_clean") or [])
    steps = rec.get("env_steps", "?")
    out, lo = [], 0
    for j, end in enumerate(ends):
        t = num(times[j]) if j < len(times) else math.nan
        ok = bool(clean[j]) if j < len(clean) else False
        label = f"eval {k} @ {steps} steps, lap {j + 1}: {t:.2f} s" + ("" if ok else " (not clean)")
        out.append(make_trace(label, rows, lo, end + 1, lap_s=t if ok else math.nan))
        lo = end + 1
    if lo < n:
        why = "ended" if rec.get("ended") else "time up"
        out.append(make_trace(f"eval {k} @ {steps} steps, lap {len(ends) + 1} unfinished ({why})", rows, lo, n))
    return out
