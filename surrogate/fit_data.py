"""Recorded telemetry made ready for fitting the surrogate: clean segments, rollout windows and the
track, with every frame that is left out counted by the reason.

Input: the episodes of one or more recordings as ``bridge.recorder.read_run`` returns them (objects
with a ``fields`` dict of per-frame numpy arrays; ``surrogate`` never imports ``bridge``, so the
command reads the runs and hands them over). Nothing here knows which game made them.

Conventions. Frame ``j`` of an episode holds the pose and motion the game reported and the controls
it applied that frame, so the controls the car drove under between frames ``j`` and ``j + 1`` are
those of frame ``j + 1``. A window starting at frame ``i`` rolls the model from that frame's state
``horizon`` steps ahead under those controls (teacher forcing on the actions, open loop on the
state) and compares it with frames ``i + 1 .. i + horizon``.

What is dropped, never guessed (counted in ``DataStats.dropped``):
- frames whose ``seq`` repeats an earlier one (duplicates) or goes backwards (out of order);
- frames with a value that is not finite (a derived yaw rate where the time did not advance);
- a gap (the game time jumps by more than ``GAP_FACTOR`` control periods, or goes backwards) splits
  the episode into segments: no window spans it;
- windows with any frame off the track (the surrogate models the car on the track surface; grass
  and gravel are other physics) or the game's ``done`` frame.
The track is the one the game served (``track.json``), else ``--track FILE``, else built from the
recorded laps (``track_from_laps``).
Episodes are split into training and validation as wholes, never frame by frame.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from surrogate.observation import SENSOR_NOISE_FIELDS, SENSOR_NOISE_SPEEDS
from surrogate.track_io import TrackData, TrackFileError, load_track, validate_track

GAP_FACTOR = 1.5  # a step longer than this many control periods is a gap
MIN_TRAIN_WINDOWS = 20
MIN_VAL_WINDOWS = 5
STATE_FIELDS = ("x", "y", "yaw", "speed", "yaw_rate", "accel_long", "accel_lat")


class FitDataError(ValueError):
    """Recordings that cannot be fitted: says what is wrong, where, and what to record instead."""


@dataclasses.dataclass
class Segment:
    """Contiguous valid frames of one episode (arrays over frames, ``n`` of them)."""

    source: str  # recording run dir and episode, for messages and plots
    episode_key: tuple[int, int]  # (recording index, episode number): the unit of the train/val split
    x: np.ndarray
    y: np.ndarray
    yaw: np.ndarray
    speed: np.ndarray
    yaw_rate: np.ndarray
    accel_long: np.ndarray
    accel_lat: np.ndarray
    controls: np.ndarray  # (n, 3) steer, throttle, brake the game applied at each frame
    dt: np.ndarray  # (n - 1,) game seconds between frames
    usable: np.ndarray  # (n,) on track and not the game's done frame

    @property
    def n(self) -> int:
        return int(self.x.shape[0])


@dataclasses.dataclass
class DataStats:
    recordings: int = 0
    episodes: int = 0
    frames: int = 0
    segments: int = 0
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)

    def drop(self, reason: str, n: int = 1) -> None:
        if n:
            self.dropped[reason] = self.dropped.get(reason, 0) + int(n)


@dataclasses.dataclass
class Windows:
    """Rollout windows as arrays (leading axis = window), ready for the jitted loss."""

    init: np.ndarray  # (w, 8) x, y, yaw, vx, vy, yaw_rate, ax, ay at the start frame
    # (w, max_delay + 1 + horizon, 3): the controls that drove the steps from max_delay + 1 steps
    # before the start frame on; with an input delay d, step k (0-based from the start frame) feels
    # controls[max_delay + 1 - d + k], and the car came in under controls[max_delay - d]
    controls: np.ndarray
    dt: np.ndarray  # (w, horizon)
    target: np.ndarray  # (w, horizon, 5) x, y, yaw, speed, yaw_rate of the frames after the start
    source: np.ndarray  # (w,) index of the segment
    start: np.ndarray  # (w,) frame index in the segment

    def __len__(self) -> int:
        return int(self.init.shape[0])

    def take(self, idx) -> "Windows":
        return Windows(*(getattr(self, f.name)[idx] for f in dataclasses.fields(self)))


@dataclasses.dataclass
class FitData:
    train: Windows
    val: Windows
    segments: list[Segment]
    val_segments: list[int]  # indices into segments held out for validation
    dt: float  # the frame period the fit runs at (median game time between frames), s
    horizon: int  # steps of the longest window
    max_delay: int
    track: TrackData
    stats: DataStats
    control_period: float  # the trainer's control period the recordings were made at, s
    game_dt: float | None  # the game's tick (its hello), s

    def envelope(self) -> dict[str, tuple[float, float]]:
        """Range of what the training data covers (1st to 99th percentile)."""
        out = {}
        for name in ("speed", "accel_long", "accel_lat", "yaw_rate"):
            v = np.concatenate([getattr(s, name) for s in self.segments])
            out[name] = (float(np.percentile(v, 1)), float(np.percentile(v, 99)))
        steer = np.concatenate([s.controls[:, 0] for s in self.segments])
        out["steer"] = (float(steer.min()), float(steer.max()))
        return out


SENSOR_NOISE_BAND = 10.0  # m/s: the sensor noise is estimated per speed band this wide
SENSOR_NOISE_MIN_FRAMES = 50  # frames a band needs for its estimate


def sensor_noise(segments: Sequence["Segment"], names: Sequence[str] = SENSOR_NOISE_FIELDS) -> dict[str, list] | None:
    """The white noise on each telemetry channel by speed, as ``surrogate.observation.sensor_noise_table``
    reads it (``{"speed_mps": band centres, channel: standard deviations}``), or None without data.

    Each usable frame's distance from the centred mean of the five frames around it (within a
    segment): for white noise of standard deviation s that residual has 0.8 s^2 of variance, and a
    smooth signal leaves almost none. The spread per 10 m/s band of speed is the median absolute
    deviation (times 1.4826), so the few frames where the motion itself changes abruptly (a brake
    applied, a kerb) do not count as noise. Bands with fewer than 50 frames are left out (the env
    interpolates across them, and holds the end values beyond)."""
    res = {name: [] for name in names}
    speeds = []
    for seg in segments:
        if seg.n < 5:
            continue
        ok = np.convolve(seg.usable.astype(np.float64), np.ones(5), mode="valid") == 5.0
        speeds.append(seg.speed[2:-2][ok])
        for name in names:
            v = np.asarray(getattr(seg, name), np.float64)
            res[name].append((v[2:-2] - np.convolve(v, np.ones(5) / 5.0, mode="valid"))[ok])
    if not speeds:
        return None
    band = np.floor(np.concatenate(speeds) / SENSOR_NOISE_BAND).astype(int)
    res = {name: np.concatenate(r) for name, r in res.items()}
    out: dict[str, list] = {SENSOR_NOISE_SPEEDS: [], **{name: [] for name in names}}
    for b in np.unique(band):
        k = band == b
        if k.sum() < SENSOR_NOISE_MIN_FRAMES:
            continue
        out[SENSOR_NOISE_SPEEDS].append(float((b + 0.5) * SENSOR_NOISE_BAND))
        for name in names:
            r = res[name][k]
            out[name].append(1.4826 * float(np.median(np.abs(r - np.median(r)))) / math.sqrt(0.8))
    return out if out[SENSOR_NOISE_SPEEDS] else None


# ----------------------------------------------------------------------------- track


def track_from_reply(reply: Mapping, source: str) -> TrackData:
    """TrackData from a game's ``track`` reply (``track.json`` of a recording)."""
    try:
        arrays = {k: np.asarray(reply[k], np.float64) for k in ("x", "y", "w_right", "w_left")}
    except (KeyError, TypeError, ValueError) as e:
        raise FitDataError(f"{source}: the track is not a protocol-v1 track reply ({e})") from None
    if not reply.get("closed", True):
        raise FitDataError(f"{source}: the game's track is not closed; the surrogate needs a circuit (give --track FILE)")
    try:
        return validate_track(TrackData(str(reply.get("name") or "game"), **arrays), source=source)
    except TrackFileError as e:
        raise FitDataError(str(e)) from None


