"""Game bridge protocol v1: build, encode, decode and validate every message.

The contract is /work/shared/design/protocol-v1.md (documented for plugin authors in
docs/protocol.md). Everything on the wire is one UTF-8 JSON object per ZeroMQ message; nothing is
ever unpickled. Validators return a *new* dict holding only the keys the contract knows, so unknown
keys a newer peer adds are ignored rather than passed on.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Mapping

VERSION = 1

# Receivers reject anything larger before parsing: a frame is a few hundred bytes, so 64 KiB is
# generous while bounding the memory a hostile or broken peer can make us spend.
DEFAULT_MAX_BYTES = 64 * 1024
# A track reply carries the whole centre line (thousands of points); it gets its own, larger cap.
DEFAULT_TRACK_MAX_BYTES = 16 * 1024 * 1024

# Error codes, exactly as the contract assigns them.
BAD_REQUEST = "bad_request"
BAD_ACTION = "bad_action"
NO_EPISODE = "no_episode"
UNSUPPORTED = "unsupported"
VERSION_ERR = "version"
ERROR_CODES = (BAD_REQUEST, BAD_ACTION, NO_EPISODE, UNSUPPORTED, VERSION_ERR)
# Local (never sent) reason for a telemetry frame or reply that fails validation on the trainer side.
BAD_TELEMETRY = "bad_telemetry"

MODES = ("lockstep", "realtime")
CONTROLS = ("steer", "throttle", "brake")
CONTROL_RANGES = {"steer": (-1.0, 1.0), "throttle": (0.0, 1.0), "brake": (0.0, 1.0)}
NEUTRAL_ACTION = {"steer": 0.0, "throttle": 0.0, "brake": 0.0}

LOCKSTEP_REQUESTS = ("hello", "track", "reset", "step", "close")
REALTIME_MESSAGES = ("action", "reset")

TELEMETRY_REQUIRED = ("seq", "episode", "t", "x", "y", "yaw", "speed", "steer", "throttle", "brake")
TELEMETRY_OPTIONAL = ("accel_long", "accel_lat", "yaw_rate", "lap", "lap_dist", "on_track", "ack",
                      "done", "reason")
TELEMETRY_FIELDS = TELEMETRY_REQUIRED + TELEMETRY_OPTIONAL


class ProtocolError(ValueError):
    """A message that breaks the contract. ``code`` is the contract's error code for it."""

    def __init__(self, code: str, message: str, field: str | None = None):
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message
        self.field = field


# ----------------------------------------------------------------------------- encoding

def _reject_constant(name: str) -> float:
    # json.loads accepts NaN/Infinity/-Infinity by default; the contract forbids them.
    raise ProtocolError(BAD_REQUEST, f"non-finite number {name} is not allowed; numbers must be finite")


