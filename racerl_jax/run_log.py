"""What training and fine-tuning write into the run directory for the live dashboard
(``python -m racerl_jax.dashboard``), beside ``metrics.jsonl``:

- ``track.json``: the track's centre line and widths, in the shape of the bridge recorder's
  ``track.json`` (a protocol ``track`` reply), plus the reference line (``ref_x``, ``ref_y``), its
  speed profile over the centre line's arc length (``s``, ``ref_speed``) and the minimum-lap-time
  reference (``limit_s``). Written once per run, atomically.
- ``eval_laps.jsonl``: one line per evaluation: the deterministic policy's drive from the start line
  (pose, speed, the controls sent, where laps were completed and their times).
- ``steps.jsonl``: one line per env step of the host loop (the real game): the policy's action
  (in the env's units), the action the game was sent after the safety layer, the critics' value of
  the policy's action, the reward, the pose when the env has one, the safety layer's interventions
  and why an episode ended.

Append-only and kill-safe: each record is one ``os.write`` of a whole line on an ``O_APPEND``
descriptor, so a ``kill -9`` can at worst cut the last line, which readers skip; a writer that
opens a file whose last line was cut starts on a fresh line, so only the cut record is lost.
Nothing here reads these files: ``racerl_jax.dashboard.data`` does, without JAX.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

TRACK_FILE = "track.json"
EVAL_LAPS_FILE = "eval_laps.jsonl"
STEPS_FILE = "steps.jsonl"
CONTROLS = ("steer", "throttle", "brake")
# Millimetres and thousandths are finer than anything the dashboard draws, and keep an evaluation's
# line (thousands of steps) a few tens of kB.
DECIMALS = 3


class JsonLines:
    """An append-only JSON-lines file, one ``os.write`` per record."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        size = os.fstat(self._fd).st_size
        # A run killed mid-write left a last line without its newline: end it, or the next record
        # would be glued to it and both would be unreadable.
        if size and os.pread(self._fd, 1, size - 1) != b"\n":
            os.write(self._fd, b"\n")

    def append(self, record: Mapping[str, Any]) -> None:
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        os.write(self._fd, json.dumps(record, allow_nan=False, separators=(",", ":")).encode() + b"\n")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "JsonLines":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """A reader sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, allow_nan=False))
    os.replace(tmp, path)


def number(v: Any) -> float | None:
    """A finite float rounded for the log, or None (JSON has no NaN)."""
    v = float(v)
    return round(v, DECIMALS) if math.isfinite(v) else None


def numbers(a: Any) -> list:
    """An array as a JSON list of rounded floats, None where it is not finite."""
    if len(a) <= 8:  # an action: plain Python is several times faster than numpy's calls here
        return [number(v) for v in a]
    a = np.asarray(a, np.float64)
    out = np.round(a, DECIMALS).tolist()
    if not np.all(np.isfinite(a)):
        out = [v if math.isfinite(v) else None for v in out]
    return out


# ----------------------------------------------------------------------------- the track


def track_record(track: Any, name: str, limit_s: float) -> dict[str, Any]:
    """``track.json``'s content from a ``surrogate.track.Track``."""
    from surrogate.track import reference_xy

    ref_x, ref_y = reference_xy(track)
    return {"name": name, "closed": True, "x": numbers(track.x), "y": numbers(track.y),
            "w_left": numbers(track.w_left), "w_right": numbers(track.w_right), "ref_x": numbers(ref_x),
            "ref_y": numbers(ref_y), "s": numbers(track.s), "ref_speed": numbers(track.ref_speed),
            "length": number(track.length), "limit_s": number(limit_s)}


def write_track(run_dir: str | os.PathLike, track: Any, name: str, limit_s: float) -> Path:
    path = Path(run_dir) / TRACK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, track_record(track, name, limit_s))
    return path


# ----------------------------------------------------------------------------- evaluation laps