LAP_GATE_M = 25.0  # a lap closes where the car crosses the start gate within this distance of its centre
LAP_MIN_M = 100.0  # shorter loops are not laps
CAR_HALF_WIDTH_M = 0.9  # surrogate.env.EnvConfig.car_half_width: a car off the track is this far past the edge
STATION_M = 2.0  # spacing of the centre line built from laps


def _laps(x: np.ndarray, y: np.ndarray, gate: tuple[float, float, float]) -> list[np.ndarray]:
    """Frame index ranges of the complete laps in one episode: between two forward crossings of the
    gate (a line through (gx, gy) across the heading gh, LAP_GATE_M either side of its centre)."""
    gx, gy, gh = gate
    along = (x - gx) * math.cos(gh) + (y - gy) * math.sin(gh)
    across = -(x - gx) * math.sin(gh) + (y - gy) * math.cos(gh)
    cross = np.flatnonzero((along[:-1] < 0.0) & (along[1:] >= 0.0) & (np.abs(across[1:]) < LAP_GATE_M)) + 1
    out = []
    for a, b in zip(cross[:-1], cross[1:]):
        length = float(np.sum(np.hypot(np.diff(x[a:b + 1]), np.diff(y[a:b + 1]))))
        if length >= LAP_MIN_M:
            out.append(np.arange(a, b + 1))
    return out