def encode(msg: Mapping[str, Any]) -> bytes:
    """Serialise one message. Raises ValueError on NaN/Infinity (the sender's bug, caught early)."""
    try:
        return json.dumps(msg, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except ValueError as e:
        raise ValueError(f"cannot encode {msg.get('type')!r} message: {e}; numbers must be finite") from e


def decode(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """Parse one message: size, UTF-8, JSON, object, ``type`` and ``v``.

    Raises ProtocolError with code ``bad_request`` (or ``version`` for a newer ``v``). The type
    itself is not checked here: that is for the per-message validators.
    """
    if len(data) > max_bytes:
        raise ProtocolError(BAD_REQUEST, f"message of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(BAD_REQUEST, f"message is not UTF-8: {e}") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except (json.JSONDecodeError, RecursionError) as e:
        raise ProtocolError(BAD_REQUEST, f"message is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_REQUEST, f"message must be a JSON object, got {type(obj).__name__}")
    if "type" not in obj or not isinstance(obj["type"], str):
        raise ProtocolError(BAD_REQUEST, "field 'type' is missing or not a string", "type")
    v = obj.get("v")
    if not _is_int(v):
        raise ProtocolError(BAD_REQUEST, "field 'v' is missing or not an integer (protocol version, 1)", "v")
    if v > VERSION:
        raise ProtocolError(VERSION_ERR, f"protocol version {v} is newer than this receiver's version {VERSION}", "v")
    if v < 1:
        raise ProtocolError(BAD_REQUEST, f"protocol version {v} is invalid; versions start at 1", "v")
    return obj


# ----------------------------------------------------------------------------- field checks

def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _num(msg: Mapping, key: str, code: str, lo: float | None = None, hi: float | None = None,
         where: str = "") -> float:
    if key not in msg:
        raise ProtocolError(code, f"{where}field '{key}' is required", key)
    x = msg[key]
    if not _is_num(x):
        raise ProtocolError(code, f"{where}field '{key}' must be a number, got {type(x).__name__}", key)
    x = float(x)
    if not math.isfinite(x):
        raise ProtocolError(code, f"{where}field '{key}' must be finite, got {x}", key)
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        raise ProtocolError(code, f"{where}field '{key}' = {x} is outside [{lo}, {hi}]", key)
    return x


def _int(msg: Mapping, key: str, code: str, lo: int | None = None, where: str = "") -> int:
    if key not in msg:
        raise ProtocolError(code, f"{where}field '{key}' is required", key)
    x = msg[key]
    if not _is_int(x):
        raise ProtocolError(code, f"{where}field '{key}' must be an integer, got {type(x).__name__}", key)
    if lo is not None and x < lo:
        raise ProtocolError(code, f"{where}field '{key}' = {x} must be >= {lo}", key)
    return x


def _str(msg: Mapping, key: str, code: str, where: str = "") -> str:
    if not isinstance(msg.get(key), str):
        raise ProtocolError(code, f"{where}field '{key}' is missing or not a string", key)
    return msg[key]


def _bool(msg: Mapping, key: str, code: str, where: str = "") -> bool:
    if not isinstance(msg.get(key), bool):
        raise ProtocolError(code, f"{where}field '{key}' is missing or not true/false", key)
    return msg[key]


def _seed(msg: Mapping) -> int | None:
    seed = msg.get("seed")
    if seed is not None and not _is_int(seed):
        raise ProtocolError(BAD_REQUEST, f"field 'seed' must be an integer or null, got {type(seed).__name__}", "seed")
    return seed


def validate_action(controls: Any, code: str = BAD_ACTION) -> dict:
    """Check steer in [-1, 1], throttle and brake in [0, 1], all finite numbers."""
    if not isinstance(controls, Mapping):
        raise ProtocolError(code, "field 'action' must be an object with steer, throttle and brake", "action")
    return {k: _num(controls, k, code, *CONTROL_RANGES[k], where="action ") for k in CONTROLS}


def _check_type(msg: Mapping, expected: str) -> None:
    if msg.get("type") != expected:
        raise ProtocolError(BAD_REQUEST, f"expected a '{expected}' message, got type {msg.get('type')!r}", "type")


# ----------------------------------------------------------------------------- requests (plugin side)

def validate_request(msg: Mapping) -> dict:
    """Validate a decoded lockstep request; returns a normalised copy (unknown keys dropped)."""
    t = msg.get("type")
    if t not in LOCKSTEP_REQUESTS:
        raise ProtocolError(UNSUPPORTED, f"unknown request type {t!r}; lockstep requests are "
                                         f"{', '.join(LOCKSTEP_REQUESTS)}", "type")
    out: dict = {"type": t, "v": VERSION}
    if t == "hello":
        client = msg.get("client", "")
        if not isinstance(client, str):
            raise ProtocolError(BAD_REQUEST, "field 'client' must be a string", "client")
        out["client"] = client
    elif t == "reset":
        out["seed"] = _seed(msg)
    elif t == "step":
        out["seq"] = _int(msg, "seq", BAD_REQUEST, lo=0)
        ticks = msg.get("ticks", 1)
        if not _is_int(ticks) or ticks < 1:
            raise ProtocolError(BAD_REQUEST, f"field 'ticks' must be an integer >= 1, got {ticks!r}", "ticks")
        out["ticks"] = ticks
        if "action" not in msg:
            raise ProtocolError(BAD_ACTION, "field 'action' is required in a step", "action")
        out["action"] = validate_action(msg["action"])
    return out


def validate_realtime_message(msg: Mapping) -> dict:
    """Validate a message received on the real-time PULL socket (action or reset)."""
    t = msg.get("type")
    if t == "action":
        out = {"type": "action", "v": VERSION, "seq": _int(msg, "seq", BAD_REQUEST, lo=0)}
        out.update(validate_action(msg))
        return out
    if t == "reset":
        return {"type": "reset", "v": VERSION, "seed": _seed(msg)}
    raise ProtocolError(UNSUPPORTED, f"unknown real-time message type {t!r}; expected 'action' or 'reset'", "type")


# ----------------------------------------------------------------------------- replies (trainer side)

def validate_telemetry(msg: Mapping) -> dict:
    """Validate a telemetry frame; returns a normalised copy with only contract fields.

    Raises ProtocolError(code='bad_telemetry') naming the offending field.
    """
    c = BAD_TELEMETRY
    _check_type(msg, "telemetry")
    w = "telemetry "
    out: dict = {"type": "telemetry", "v": VERSION,
                 "seq": _int(msg, "seq", c, lo=0, where=w), "episode": _int(msg, "episode", c, lo=0, where=w),
                 "t": _num(msg, "t", c, lo=0.0, where=w),
                 "x": _num(msg, "x", c, where=w), "y": _num(msg, "y", c, where=w), "yaw": _num(msg, "yaw", c, where=w),
                 "speed": _num(msg, "speed", c, lo=0.0, where=w)}
    for k in CONTROLS:
        out[k] = _num(msg, k, c, *CONTROL_RANGES[k], where=w)
    for k in ("accel_long", "accel_lat", "yaw_rate"):
        if k in msg and msg[k] is not None:
            out[k] = _num(msg, k, c, where=w)
    if msg.get("lap") is not None:
        out["lap"] = _int(msg, "lap", c, lo=0, where=w)
    if "lap_dist" in msg:
        out["lap_dist"] = None if msg["lap_dist"] is None else _num(msg, "lap_dist", c, where=w)
    if msg.get("on_track") is not None:
        out["on_track"] = _bool(msg, "on_track", c, where=w)
    if msg.get("ack") is not None:
        out["ack"] = _int(msg, "ack", c, lo=0, where=w)
    if msg.get("done") is not None:
        out["done"] = _bool(msg, "done", c, where=w)
    if msg.get("reason") is not None:
        out["reason"] = _str(msg, "reason", c, where=w)
    return out


def validate_hello_reply(msg: Mapping) -> dict:
    c = BAD_TELEMETRY
    _check_type(msg, "hello")
    modes = msg.get("modes")
    if not isinstance(modes, list) or not modes or any(m not in MODES for m in modes):
        raise ProtocolError(c, f"hello field 'modes' must be a non-empty list of {MODES}, got {modes!r}", "modes")
    return {"type": "hello", "v": VERSION, "game": _str(msg, "game", c, "hello "), "modes": list(modes),
            "dt": _num(msg, "dt", c, lo=1e-9, where="hello "), "track": _bool(msg, "track", c, "hello ")}


def validate_track_reply(msg: Mapping) -> dict:
    c = BAD_TELEMETRY
    _check_type(msg, "track")
    out = {"type": "track", "v": VERSION, "name": _str(msg, "name", c, "track "),
           "closed": _bool(msg, "closed", c, "track ")}
    n = None
    for k in ("x", "y", "w_left", "w_right"):
        arr = msg.get(k)
        if not isinstance(arr, list) or len(arr) < 2:
            raise ProtocolError(c, f"track field '{k}' must be a list of at least 2 numbers", k)
        if n is not None and len(arr) != n:
            raise ProtocolError(c, f"track field '{k}' has {len(arr)} points, 'x' has {n}", k)
        n = len(arr)
        for i, val in enumerate(arr):
            if not _is_num(val) or not math.isfinite(val):
                raise ProtocolError(c, f"track field '{k}'[{i}] = {val!r} is not a finite number", k)
            if k.startswith("w_") and val < 0:
                raise ProtocolError(c, f"track field '{k}'[{i}] = {val} must be >= 0 (a width)", k)
        out[k] = [float(v) for v in arr]
    return out


def validate_error(msg: Mapping) -> dict:
    _check_type(msg, "error")
    code = msg.get("code")
    if code not in ERROR_CODES:
        raise ProtocolError(BAD_TELEMETRY, f"error code {code!r} is not one of {ERROR_CODES}", "code")
    message = msg.get("message", "")
    return {"type": "error", "v": VERSION, "code": code, "message": message if isinstance(message, str) else str(message)}


# ----------------------------------------------------------------------------- builders

def hello_request(client: str = "racerl-jax") -> dict:
    return {"type": "hello", "v": VERSION, "client": client}


def hello_reply(game: str, modes: Iterable[str], dt: float, track: bool, **extra: Any) -> dict:
    reply = validate_hello_reply({"type": "hello", "v": VERSION, "game": game, "modes": list(modes),
                                  "dt": dt, "track": track})
    return {**extra, **reply}  # extra keys never override the contract's own


def track_request() -> dict:
    return {"type": "track", "v": VERSION}


def track_reply(name: str, closed: bool, x, y, w_left, w_right) -> dict:
    return validate_track_reply({"type": "track", "v": VERSION, "name": name, "closed": bool(closed),
                                 "x": [float(v) for v in x], "y": [float(v) for v in y],
                                 "w_left": [float(v) for v in w_left], "w_right": [float(v) for v in w_right]})


def reset_request(seed: int | None = None) -> dict:
    return {"type": "reset", "v": VERSION, "seed": seed}


def step_request(seq: int, action: Mapping[str, float], ticks: int = 1) -> dict:
    return {"type": "step", "v": VERSION, "seq": seq,
            "action": {k: float(action[k]) for k in CONTROLS}, "ticks": ticks}


def close_request() -> dict:
    return {"type": "close", "v": VERSION}


def bye() -> dict:
    return {"type": "bye", "v": VERSION}


def error(code: str, message: str) -> dict:
    if code not in ERROR_CODES:
        raise ValueError(f"error code {code!r} is not one of {ERROR_CODES}")
    return {"type": "error", "v": VERSION, "code": code, "message": message}


def action_message(seq: int, steer: float, throttle: float, brake: float) -> dict:
    return {"type": "action", "v": VERSION, "seq": seq, "steer": float(steer),
            "throttle": float(throttle), "brake": float(brake)}


def telemetry(**fields: Any) -> dict:
    """Build and validate a telemetry frame (raises ProtocolError naming the bad field)."""
    return validate_telemetry({"type": "telemetry", "v": VERSION, **fields})
