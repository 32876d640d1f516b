"""A run directory as the dashboard sees it, read incrementally and never written.

Two kinds of run directory are read, and one server can show both side by side:

- a training or fine-tuning run (``train_crossq.py``): ``config.json``, ``metrics.jsonl``,
  ``summary.json``, ``best_lap.npz`` and what ``racerl_jax.run_log`` writes for the dashboard
  (``track.json``, ``eval_laps.jsonl``, ``steps.jsonl``);
- a telemetry recording (``bridge.recorder``): ``meta.json``, ``track.json``, ``telemetry.ndjson``.

A directory that does not exist yet is an empty run that fills in when its files appear. No JAX
here: the server starts in a second and costs the training machine little.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from racerl_jax.dashboard.files import JsonDoc, TailFile

# File names, as the writers spell them (racerl_jax.run_log, racerl_jax.logs, bridge.recorder); not
# imported from there because those modules import JAX or the bridge.
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"
BEST_LAP_FILE = "best_lap.npz"
TRACK_FILE = "track.json"
EVAL_LAPS_FILE = "eval_laps.jsonl"
STEPS_FILE = "steps.jsonl"
TELEMETRY_FILE = "telemetry.ndjson"
META_FILE = "meta.json"

COLUMNS = ("w", "t", "x", "y", "speed", "steer", "throttle", "brake", "value", "dist")
PROJECT_CHUNK = 1024  # poses projected at once (memory: chunk x track points)


# ----------------------------------------------------------------------------- the track


class Track:
    """The centre line, its edges and the reference line of ``track.json``, and the projection of
    poses onto it (lap distance)."""

    def __init__(self, doc: dict) -> None:
        try:
            self.x, self.y = np.asarray(doc["x"], float), np.asarray(doc["y"], float)
            w_left, w_right = np.asarray(doc["w_left"], float), np.asarray(doc["w_right"], float)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"track.json needs x, y, w_left and w_right lists of numbers ({e})") from None
        if not (len(self.x) >= 3 and self.x.shape == self.y.shape == w_left.shape == w_right.shape):
            raise ValueError("track.json: x, y, w_left and w_right must be lists of the same length >= 3")
        self.name = str(doc.get("name") or "")
        seg = np.hypot(np.diff(self.x, append=self.x[0]), np.diff(self.y, append=self.y[0]))
        self.s = np.concatenate([[0.0], np.cumsum(seg)[:-1]])
        self.length = float(seg.sum())
        heading = np.arctan2(np.roll(self.y, -1) - np.roll(self.y, 1), np.roll(self.x, -1) - np.roll(self.x, 1))
        nx, ny = -np.sin(heading), np.cos(heading)
        self.left = (self.x + nx * w_left, self.y + ny * w_left)
        self.right = (self.x - nx * w_right, self.y - ny * w_right)
        self.ref = (np.asarray(doc["ref_x"], float), np.asarray(doc["ref_y"], float)) if "ref_x" in doc else None
        self.ref_speed = np.asarray(doc["ref_speed"], float) if "ref_speed" in doc else None
        limit = doc.get("limit_s")
        self.limit_s = float(limit) if isinstance(limit, (int, float)) else math.nan

    def project(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Arc length (m from the start line) of each pose's nearest point on the centre line: the
        nearest vertex, then the nearer of its two segments (a vertex alone would make the traces
        steps as wide as the track file's spacing)."""
        x, y = np.asarray(x, float), np.asarray(y, float)
        out = np.full(len(x), np.nan)
        m = len(self.x)
        for lo in range(0, len(x), PROJECT_CHUNK):
            px, py = x[lo:lo + PROJECT_CHUNK], y[lo:lo + PROJECT_CHUNK]
            ok = np.isfinite(px) & np.isfinite(py)
            if not ok.any():
                continue
            px, py = px[ok], py[ok]
            i = np.argmin((px[:, None] - self.x[None]) ** 2 + (py[:, None] - self.y[None]) ** 2, axis=1)
            best_s, best_d = np.zeros(len(px)), np.full(len(px), np.inf)
            for a in ((i - 1) % m, i):  # the segment ending at the vertex and the one starting there
                b = (a + 1) % m
                sx, sy = self.x[b] - self.x[a], self.y[b] - self.y[a]
                seg2 = np.maximum(sx * sx + sy * sy, 1e-12)
                u = np.clip(((px - self.x[a]) * sx + (py - self.y[a]) * sy) / seg2, 0.0, 1.0)
                d = (px - self.x[a] - u * sx) ** 2 + (py - self.y[a] - u * sy) ** 2
                better = d < best_d
                best_d = np.where(better, d, best_d)
                best_s = np.where(better, (self.s[a] + u * np.sqrt(seg2)) % self.length, best_s)
            out[lo:lo + PROJECT_CHUNK][ok] = best_s
        return out


# ----------------------------------------------------------------------------- what is drawn


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