def _resample_closed(x: np.ndarray, y: np.ndarray, n: int) -> np.ndarray:
    """(n, 2) points at equal arc-length fractions of a lap (first point = the gate crossing)."""
    d = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
    u = np.arange(n) / n * d[-1]
    return np.stack([np.interp(u, d, x), np.interp(u, d, y)], axis=1)


def _circular_smooth(a: np.ndarray, k: int) -> np.ndarray:
    if k <= 1:
        return a
    pad = np.concatenate([a[-k:], a, a[:k]])
    kernel = np.ones(k) / k
    return np.convolve(pad, kernel, "same")[k:-k]


def track_from_laps(episodes: Sequence[Mapping[str, np.ndarray]], name: str = "laps") -> TrackData:
    """A centre line and widths built from the driven laps, for a game that serves no track.

    The start gate is where the first moving frame was, across its heading. Every complete lap
    (gate to gate, forwards) is resampled by arc-length fraction and the laps averaged: the centre
    line is the mean driven line (the probe recorder drives the middle of the road). Each side's
    width is the widest the laps went that side plus the car's half-width; where the game said the
    car was off the track, the edge is pulled in to where the car was (less its half-width).
    Refused with the fix when the recordings hold no complete lap."""
    gate = None
    laps = []
    for f in episodes:
        x, y = np.asarray(f["x"], float), np.asarray(f["y"], float)
        if gate is None:
            moving = np.flatnonzero(np.asarray(f["speed"], float) > 1.0)
            if moving.size < 2:
                continue
            i = int(moving[0])
            j = min(i + 5, len(x) - 1)
            gate = (float(x[i]), float(y[i]), math.atan2(y[j] - y[i], x[j] - x[i]) if j > i else float(f["yaw"][i]))
        on = np.asarray(f["on_track"], bool) if "on_track" in f else np.ones(len(x), bool)
        laps += [(x[k], y[k], on[k]) for k in _laps(x, y, gate)]
    if not laps:
        raise FitDataError(
            "no recording holds the game's track (track.json), no --track FILE was given, and the recordings hold "
            "no complete lap to build one from: give the game's centre line as a TUM-format CSV with --track, or "
            "record at least one whole lap (record_telemetry.py --minutes 10)"
        )
    length = float(np.median([np.sum(np.hypot(np.diff(lx), np.diff(ly))) for lx, ly, _ in laps]))
    n = max(int(length / STATION_M), 16)
    lines = np.stack([_resample_closed(lx, ly, n) for lx, ly, _ in laps])
    centre = np.stack([_circular_smooth(lines.mean(axis=0)[:, k], 5) for k in range(2)], axis=1)
    tangent = np.roll(centre, -1, axis=0) - np.roll(centre, 1, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)  # left of the driving direction
    left = np.full(n, 0.0)
    right = np.full(n, 0.0)
    edge_l = np.full(n, np.inf)
    edge_r = np.full(n, np.inf)
    for lx, ly, on in laps:
        p = np.stack([lx, ly], axis=1)
        nearest = np.argmin(((p[:, None, :] - centre[None, :, :]) ** 2).sum(-1), axis=1)
        offset = np.einsum("ij,ij->i", p - centre[nearest], normal[nearest])
        np.maximum.at(left, nearest, np.where(on, offset, 0.0))
        np.maximum.at(right, nearest, np.where(on, -offset, 0.0))
        off = ~on
        np.minimum.at(edge_l, nearest[off & (offset > 0)], offset[off & (offset > 0)] - CAR_HALF_WIDTH_M)
        np.minimum.at(edge_r, nearest[off & (offset < 0)], -offset[off & (offset < 0)] - CAR_HALF_WIDTH_M)
    k = max(int(20.0 / STATION_M), 1)  # widths vary over tens of metres, not from one frame to the next
    w_left = np.minimum(_circular_smooth(left, k) + CAR_HALF_WIDTH_M, edge_l)
    w_right = np.minimum(_circular_smooth(right, k) + CAR_HALF_WIDTH_M, edge_r)
    w_left, w_right = np.maximum(w_left, CAR_HALF_WIDTH_M), np.maximum(w_right, CAR_HALF_WIDTH_M)
    try:
        return validate_track(TrackData(name, centre[:, 0], centre[:, 1], w_right, w_left),
                              source=f"the track built from {len(laps)} recorded lap(s)")
    except TrackFileError as e:
        raise FitDataError(f"{e}; give the game's centre line with --track") from None


