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
from pathlib import Path

import numpy as np

from racerl_jax.dashboard.files import JsonDoc, TailFile
from racerl_jax.dashboard.track import Track
from racerl_jax.dashboard.traces import COLUMNS, StepLog, Trace, num, make_trace, eval_laps

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
TRACKS_DIR = "tracks"  # a multi-track run's per-track evaluations: tracks/<name>/, each a run dir


def track_folders(run_dir: str | os.PathLike) -> list[Path]:
    """The per-track folders of a multi-track run (``--tracks``/``--eval-tracks``), sorted; none for
    any other run. They appear with the run's first evaluation."""
    try:
        return sorted(p for p in (Path(run_dir) / TRACKS_DIR).iterdir() if p.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


# ----------------------------------------------------------------------------- the run


class Run:
    """Everything the dashboard shows of one run directory, brought up to date by ``refresh``."""

    def __init__(self, path: str | os.PathLike, parent: "Run | None" = None) -> None:
        self.path = Path(path)
        self.name = self.path.name or str(self.path)
        # A multi-track run's folder for one track: its laps on that track, under its run's name.
        self.parent = parent
        if parent is not None:
            self.name = f"{parent.name} / {TRACKS_DIR}/{self.path.name}"
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
        self.best_npz = make_trace(f"best lap {float(d['lap_s']):.2f} s (best_lap.npz)", rows, 0, n,
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
        return num(s.get("limit_s"))

    def live(self, window: int) -> Trace | None:
        """What the car is doing now: the last ``window`` steps of the newest episode of the step
        stream (the game), else the newest evaluation's drive (the surrogate), else the best lap of
        a run from before eval_laps.jsonl (best_lap.npz)."""
        if self.steps.episodes:
            return self.steps.episode(-1, last=window)
        if self.evals:
            k = len(self.evals) - 1
            laps = eval_laps(self.evals[-1], k, self.track)
            if laps:
                cols = {c: np.concatenate([t.cols[c] for t in laps]) for c in COLUMNS}
                cols["t"] = np.arange(len(cols["x"])) * num(self.evals[-1].get("dt"))
                return Trace(f"eval {k} @ {self.evals[-1].get('env_steps', '?')} steps", cols)
        return self.best_npz

    def _extra_items(self) -> list[Trace]:
        """What a run without evaluation laps still has to replay: its best_lap.npz."""
        return [self.best_npz] if self.best_npz is not None and not self.laps else []

    def replay_items(self) -> list[str]:
        """Labels of what the replay slider steps through: recorded episodes, then evaluation laps
        (or, from an older run, its best lap)."""
        return [f"{self.steps.episode(i, last=1).label.split(' (')[0]}" for i in range(len(self.steps.episodes))] + \
            [t.label for t in self.laps + self._extra_items()]

    def replay(self, i: int) -> Trace | None:
        n = len(self.steps.episodes)
        if 0 <= i < n:
            return self.steps.episode(i)
        laps = self.laps + self._extra_items()
        if n <= i < n + len(laps):
            return laps[i - n]
        return None
