"""Run directories written the way training and the recorder write them, for the dashboard's tests
and its load benchmark: a car going round an oval (the bundled ``oval`` track's centre line) at a
steady speed. The writers are the real ones (``racerl_jax.run_log``, ``bridge.recorder``), so what
the dashboard reads here is what it reads from a real run."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from bridge.recorder import Recorder
from racerl_jax import run_log
from surrogate.track_io import load_track

DT = 0.02  # 50 Hz


class Oval:
    """Poses along the oval's centre line."""

    def __init__(self) -> None:
        d = load_track("oval")
        self.data = d
        seg = np.hypot(np.diff(d.x, append=d.x[0]), np.diff(d.y, append=d.y[0]))
        self.s = np.concatenate([[0.0], np.cumsum(seg)[:-1]])
        self.length = float(seg.sum())

    def pose(self, dist: float) -> tuple[float, float, float]:
        s = dist % self.length
        x = float(np.interp(s, self.s, self.data.x, period=self.length))
        y = float(np.interp(s, self.s, self.data.y, period=self.length))
        ahead = (s + 1.0) % self.length
        yaw = math.atan2(float(np.interp(ahead, self.s, self.data.y, period=self.length)) - y,
                         float(np.interp(ahead, self.s, self.data.x, period=self.length)) - x)
        return x, y, yaw

    def track_doc(self, limit_s: float = 35.0) -> dict:
        """``track.json`` as ``run_log.write_track`` writes it, with the reference line 1 m left."""
        d = self.data
        heading = np.arctan2(np.roll(d.y, -1) - np.roll(d.y, 1), np.roll(d.x, -1) - np.roll(d.x, 1))
        return {"name": "oval", "closed": True, "x": run_log.numbers(d.x), "y": run_log.numbers(d.y),
                "w_left": run_log.numbers(d.w_left), "w_right": run_log.numbers(d.w_right),
                "ref_x": run_log.numbers(d.x - np.sin(heading)), "ref_y": run_log.numbers(d.y + np.cos(heading)),
                "s": run_log.numbers(self.s), "ref_speed": run_log.numbers(np.full(len(d.x), 40.0)),
                "length": run_log.number(self.length), "limit_s": limit_s}


def frame(oval: Oval, seq: int, episode: int = 0, speed: float = 20.0) -> dict:
    """The telemetry frame of step ``seq`` at ``speed`` m/s from the start line."""
    x, y, yaw = oval.pose(speed * seq * DT)
    return {"type": "telemetry", "v": 1, "seq": seq, "episode": episode, "t": seq * DT, "x": x, "y": y, "yaw": yaw, "speed": speed,
            "steer": 0.1 * math.sin(seq / 25.0), "throttle": 0.7, "brake": 0.0}


def recording(run_dir: str | Path, frames: int, oval: Oval | None = None) -> Recorder:
    """A bridge.recorder run dir with the oval's track and ``frames`` frames; returns the open
    recorder so a test can go on appending."""
    oval = oval or Oval()
    rec = Recorder(run_dir, source="synthetic", track={"name": "oval", "closed": True, "x": oval.data.x.tolist(),
                                                         "y": oval.data.y.tolist(), "w_left": oval.data.w_left.tolist(),
                                                         "w_right": oval.data.w_right.tolist()})
    for i in range(frames):
        rec.frame(frame(oval, i))
    return rec


def metrics_row(k: int) -> dict:
    """A metrics.jsonl row as train_loop.drive logs it."""
    steps = 3200 * (k + 1)
    return {"step": steps, "env_steps": float(steps), "updates": 1600.0 * (k + 1), "wall_s": 4.0 * (k + 1),
            "env_steps_per_s": 800.0, "updates_per_s": 400.0, "lr_scale": 1.0 - 0.01 * k,
            "critic_loss": 1.0 / (k + 1), "actor_loss": -2.0 - k, "alpha": 0.5 / (k + 1), "entropy": 1.0,
            "episode_return": float(k), "eval_lap_s": 40.0 - k, "eval_best_lap_s": 40.0 - k,
            "eval_clean_lap_rate": 0.5, "eval_return": 10.0 + k}


def training_run(run_dir: str | Path, oval: Oval | None = None, evals: int = 2, steps: int = 200,
                 learning_rate: float = 3e-4) -> tuple[run_log.StepLog, Path]:
    """A training run dir: config.json, metrics.jsonl, track.json, eval_laps.jsonl (evaluations
    with one clean lap each) and ``steps`` host-loop steps; returns the open step log."""
    oval = oval or Oval()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps({"seed": 0, "crossq": {"learning_rate": learning_rate},
                                                     "command": {"track": "oval"}}))
    with open(run_dir / "metrics.jsonl", "a") as f:
        for k in range(3):
            f.write(json.dumps(metrics_row(k)) + "\n")
    run_log.write_json_atomic(run_dir / run_log.TRACK_FILE, oval.track_doc())
    lap_log = run_log.EvalLapLog(run_dir, dt=0.05)
    for k in range(evals):
        speed = 30.0 + 2 * k
        n = int(oval.length / speed / 0.05) + 20  # a lap and a bit
        xy = np.array([oval.pose(speed * i * 0.05)[:2] for i in range(n)])
        lap = np.zeros(n, bool)
        lap_end = int(oval.length / speed / 0.05)
        lap[lap_end] = True
        traj = dict(x=xy[:, 0], y=xy[:, 1], speed=np.full(n, speed), action=np.tile([[0.0, 0.9, 0.0]], (n, 1)),
                    lap_completed=lap, lap_time=np.where(lap, lap_end * 0.05, np.nan), lap_clean=lap,
                    done=np.zeros(n, bool))
        lap_log.write(traj, 10_000 * (k + 1), 30.0 * (k + 1), lap_end * 0.05)
    lap_log.close()
    log = run_log.StepLog(run_dir)
    for i in range(steps):
        step(log, oval, i)
    return log, run_dir


def step(log: run_log.StepLog, oval: Oval, i: int, speed: float = 20.0) -> None:
    """One host-loop step record: the policy asks for more steering than the safety layer lets through."""
    f = frame(oval, i, speed=speed)
    policy = np.array([f["steer"] * 2.0, 0.8])
    applied = np.array([f["steer"], 0.8, 0.0])
    info = {"safety": ("rate_limited",) if i % 50 == 0 else (), "end_reason": None}
    log.write(policy, applied, 5.0 + 0.01 * i, 0.1, False, info, f)


def wait_for(pred, timeout: float = 10.0, every: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(every)
    return bool(pred())