def eval_lap_record(traj: Mapping[str, np.ndarray], env_steps: int, wall_s: float, dt: float,
                    lap_s: float) -> dict[str, Any]:
    """One evaluation's drive (a ``surrogate.rollout`` trajectory) up to the end of its first episode,
    which is what its lap times are scored on."""
    done_at = np.flatnonzero(np.asarray(traj["done"], bool))
    end = int(done_at[0]) + 1 if done_at.size else len(traj["x"])
    action = np.asarray(traj["action"], np.float64)[:end]
    completed = np.flatnonzero(np.asarray(traj["lap_completed"], bool)[:end])
    rec = {"env_steps": int(env_steps), "wall_s": number(wall_s), "dt": float(dt), "lap_s": number(lap_s),
           "ended": bool(done_at.size), "x": numbers(traj["x"][:end]), "y": numbers(traj["y"][:end]),
           "speed": numbers(traj["speed"][:end]),
           **{k: numbers(action[:, i]) for i, k in enumerate(CONTROLS)},
           "lap_end": completed.tolist(), "lap_time": numbers(np.asarray(traj["lap_time"])[completed]),
           "lap_clean": np.asarray(traj["lap_clean"], bool)[completed].tolist()}
    return rec


class EvalLapLog:
    """``eval_laps.jsonl`` (and ``track.json`` when given the track) for ``LapEvaluator``."""

    def __init__(self, run_dir: str | os.PathLike, dt: float, track: Any = None, track_name: str = "",
                 limit_s: float = float("nan")) -> None:
        self.run_dir = Path(run_dir)
        self.dt = dt
        if track is not None:
            write_track(self.run_dir, track, track_name, limit_s)
        self._file = JsonLines(self.run_dir / EVAL_LAPS_FILE)

    def write(self, traj: Mapping[str, np.ndarray], env_steps: int, wall_s: float, lap_s: float) -> None:
        self._file.append(eval_lap_record(traj, env_steps, wall_s, self.dt, lap_s))

    def close(self) -> None:
        self._file.close()


# ----------------------------------------------------------------------------- host-loop steps


def _last_episode(path: Path, tail: int = 4096) -> int:
    """The ``ep`` of the last whole record of a steps file (-1 when there is none)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - tail))
        for line in reversed(f.read().split(b"\n")):
            try:
                ep = json.loads(line).get("ep")
            except (ValueError, AttributeError):
                continue
            if isinstance(ep, int):
                return ep
    return -1


class StepLog:
    """``steps.jsonl``: one record per env step of the host loop. Fields: ``w`` (wall clock, s),
    ``ep`` (episode number within this log), ``policy`` (the policy's action in the env's units),
    ``applied`` (steer, throttle, brake as sent to the game; the env's action where the env does not
    say), ``value`` (the critics' mean value of the policy's action; null during the random phase),
    ``r`` (reward) and, when known, ``x``, ``y``, ``speed``, ``t`` (game time), ``safety`` (the safety
    layer's reasons) and ``end`` (why the episode ended)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self._file = JsonLines(Path(run_dir) / STEPS_FILE)
        # A resumed run goes on from the last episode number in the file: its first episode is
        # not the one the killed run was driving.
        self.episode = _last_episode(self._file.path) + 1
        self._ended = False

    def new_episode(self) -> None:
        """An episode was cut short from outside (an evaluation drove the env in between)."""
        self.episode += 1
        self._ended = False

    def write(self, policy: np.ndarray, applied: Any, value: float | None, reward: float, done: bool,
              info: Mapping[str, Any] | None = None, frame: Mapping[str, Any] | None = None) -> None:
        if self._ended:
            self.new_episode()
        rec: dict[str, Any] = {"w": round(time.time(), 3), "ep": self.episode, "policy": numbers(policy),
                               "applied": numbers(applied), "value": None if value is None else number(value),
                               "r": number(reward)}
        if frame is not None:
            for k in ("t", "x", "y", "speed"):
                if frame.get(k) is not None:
                    rec[k] = number(frame[k])
        elif info is not None:
            for k in ("x", "y", "speed"):
                if k in info:
                    rec[k] = number(info[k])
        if info is not None:
            if info.get("safety"):
                rec["safety"] = [str(s) for s in info["safety"]]
            if info.get("end_reason"):
                rec["end"] = str(info["end_reason"])
        if done:
            rec.setdefault("end", "done")
            self._ended = True
        self._file.append(rec)

    def close(self) -> None:
        self._file.close()
