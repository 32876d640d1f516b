"""Telemetry recorder and reader.

A run directory holds ``telemetry.ndjson`` (append-only, one JSON record per line, each line
written with a single ``write`` so a ``kill -9`` can at worst cut the last line), ``meta.json`` and,
when known, ``track.json``. Records: ``{"k":"f","w":wall,"d":frame}`` for a valid telemetry frame,
``{"k":"a","w":wall,"d":{"seq":..,"steer":..,"throttle":..,"brake":..}}`` for an action sent, and
``{"k":"r","w":wall,"reason":...}`` for a frame that was rejected (counted, its content never kept).

:func:`read_run` hands back numpy arrays per episode, derives optional fields the game did not send
(``accel_long``, ``yaw_rate``, ``accel_lat`` from the motion; ``lap_dist``, ``lap``, ``on_track``
from the pose and the track map) and says which were derived and which are missing.

    python -m bridge.recorder RUN_DIR --sub tcp://127.0.0.1:5556 [--seconds 60]
    python -m bridge.recorder RUN_DIR --tcp-listen 7000        # newline-delimited JSON telemetry
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from bridge import protocol as P

TELEMETRY_FILE = "telemetry.ndjson"
FLOAT_FIELDS = ("t", "x", "y", "yaw", "speed", "steer", "throttle", "brake", "accel_long", "accel_lat",
                "yaw_rate", "lap_dist")
INT_FIELDS = ("seq", "episode", "lap", "ack")
BOOL_FIELDS = ("on_track", "done")


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, allow_nan=False))
    os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one


class Recorder:
    """Append-only telemetry/action recorder. Invalid frames are counted, never written as frames."""

    def __init__(self, run_dir: str | os.PathLike, *, source: str = "", track: Mapping | None = None,
                 meta: Mapping | None = None, fsync_every: int = 0):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.fsync_every = fsync_every
        self.frames = self.actions = self.rejected = 0
        self._since_sync = 0
        meta_path = self.run_dir / "meta.json"
        if not meta_path.exists():
            _write_json_atomic(meta_path, {"protocol_version": P.VERSION, "source": source,
                                           "created_unix": time.time(), **(meta or {})})
        if track is not None:
            tr = P.validate_track_reply({"type": "track", "v": P.VERSION, **{
                k: (list(map(float, v)) if k in ("x", "y", "w_left", "w_right") else v)
                for k, v in track.items() if k not in ("type", "v")}})
            _write_json_atomic(self.run_dir / "track.json", tr)
        self._fd = os.open(self.run_dir / TELEMETRY_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _append(self, rec: dict) -> None:
        os.write(self._fd, json.dumps(rec, allow_nan=False, separators=(",", ":")).encode() + b"\n")
        if self.fsync_every:
            self._since_sync += 1
            if self._since_sync >= self.fsync_every:  # only power loss needs this; kill -9 does not
                os.fsync(self._fd)
                self._since_sync = 0

    def frame(self, frame: Mapping, wall: float | None = None) -> bool:
        """Record a telemetry frame if valid; otherwise count it as rejected. Returns validity."""
        try:
            f = P.validate_telemetry(frame)
        except P.ProtocolError as e:
            self.reject(e.message, wall)
            return False
        self._append({"k": "f", "w": time.time() if wall is None else wall, "d": f})
        self.frames += 1
        return True

    def action(self, action: Mapping[str, float], seq: int | None = None, wall: float | None = None) -> None:
        a = P.validate_action(action, code=P.BAD_ACTION)
        self._append({"k": "a", "w": time.time() if wall is None else wall, "d": {"seq": seq, **a}})
        self.actions += 1

    def reject(self, reason: str, wall: float | None = None) -> None:
        self._append({"k": "r", "w": time.time() if wall is None else wall, "reason": str(reason)[:500]})
        self.rejected += 1

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------- reading

@dataclass
class Episode:
    episode: int
    fields: dict[str, np.ndarray]   # field -> (n,) array; float64, int64 or bool
    derived: set[str]               # optional fields computed here because the game did not send them
    missing: set[str]               # optional fields neither sent nor derivable (not in ``fields``)
    actions: dict[str, np.ndarray]  # seq, steer, throttle, brake, wall: actions sent during the episode
    wall: np.ndarray                # receive wall-clock time of each frame

    def __len__(self) -> int:
        return len(self.fields["t"])


@dataclass
class Recording:
    episodes: list[Episode]
    meta: dict
    track: dict | None
    rejected: int = 0          # frames rejected while recording
    truncated_lines: int = 0   # a last line cut short (kill -9 mid-write), ignored
    bad_lines: int = 0         # other unreadable lines, ignored


def _project(xs: np.ndarray, ys: np.ndarray, track: Mapping) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arc length along the centre line, signed lateral offset (left +) and the nearest point index."""
    c = np.stack([np.asarray(track["x"], float), np.asarray(track["y"], float)], axis=1)
    if track.get("closed", True):
        seg = np.roll(c, -1, axis=0) - c
    else:  # the last point starts no segment
        seg = np.diff(c, axis=0)
        c = c[:-1]
    seg_len = np.maximum(np.hypot(seg[:, 0], seg[:, 1]), 1e-12)
    cum = np.concatenate([[0.0], np.cumsum(seg_len)[:-1]])
    p = np.stack([xs, ys], axis=1)[:, None, :] - c[None, :, :]           # (n, m, 2)
    u = np.clip(np.einsum("nmk,mk->nm", p, seg) / seg_len ** 2, 0.0, 1.0)
    d = p - u[..., None] * seg[None]
    i = np.argmin(np.sum(d ** 2, axis=2), axis=1)
    rows = np.arange(len(xs))
    s = cum[i] + u[rows, i] * seg_len[i]
    lateral = (seg[i, 0] * p[rows, i, 1] - seg[i, 1] * p[rows, i, 0]) / seg_len[i]
    return s, lateral, i