def pick_track(replies: Sequence[tuple[str, Mapping | None]], track_file: str | None,
               episodes: Sequence[Mapping[str, np.ndarray]] = ()) -> TrackData:
    """The track to fit on: ``track_file`` if given, else the one every recording's game served,
    else one built from the recorded laps (``track_from_laps``). Recordings of different tracks
    are refused: a fit is of one car on one track."""
    if track_file:
        try:
            return load_track(track_file)
        except TrackFileError as e:
            raise FitDataError(str(e)) from None
    served = [(src, r) for src, r in replies if r is not None]
    if not served:
        return track_from_laps(episodes)
    first_src, first = served[0]
    track = track_from_reply(first, f"{first_src}/track.json")
    for src, r in served[1:]:
        other = track_from_reply(r, f"{src}/track.json")
        if other.n != track.n or not (np.allclose(other.x, track.x, atol=0.01) and np.allclose(other.y, track.y, atol=0.01)):
            raise FitDataError(
                f"{src} was recorded on another track than {first_src} (their track.json differ): fit recordings of "
                "one track at a time, or give --track FILE if the game serves a different line for the same track"
            )
    return track


# ----------------------------------------------------------------------------- segments


def _period(recording_dt: Iterable[tuple[str, float]]) -> float:
    pairs = list(recording_dt)
    ref_src, ref = pairs[0]
    for src, dt in pairs[1:]:
        if abs(dt - ref) > 0.02 * ref:
            raise FitDataError(
                f"{src} was recorded every {dt:.4f} s of game time and {ref_src} every {ref:.4f} s: fit recordings made "
                "at one control period (record_telemetry.py --dt) at a time"
            )
    return ref