def _trace(label: str, rows: dict[str, list], lo: int, hi: int, policy: list | None = None,
           events: list | None = None, lap_s: float = math.nan) -> Trace:
    cols = {k: np.asarray(rows[k][lo:hi], float) for k in COLUMNS}
    t = cols["t"] if np.isfinite(cols["t"]).all() and len(cols["t"]) else cols["w"]
    cols["t"] = t - t[0] if len(t) else t
    pol = None
    if policy is not None:
        seg = policy[lo:hi]
        width = max((len(p) for p in seg), default=0)
        if width:
            pol = np.full((len(seg), width), np.nan)
            for i, p in enumerate(seg):
                pol[i, :len(p)] = [np.nan if v is None else v for v in p]
    ev = [(i - lo, r) for i, r in (events or []) if lo <= i < hi]
    return Trace(label, cols, pol, ev, lap_s)


class StepLog:
    """The per-step stream of a run (``steps.jsonl``, or a recording's ``telemetry.ndjson``) as
    growable columns, split into episodes."""

    def __init__(self) -> None:
        self.rows: dict[str, list] = {k: [] for k in COLUMNS}
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
        return _trace(f"fastest lap driven: {lap_s:.2f} s", self.rows, lo, hi, self.policy, self.events, lap_s)

    def add_steps(self, recs: list[dict]) -> None:
        """``steps.jsonl`` records (racerl_jax.run_log.StepLog)."""
        for r in recs:
            self._start(r.get("ep"))
            applied = r.get("applied") or []
            for k in COLUMNS:
                self.rows[k].append(_num(r.get(k)))
            for i, k in enumerate(("steer", "throttle", "brake")):
                self.rows[k][-1] = _num(applied[i]) if i < len(applied) else math.nan
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
                self.rows[k].append(_num(d.get(k)))
            self.rows["w"][-1] = _num(r.get("w"))
            self.rows["dist"][-1] = _num(d.get("lap_dist"))
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
        return _trace(label, self.rows, lo, hi, self.policy, self.events)


def _num(v: object) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


# ----------------------------------------------------------------------------- evaluation laps


def eval_laps(rec: dict, k: int, track: Track | None) -> list[Trace]:
    """One evaluation (an ``eval_laps.jsonl`` record) cut into its laps; what follows the last
    completed lap (a crash, the time limit) is a stretch of its own."""
    n = len(rec.get("x") or [])
    dt = _num(rec.get("dt"))
    if n == 0 or not dt > 0:
        return []
    rows = {c: [math.nan] * n for c in COLUMNS}
    for c in ("x", "y", "speed", "steer", "throttle", "brake"):
        vals = rec.get(c) or []
        rows[c] = [_num(v) for v in vals[:n]] + [math.nan] * (n - len(vals))
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
        t = _num(times[j]) if j < len(times) else math.nan
        ok = bool(clean[j]) if j < len(clean) else False
        label = f"eval {k} @ {steps} steps, lap {j + 1}: {t:.2f} s" + ("" if ok else " (not clean)")
        out.append(_trace(label, rows, lo, end + 1, lap_s=t if ok else math.nan))
        lo = end + 1
    if lo < n:
        why = "ended" if rec.get("ended") else "time up"
        out.append(_trace(f"eval {k} @ {steps} steps, lap {len(ends) + 1} unfinished ({why})", rows, lo, n))
    return out


# ----------------------------------------------------------------------------- the run