def time_derivative(v: np.ndarray, t: np.ndarray) -> np.ndarray:
    """dv/dt at each frame by backward differences (NaN where the time does not advance)."""
    if len(v) < 2:
        return np.full(len(v), np.nan)
    dt = np.diff(t)
    dv = np.diff(v)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(dt > 0, dv / np.where(dt > 0, dt, 1.0), np.nan)
    # backward difference: acceleration over the step that led to each frame (first frame: next step's)
    return np.concatenate([r[:1], r])


def _episode_arrays(ep: int, frames: list[dict], walls: list[float], actions: list[dict],
                    track: dict | None) -> Episode:
    fields: dict[str, np.ndarray] = {}
    derived, missing = set(), set()
    for k in P.TELEMETRY_FIELDS:
        if k == "reason":
            continue
        vals = [f.get(k) for f in frames]
        if all(v is not None for v in vals):
            dtype = np.int64 if k in INT_FIELDS else (bool if k in BOOL_FIELDS else np.float64)
            fields[k] = np.asarray(vals, dtype=dtype)
        elif k == "lap_dist" and any(v is not None for v in vals):
            fields[k] = np.asarray([np.nan if v is None else v for v in vals], dtype=np.float64)
    reasons = [f.get("reason") for f in frames]
    if any(r is not None for r in reasons):
        fields["reason"] = np.asarray(["" if r is None else r for r in reasons])
    t = fields["t"]
    if "yaw_rate" not in fields:
        fields["yaw_rate"] = time_derivative(np.unwrap(fields["yaw"]), t)
        derived.add("yaw_rate")
    if "accel_long" not in fields:
        fields["accel_long"] = time_derivative(fields["speed"], t)
        derived.add("accel_long")
    if "accel_lat" not in fields:
        fields["accel_lat"] = fields["speed"] * fields["yaw_rate"]
        derived.add("accel_lat")
    need_track = [k for k in ("lap_dist", "lap", "on_track") if k not in fields or (
        k == "lap_dist" and np.isnan(fields[k]).any())]
    if need_track and track is not None and len(t):
        s, lateral, i = _project(fields["x"], fields["y"], track)
        length = float(np.sum(np.hypot(np.diff(np.r_[track["x"], track["x"][0]]),
                                       np.diff(np.r_[track["y"], track["y"][0]]))))
        if "lap_dist" in need_track:
            if "lap_dist" in fields:
                fields["lap_dist"] = np.where(np.isnan(fields["lap_dist"]), s, fields["lap_dist"])
            else:
                fields["lap_dist"] = s
            derived.add("lap_dist")
        if "lap" in need_track:
            jumps = np.diff(fields["lap_dist"])
            # crossing the start line forward: lap distance drops by more than half a lap
            fields["lap"] = np.concatenate([[0], np.cumsum((jumps < -0.5 * length).astype(np.int64)
                                                           - (jumps > 0.5 * length).astype(np.int64))])
            fields["lap"] = np.maximum(fields["lap"], 0)
            derived.add("lap")
        if "on_track" in need_track:
            wl = np.asarray(track["w_left"], float)[i]
            wr = np.asarray(track["w_right"], float)[i]
            fields["on_track"] = (lateral <= wl) & (-lateral <= wr)
            derived.add("on_track")
    for k in P.TELEMETRY_OPTIONAL:
        if k not in fields:
            missing.add(k)
    act = {k: np.asarray([a["d"].get(k) if a["d"].get(k) is not None else -1 for a in actions],
                         dtype=np.int64 if k == "seq" else np.float64) for k in ("seq",) + P.CONTROLS}
    act["wall"] = np.asarray([a["w"] for a in actions], dtype=np.float64)
    return Episode(ep, fields, derived, missing, act, np.asarray(walls, dtype=np.float64))