def episode_segments(fields: Mapping[str, np.ndarray], dt: float, source: str, key: tuple[int, int],
                     stats: DataStats) -> list[Segment]:
    """Split one recorded episode into clean segments (see the module docstring for what is dropped)."""
    missing = [k for k in ("t", "seq", *STATE_FIELDS, "steer", "throttle", "brake") if k not in fields]
    if missing:
        raise FitDataError(f"{source}: frames lack {missing}, which the fit needs (protocol v1 requires the pose, "
                           "speed and controls; the recorder derives the motion fields)")
    n = len(fields["t"])
    keep = np.ones(n, bool)
    seq = np.asarray(fields["seq"])
    # duplicates and out-of-order frames: keep a frame only if its seq beats every earlier kept one
    best = -np.inf
    for j in range(n):
        if seq[j] <= best:
            keep[j] = False
            stats.drop("duplicate seq" if seq[j] == best or seq[j] in seq[:j] else "out-of-order seq")
        else:
            best = seq[j]
    values = {k: np.asarray(fields[k], np.float64) for k in ("t", *STATE_FIELDS, "steer", "throttle", "brake")}
    finite = np.all(np.stack([np.isfinite(v) for v in values.values()]), axis=0)
    stats.drop("value not finite", int(np.sum(keep & ~finite)))
    keep &= finite
    idx = np.flatnonzero(keep)
    if idx.size < 2:
        return []
    t = values["t"][idx]
    step = np.diff(t)
    breaks = np.flatnonzero((step > GAP_FACTOR * dt) | (step <= 0.5 * dt / GAP_FACTOR))
    stats.drop("gap (segments split)", len(breaks))
    on = np.asarray(fields["on_track"], bool)[idx] if "on_track" in fields else np.ones(idx.size, bool)
    done = np.asarray(fields["done"], bool)[idx] if "done" in fields else np.zeros(idx.size, bool)
    segs = []
    for a, b in zip(np.r_[0, breaks + 1], np.r_[breaks + 1, idx.size]):
        if b - a < 2:
            continue
        j = idx[a:b]
        segs.append(Segment(
            source=f"{source}", episode_key=key,
            **{k: values[k][j] for k in STATE_FIELDS},
            controls=np.stack([values["steer"][j], values["throttle"][j], values["brake"][j]], axis=1),
            dt=np.diff(values["t"][j]), usable=on[a:b] & ~done[a:b],
        ))
    return segs


def frame_period(fields: Mapping[str, np.ndarray]) -> float | None:
    t = np.asarray(fields.get("t", []), np.float64)
    step = np.diff(t[np.isfinite(t)])
    step = step[step > 0]
    return float(np.median(step)) if step.size else None


# ----------------------------------------------------------------------------- windows


def _sideslip(seg: Segment, i: int) -> float:
    """Sideslip angle at frame i from the direction the car moved between frames i - 1 and i."""
    if i < 1 or seg.speed[i] < 1.0:
        return 0.0
    course = math.atan2(seg.y[i] - seg.y[i - 1], seg.x[i] - seg.x[i - 1])
    heading = seg.yaw[i] - 0.5 * seg.dt[i - 1] * seg.yaw_rate[i]  # heading at the middle of that step
    beta = math.remainder(course - heading, 2 * math.pi)
    return float(np.clip(beta, -0.6, 0.6))


def make_windows(segments: Sequence[Segment], which: Sequence[int], horizon: int, max_delay: int,
                 stride: int = 1) -> Windows:
    """Every ``stride``-th window of ``horizon`` steps inside the usable frames of the given segments."""
    init, ctrl, dts, target, src, start = [], [], [], [], [], []
    for si in which:
        seg = segments[si]
        # controls the car drove under between frame j and j + 1: frame j + 1's; before the segment,
        # the first frame's (a neutral reset frame, or what the game applied then)
        applied = np.concatenate([np.repeat(seg.controls[:1], max_delay + 1, axis=0), seg.controls[1:]])
        bad = np.concatenate([[0], np.cumsum(~seg.usable)])  # prefix count of unusable frames
        for i in range(1, seg.n - horizon, stride):
            if bad[i + horizon + 1] - bad[i] > 0:
                continue
            beta = _sideslip(seg, i)
            v = seg.speed[i]
            # applied[max_delay + 1 + j] drove step j (frame j to j + 1); the window keeps steps
            # i - max_delay - 1 .. i + horizon - 1
            window_ctrl = applied[i: i + max_delay + horizon + 1]
            init.append([seg.x[i], seg.y[i], seg.yaw[i], v * math.cos(beta), v * math.sin(beta), seg.yaw_rate[i],
                         seg.accel_long[i], seg.accel_lat[i]])
            ctrl.append(window_ctrl)
            dts.append(seg.dt[i: i + horizon])
            target.append(np.stack([seg.x, seg.y, seg.yaw, seg.speed, seg.yaw_rate], axis=1)[i + 1: i + horizon + 1])
            src.append(si)
            start.append(i)
    if not init:
        return Windows(np.zeros((0, 8)), np.zeros((0, max_delay + 1 + horizon, 3)), np.zeros((0, horizon)),
                       np.zeros((0, horizon, 5)), np.zeros(0, int), np.zeros(0, int))
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    return Windows(f32(init), f32(ctrl), f32(dts), f32(target), np.asarray(src), np.asarray(start))