class Run:
    """Everything the dashboard shows of one run directory, brought up to date by ``refresh``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.name = self.path.name or str(self.path)
        self._metrics = TailFile(self.path / METRICS_FILE)
        self._evals = TailFile(self.path / EVAL_LAPS_FILE)
        self._steps = TailFile(self.path / STEPS_FILE)
        self._telemetry = TailFile(self.path / TELEMETRY_FILE)
        self.config = JsonDoc(self.path / CONFIG_FILE)
        self.summary = JsonDoc(self.path / SUMMARY_FILE)
        self.meta = JsonDoc(self.path / META_FILE)
        self._track_doc = JsonDoc(self.path / TRACK_FILE)
        self.track: Track | None = None
        self.track_error = ""
        self.metrics: list[dict] = []
        self.evals: list[dict] = []
        self.laps: list[Trace] = []  # every evaluation's laps, oldest first
        self.steps = StepLog()
        self._best_npz: tuple | None = None
        self.best_npz: Trace | None = None
        self.versions = {"metrics": 0, "evals": 0, "live": 0, "track": 0, "config": 0}

    @property
    def exists(self) -> bool:
        return self.path.is_dir()

    def refresh(self) -> set[str]:
        """Read what was written since the last call; returns the parts that changed."""
        changed: set[str] = set()
        if self._track_doc.read():
            try:
                self.track = Track(self._track_doc.value) if self._track_doc.value is not None else None
                self.track_error = ""
            except ValueError as e:
                self.track, self.track_error = None, str(e)
            self.steps.fill_distance(self.track)
            self.laps = [t for k, r in enumerate(self.evals) for t in eval_laps(r, k, self.track)]
            changed |= {"track", "live", "evals"}
        if any(doc.read() for doc in (self.config, self.summary, self.meta)):
            changed.add("config")
        recs, again = self._metrics.read()
        if again:
            self.metrics = []
        if recs or again:
            self.metrics.extend(recs)
            changed.add("metrics")
        recs, again = self._evals.read()
        if again:
            self.evals, self.laps = [], []
        for r in recs:
            self.laps.extend(eval_laps(r, len(self.evals), self.track))
            self.evals.append(r)
        if recs or again or self._read_best_npz():
            changed.add("evals")
        if self._read_live():
            changed.add("live")
        for part in changed:
            self.versions[part] += 1
        return changed

    def _read_live(self) -> bool:
        steps, again_s = self._steps.read()
        frames, again_t = self._telemetry.read()
        if again_s or again_t:  # replaced or truncated: read both again from the start
            self.steps, self._steps, self._telemetry = StepLog(), TailFile(self._steps.path), TailFile(self._telemetry.path)
            steps, _ = self._steps.read()
            frames, _ = self._telemetry.read()
        start = len(self.steps)
        self.steps.add_steps(steps)
        self.steps.add_telemetry(frames)
        self.steps.fill_distance(self.track, start)
        if self.track is not None:
            self.steps.scan_laps(self.track.length)
        return bool(steps or frames or again_s or again_t)

    def _read_best_npz(self) -> bool:
        """The best lap of a run from before eval_laps.jsonl existed (best_lap.npz: plain arrays,
        read without unpickling)."""
        path = self.path / BEST_LAP_FILE
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._best_npz:
            return False
        try:
            with np.load(path, allow_pickle=False) as f:
                d = {k: f[k] for k in ("x", "y", "speed", "action", "lap_s")}
        except (OSError, ValueError, KeyError, EOFError):
            return False  # being replaced: next time
        self._best_npz = stamp
        n = len(d["x"])
        dt = float(d["lap_s"]) / max(n, 1)
        rows = {c: [math.nan] * n for c in COLUMNS}
        rows.update(x=list(d["x"]), y=list(d["y"]), speed=list(d["speed"]), t=list(np.arange(n) * dt))
        rows["w"] = rows["t"]
        for i, c in enumerate(("steer", "throttle", "brake")):
            rows[c] = list(np.asarray(d["action"])[:, i])
        if self.track is not None:
            rows["dist"] = list(self.track.project(d["x"], d["y"]))
        self.best_npz = _trace(f"best lap {float(d['lap_s']):.2f} s (best_lap.npz)", rows, 0, n,
                               lap_s=float(d["lap_s"]))
        return True

    # -- what the views ask for
    @property
    def kind(self) -> str:
        if not self.exists:
            return "not there yet"
        if self.meta.value is not None or self._telemetry.path.exists():
            return "recording"
        return "training run" if self.config.value is not None or self.metrics else "empty"

    def best_lap(self) -> Trace | None:
        """The fastest clean lap of the evaluations, else best_lap.npz, else the fastest lap driven
        in the step stream (a recording, or a game run before its first clean evaluation lap)."""
        laps = [t for t in self.laps if math.isfinite(t.lap_s)]
        if laps:
            return min(laps, key=lambda t: t.lap_s)
        if self.best_npz is not None:
            return self.best_npz
        return self.steps.fastest_lap()

    def limit_s(self) -> float:
        if self.track is not None and math.isfinite(self.track.limit_s):
            return self.track.limit_s
        s = self.summary.value if isinstance(self.summary.value, dict) else {}
        return _num(s.get("limit_s"))

    def live(self, window: int) -> Trace | None:
        """What the car is doing now: the last ``window`` steps of the newest episode of the step
        stream (the game), else the newest evaluation's drive (the surrogate)."""
        if self.steps.episodes:
            return self.steps.episode(-1, last=window)
        if self.evals:
            k = len(self.evals) - 1
            laps = eval_laps(self.evals[-1], k, self.track)
            if laps:
                cols = {c: np.concatenate([t.cols[c] for t in laps]) for c in COLUMNS}
                cols["t"] = np.arange(len(cols["x"])) * _num(self.evals[-1].get("dt"))
                return Trace(f"eval {k} @ {self.evals[-1].get('env_steps', '?')} steps", cols)
        return None

    def replay_items(self) -> list[str]:
        """Labels of what the replay slider steps through: recorded episodes, then evaluation laps."""
        return [f"{self.steps.episode(i, last=1).label.split(' (')[0]}" for i in range(len(self.steps.episodes))] + \
            [t.label for t in self.laps]

    def replay(self, i: int) -> Trace | None:
        n = len(self.steps.episodes)
        if 0 <= i < n:
            return self.steps.episode(i)
        if n <= i < n + len(self.laps):
            return self.laps[i - n]
        return None