def read_run(run_dir: str | os.PathLike, track: Mapping | None = None) -> Recording:
    """Read a run directory up to its last whole line. ``track`` overrides ``track.json``."""
    run_dir = Path(run_dir)
    path = run_dir / TELEMETRY_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a run directory made by bridge.recorder?")
    meta = json.loads((run_dir / "meta.json").read_text()) if (run_dir / "meta.json").exists() else {}
    if track is None and (run_dir / "track.json").exists():
        track = json.loads((run_dir / "track.json").read_text())
    data = path.read_bytes()
    lines = data.split(b"\n")
    truncated = 0
    if lines and lines[-1] != b"":
        truncated, lines = 1, lines[:-1]  # the last write was cut short: no newline
    bad = rejected = 0
    episodes: list[Episode] = []
    cur: tuple[int, list, list, list] | None = None  # episode, frames, walls, actions
    pending_actions: list[dict] = []
    for lineno, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            rec = json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
            kind = rec["k"]
            if kind == "f":
                frame = P.validate_telemetry(rec["d"])
        except (ValueError, KeyError, TypeError, P.ProtocolError):
            bad += 1
            continue
        if kind == "r":
            rejected += 1
        elif kind == "a":
            (cur[3] if cur is not None else pending_actions).append(rec)
        elif kind == "f":
            if cur is None or frame["episode"] != cur[0]:
                if cur is not None:
                    episodes.append(_episode_arrays(*cur, track))
                cur = (frame["episode"], [], [], pending_actions)
                pending_actions = []
            cur[1].append(frame)
            cur[2].append(rec["w"])
    if cur is not None:
        episodes.append(_episode_arrays(*cur, track))
    return Recording(episodes, meta, track, rejected, truncated, bad)


# ----------------------------------------------------------------------------- command line

def record(frames: Iterable[dict], recorder: Recorder, seconds: float | None = None) -> None:
    """Record already-validated frames from any source (a client, a TCP stream) for ``seconds``."""
    end = None if seconds is None else time.monotonic() + seconds
    for f in frames:
        recorder.frame(f)
        if end is not None and time.monotonic() >= end:
            return


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bridge.recorder", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--sub", help="real-time telemetry PUB address to subscribe to (every frame recorded)")
    src.add_argument("--tcp-listen", type=int, metavar="PORT", help="accept one NDJSON telemetry stream")
    src.add_argument("--tcp-connect", metavar="HOST:PORT", help="read an NDJSON telemetry stream")
    ap.add_argument("--seconds", type=float, default=None)
    args = ap.parse_args(argv)
    rec = Recorder(args.run_dir, source=args.sub or f"tcp:{args.tcp_listen or args.tcp_connect}")
    try:
        if args.sub:
            import zmq
            ctx = zmq.Context()
            sub = ctx.socket(zmq.SUB)
            sub.linger = 0
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(args.sub)
            end = None if args.seconds is None else time.monotonic() + args.seconds
            try:
                while end is None or time.monotonic() < end:
                    if sub.poll(100, zmq.POLLIN):
                        try:
                            rec.frame(P.decode(sub.recv()))
                        except P.ProtocolError as e:
                            rec.reject(e.message)
            finally:
                sub.close(linger=0)
                ctx.term()
        else:
            from bridge.client import TcpTelemetrySource
            if args.tcp_listen:
                source = TcpTelemetrySource.listen("127.0.0.1", args.tcp_listen, timeout=3600)
            else:
                host, port = args.tcp_connect.rsplit(":", 1)
                source = TcpTelemetrySource.connect(host, int(port))
            with source:
                record(source, rec, args.seconds)
                for _ in range(source.stats.invalid):
                    rec.reject("invalid line in the TCP stream")
    except KeyboardInterrupt:
        pass
    finally:
        rec.close()
    print(f"recorded {rec.frames} frames, rejected {rec.rejected} into {args.run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