def prepare(recordings: Sequence[Any], sources: Sequence[str], *, track_file: str | None = None,
            horizon_s: float = 2.0, max_delay: int = 3, val_fraction: float = 0.25, stride: int = 1,
            seed: int = 0) -> FitData:
    """Segments, windows and the track from recordings (``bridge.recorder.Recording``-like objects:
    ``episodes`` with ``fields``, ``meta``, ``track``, ``rejected``, ``bad_lines``)."""
    if not recordings:
        raise FitDataError("no recordings given: pass one or more run directories written by record_telemetry.py")
    stats = DataStats(recordings=len(recordings))
    periods = []
    for rec, src in zip(recordings, sources):
        stats.drop("rejected by the recorder", getattr(rec, "rejected", 0))
        stats.drop("unreadable line", getattr(rec, "bad_lines", 0) + getattr(rec, "truncated_lines", 0))
        p = [frame_period(ep.fields) for ep in rec.episodes]
        p = [x for x in p if x is not None]
        if not p:
            raise FitDataError(f"{src}: no episode has two frames; record longer (record_telemetry.py --minutes)")
        periods.append((src, float(np.median(p))))
    dt = _period(periods)
    track = pick_track([(src, rec.track) for rec, src in zip(recordings, sources)], track_file,
                       [ep.fields for rec in recordings for ep in rec.episodes])
    segments: list[Segment] = []
    for r, (rec, src) in enumerate(zip(recordings, sources)):
        for ep in rec.episodes:
            stats.episodes += 1
            stats.frames += len(ep.fields["t"])
            segments += episode_segments(ep.fields, dt, f"{src} episode {ep.episode}", (r, int(ep.episode)), stats)
    stats.segments = len(segments)
    horizon = max(1, int(round(horizon_s / dt)))
    keys = sorted({s.episode_key for s in segments})
    if len(keys) < 2:
        raise FitDataError(
            f"the recordings hold {len(keys)} usable episode(s); the fit holds whole episodes out for validation and "
            "needs at least 2: record more (record_telemetry.py resets the game after each episode)"
        )
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(val_fraction * len(keys))))
    val_keys = {keys[i] for i in rng.choice(len(keys), n_val, replace=False)}
    val_idx = [i for i, s in enumerate(segments) if s.episode_key in val_keys]
    train_idx = [i for i, s in enumerate(segments) if s.episode_key not in val_keys]
    train = make_windows(segments, train_idx, horizon, max_delay, stride)
    val = make_windows(segments, val_idx, horizon, max_delay, stride)
    if len(train) < MIN_TRAIN_WINDOWS or len(val) < MIN_VAL_WINDOWS:
        raise FitDataError(
            f"too little data on the track: {len(train)} training and {len(val)} validation windows of {horizon_s:g} s "
            f"(need {MIN_TRAIN_WINDOWS} and {MIN_VAL_WINDOWS}) from {stats.frames} frames in {stats.episodes} episodes; "
            "record longer with the probe policy (record_telemetry.py --policy probe --minutes 10)"
        )
    metas = [getattr(rec, "meta", {}) or {} for rec in recordings]
    # In lockstep a frame comes back per control step; in real time the game streams every tick
    # and the trainer acts at its own control period, which the recorder noted.
    realtime = any((m.get("config") or {}).get("mode") == "realtime" for m in metas)
    control = [m.get("control_period_s") for m in metas
               if realtime and isinstance(m.get("control_period_s"), (int, float)) and m["control_period_s"] > 0]
    game_dt = [(m.get("hello") or {}).get("dt") for m in metas]
    game_dt = [g for g in game_dt if isinstance(g, (int, float)) and g > 0]
    return FitData(train=train, val=val, segments=segments, val_segments=val_idx, dt=dt, horizon=horizon,
                   max_delay=max_delay, track=track, stats=stats,
                   control_period=float(control[0]) if control else dt,
                   game_dt=float(game_dt[0]) if game_dt else None)
