"""Game bridge protocol v1: build, encode, decode and validate every message.

The contract is /work/shared/design/protocol-v1.md (documented for plugin authors in
docs/protocol.md). Everything on the wire is one UTF-8 JSON object per ZeroMQ message; nothing is
ever unpickled. Validators return a *new* dict holding only the keys the contract knows, so unknown
keys a newer peer adds are ignored rather than passed on.

No input, however malformed, gets out of :func:`decode` or a ``validate_*`` function with any
exception but :class:`ProtocolError`: sizes, nesting depth, every number (NaN, infinities, numbers
too large for a 64-bit float, booleans where a number belongs) and every integer's range are
checked, and anything unforeseen is turned into a ProtocolError naming the message.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
from typing import Any, Callable, Iterable, Mapping, TypeVar

VERSION = 1

# Receivers reject anything larger before parsing: a frame is a few hundred bytes, so 64 KiB is
# generous while bounding the memory a hostile or broken peer can make us spend.
DEFAULT_MAX_BYTES = 64 * 1024
# A track reply carries the whole centre line (thousands of points); it gets its own, larger cap.
DEFAULT_TRACK_MAX_BYTES = 16 * 1024 * 1024
# The contract's messages nest two levels deep (a step's action object); anything deeper than this
# is refused before a validator walks it (json.loads itself gives up near 1000 levels).
MAX_DEPTH = 32

# Bounds the contract puts on request fields.
MAX_TICKS = 1000          # a step's ticks: 1..1000 (so no request costs more than 1000 ticks' work)
MAX_SEQ = 2 ** 53         # an action's seq: 0..2^53 (the largest integer a 64-bit float holds exactly)
MAX_SEED = 2 ** 32 - 1    # a reset's seed: 0..2^32 - 1, or null
# Integers in telemetry (seq, episode, lap, ack) are counters: the receivers hold them to the same
# 0..2^53 as a request's seq (beyond it a 64-bit float, and so many JSON readers, loses them).
MAX_INT = 2 ** 53
# The largest JSON integer literal that can still fit a 64-bit float has 309 digits (1.8e308);
# longer ones are not converted at all (Python refuses beyond 4300 digits, and it costs time).
_FLOAT_MAX_DIGITS = 309

# Error codes, exactly as the contract assigns them.
BAD_REQUEST = "bad_request"
BAD_ACTION = "bad_action"
NO_EPISODE = "no_episode"
UNSUPPORTED = "unsupported"
VERSION_ERR = "version"
INTERNAL = "internal"  # a valid request the game's own code failed to serve; the episode is over
ERROR_CODES = (BAD_REQUEST, BAD_ACTION, NO_EPISODE, UNSUPPORTED, VERSION_ERR, INTERNAL)
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

_F = TypeVar("_F", bound=Callable[..., Any])


def _short(x: Any, limit: int = 60) -> str:
    """repr() cut to ``limit`` characters: error messages quote what they got, never all of it."""
    try:
        r = repr(x)
    except Exception:  # a repr that fails (or recurses) still gets a name
        r = f"<{type(x).__name__}>"
    return r if len(r) <= limit else f"{r[:limit - 15]}...({len(r)} chars)"


def _guarded(code: str) -> Callable[[_F], _F]:
    """Whatever slips past a validator's own checks leaves it as ProtocolError(code), never as
    another exception: one bad message must not stop a plugin or a trainer."""

    def deco(fn: _F) -> _F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except ProtocolError:
                raise
            except Exception as e:  # noqa: BLE001 - the guarantee above
                raise ProtocolError(code, f"message could not be validated ({type(e).__name__}: "
                                          f"{_short(str(e), 120)})") from None
        return wrapper  # type: ignore[return-value]
    return deco


class TooLarge:
    """A JSON number too large for a 64-bit float (``1e400``, an integer of hundreds of digits).

    :func:`decode` puts one in place of such a number instead of converting it, so the field
    validators reject it with the field's own error code and name; it never equals a number and
    never leaves a validator.
    """
    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        t = self.text
        return t if len(t) <= 24 else f"{t[:12]}...{t[-6:]} ({len(t)} characters)"


def _reject_constant(name: str) -> float:
    # json.loads accepts NaN/Infinity/-Infinity by default; the contract forbids them.
    raise ProtocolError(BAD_REQUEST, f"non-finite number {name} is not allowed; numbers must be finite")


def _parse_int(text: str) -> int | TooLarge:
    digits = len(text) - (text[0] == "-")
    return TooLarge(text) if digits > _FLOAT_MAX_DIGITS else int(text)


def _parse_float(text: str) -> float | TooLarge:
    x = float(text)
    return x if math.isfinite(x) else TooLarge(text)


def _check_depth(text: str, obj: Any) -> None:
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return  # cannot nest deeper than it has brackets (strings may hold some: that only over-counts)
    stack = [(obj, 1)]
    while stack:
        o, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ProtocolError(BAD_REQUEST, f"message nests objects/arrays deeper than {MAX_DEPTH} levels")
        children = o.values() if isinstance(o, dict) else o
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))


def encode(msg: Mapping[str, Any]) -> bytes:
    """Serialise one message. Raises ValueError on NaN/Infinity (the sender's bug, caught early)."""
    try:
        return json.dumps(msg, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except ValueError as e:
        raise ValueError(f"cannot encode {msg.get('type')!r} message: {e}; numbers must be finite") from e


@_guarded(BAD_REQUEST)
def decode(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    """Parse one message: size, UTF-8, JSON, nesting depth, object, ``type`` and ``v``.

    Raises ProtocolError with code ``bad_request`` (or ``version`` for a newer ``v``), and nothing
    else, whatever ``data`` holds. The type itself is not checked here: that is for the
    per-message validators. A number too large for a 64-bit float comes back as a
    :class:`TooLarge` (which every validator rejects) rather than as a number.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(BAD_REQUEST, f"message must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise ProtocolError(BAD_REQUEST, f"message of {len(data)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtocolError(BAD_REQUEST, f"message is not UTF-8: {e}") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant, parse_int=_parse_int, parse_float=_parse_float)
    except ProtocolError:
        raise
    except RecursionError:
        raise ProtocolError(BAD_REQUEST, f"message nests objects/arrays deeper than {MAX_DEPTH} levels "
                                         f"(too deep to parse)") from None
    except ValueError as e:  # json.JSONDecodeError included
        raise ProtocolError(BAD_REQUEST, f"message is not valid JSON: {_short(str(e), 160)}") from None
    _check_depth(text, obj)
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_REQUEST, f"message must be a JSON object, got {type(obj).__name__}")
    if "type" not in obj or not isinstance(obj["type"], str):
        raise ProtocolError(BAD_REQUEST, "field 'type' is missing or not a string", "type")
    v = obj.get("v")
    if isinstance(v, TooLarge) or (_is_int(v) and finite_float(v) is None):
        raise ProtocolError(BAD_REQUEST, f"field 'v' = {_short(v, 30)} is too large for a 64-bit float "
                                         f"(protocol version, 1)", "v")
    if not _is_int(v):
        raise ProtocolError(BAD_REQUEST, "field 'v' is missing or not an integer (protocol version, 1)", "v")
    if v > VERSION:
        raise ProtocolError(VERSION_ERR, f"protocol version {_short(v, 30)} is newer than this receiver's "
                                         f"version {VERSION}", "v")
    if v < 1:
        raise ProtocolError(BAD_REQUEST, f"protocol version {_short(v, 30)} is invalid; versions start at 1", "v")
    return obj


# ----------------------------------------------------------------------------- field checks

def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def finite_float(x: Any) -> float | None:
    """``x`` as a float if it is a finite number that fits a 64-bit float, else None.

    Booleans are not numbers; nothing here raises (``float(10**400)`` would: OverflowError)."""
    if not _is_num(x):
        return None
    try:
        f = float(x)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _what(x: Any) -> str:
    """How an error message names a value of the wrong kind."""
    if isinstance(x, TooLarge):
        return f"{x!r}, a number too large for a 64-bit float"
    if isinstance(x, bool):
        return f"{str(x).lower()} (a boolean)"
    if x is None:
        return "null"
    if _is_num(x):
        return _short(x, 40)
    return f"{type(x).__name__} {_short(x, 40)}"


def _num(msg: Mapping, key: str, code: str, lo: float | None = None, hi: float | None = None,
         where: str = "") -> float:
    if key not in msg:
        raise ProtocolError(code, f"{where}field '{key}' is required", key)
    x = msg[key]
    f = finite_float(x)
    if f is None:
        kind = "a finite number" if _is_num(x) or isinstance(x, TooLarge) else "a number"
        raise ProtocolError(code, f"{where}field '{key}' must be {kind}, got {_what(x)}", key)
    if (lo is not None and f < lo) or (hi is not None and f > hi):
        raise ProtocolError(code, f"{where}field '{key}' = {f} is outside [{lo}, {hi}]", key)
    return f


def _int(msg: Mapping, key: str, code: str, lo: int | None = None, hi: int | None = None,
         where: str = "") -> int:
    if key not in msg:
        raise ProtocolError(code, f"{where}field '{key}' is required", key)
    x = msg[key]
    if not _is_int(x):
        raise ProtocolError(code, f"{where}field '{key}' must be an integer, got {_what(x)}", key)
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        rng = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
        raise ProtocolError(code, f"{where}field '{key}' = {_short(x, 40)} must be an integer {rng}", key)
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
    if seed is None:
        return None
    if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
        got = _short(seed, 40) if _is_int(seed) else _what(seed)
        raise ProtocolError(BAD_REQUEST, f"field 'seed' must be null or an integer from 0 to {MAX_SEED} "
                                         f"(2^32 - 1), got {got}", "seed")
    return seed


@_guarded(BAD_ACTION)
def validate_action(controls: Any, code: str = BAD_ACTION) -> dict:
    """Check steer in [-1, 1], throttle and brake in [0, 1], all finite numbers."""
    if not isinstance(controls, Mapping):
        raise ProtocolError(code, "field 'action' must be an object with steer, throttle and brake", "action")
    return {k: _num(controls, k, code, *CONTROL_RANGES[k], where="action ") for k in CONTROLS}


def _check_type(msg: Mapping, expected: str) -> None:
    if not isinstance(msg, Mapping):
        raise ProtocolError(BAD_TELEMETRY, f"expected a '{expected}' message (a JSON object), got "
                                           f"{type(msg).__name__}")
    if msg.get("type") != expected:
        raise ProtocolError(BAD_TELEMETRY, f"expected a '{expected}' message, got type {_short(msg.get('type'))}",
                            "type")


# ----------------------------------------------------------------------------- requests (plugin side)

@_guarded(BAD_REQUEST)
def validate_request(msg: Mapping) -> dict:
    """Validate a decoded lockstep request; returns a normalised copy (unknown keys dropped)."""
    if not isinstance(msg, Mapping):
        raise ProtocolError(BAD_REQUEST, f"message must be a JSON object, got {type(msg).__name__}")
    t = msg.get("type")
    if t not in LOCKSTEP_REQUESTS:
        raise ProtocolError(UNSUPPORTED, f"unknown request type {_short(t)}; lockstep requests are "
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
        out["seq"] = _int(msg, "seq", BAD_REQUEST, lo=0, hi=MAX_SEQ)
        out["ticks"] = _int(msg, "ticks", BAD_REQUEST, lo=1, hi=MAX_TICKS) if "ticks" in msg else 1
        if "action" not in msg:
            raise ProtocolError(BAD_ACTION, "field 'action' is required in a step", "action")
        out["action"] = validate_action(msg["action"])
    return out


@_guarded(BAD_REQUEST)
def validate_realtime_message(msg: Mapping) -> dict:
    """Validate a message received on the real-time PULL socket (action or reset)."""
    if not isinstance(msg, Mapping):
        raise ProtocolError(BAD_REQUEST, f"message must be a JSON object, got {type(msg).__name__}")
    t = msg.get("type")
    if t == "action":
        out = {"type": "action", "v": VERSION, "seq": _int(msg, "seq", BAD_REQUEST, lo=0, hi=MAX_SEQ)}
        out.update(validate_action(msg))
        return out
    if t == "reset":
        return {"type": "reset", "v": VERSION, "seed": _seed(msg)}
    raise ProtocolError(UNSUPPORTED, f"unknown real-time message type {_short(t)}; expected 'action' or "
                                     f"'reset'", "type")


# ----------------------------------------------------------------------------- replies (trainer side)

@_guarded(BAD_TELEMETRY)
def validate_telemetry(msg: Mapping) -> dict:
    """Validate a telemetry frame; returns a normalised copy with only contract fields.

    Raises ProtocolError(code='bad_telemetry') naming the offending field.
    """
    c = BAD_TELEMETRY
    _check_type(msg, "telemetry")
    w = "telemetry "
    out: dict = {"type": "telemetry", "v": VERSION,
                 "seq": _int(msg, "seq", c, 0, MAX_INT, where=w), "episode": _int(msg, "episode", c, 0, MAX_INT, where=w),
                 "t": _num(msg, "t", c, lo=0.0, where=w),
                 "x": _num(msg, "x", c, where=w), "y": _num(msg, "y", c, where=w), "yaw": _num(msg, "yaw", c, where=w),
                 "speed": _num(msg, "speed", c, lo=0.0, where=w)}
    for k in CONTROLS:
        out[k] = _num(msg, k, c, *CONTROL_RANGES[k], where=w)
    for k in ("accel_long", "accel_lat", "yaw_rate"):
        if k in msg and msg[k] is not None:
            out[k] = _num(msg, k, c, where=w)
    if msg.get("lap") is not None:
        out["lap"] = _int(msg, "lap", c, 0, MAX_INT, where=w)
    if "lap_dist" in msg:
        out["lap_dist"] = None if msg["lap_dist"] is None else _num(msg, "lap_dist", c, where=w)
    if msg.get("on_track") is not None:
        out["on_track"] = _bool(msg, "on_track", c, where=w)
    if msg.get("ack") is not None:
        out["ack"] = _int(msg, "ack", c, 0, MAX_INT, where=w)
    if msg.get("done") is not None:
        out["done"] = _bool(msg, "done", c, where=w)
    if msg.get("reason") is not None:
        out["reason"] = _str(msg, "reason", c, where=w)
    return out


@_guarded(BAD_TELEMETRY)
def validate_hello_reply(msg: Mapping) -> dict:
    c = BAD_TELEMETRY
    _check_type(msg, "hello")
    modes = msg.get("modes")
    if not isinstance(modes, list) or not modes or any(not isinstance(m, str) or m not in MODES for m in modes):
        raise ProtocolError(c, f"hello field 'modes' must be a non-empty list of {MODES}, got {_short(modes)}",
                            "modes")
    return {"type": "hello", "v": VERSION, "game": _str(msg, "game", c, "hello "), "modes": list(modes),
            "dt": _num(msg, "dt", c, lo=1e-9, where="hello "), "track": _bool(msg, "track", c, "hello ")}


@_guarded(BAD_TELEMETRY)
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
        vals = [finite_float(val) for val in arr]
        for i, f in enumerate(vals):
            if f is None:
                raise ProtocolError(c, f"track field '{k}'[{i}] must be a finite number, got {_what(arr[i])}", k)
            if k.startswith("w_") and f < 0:
                raise ProtocolError(c, f"track field '{k}'[{i}] = {f} must be >= 0 (a width)", k)
        out[k] = vals
    return out


@_guarded(BAD_TELEMETRY)
def validate_error(msg: Mapping) -> dict:
    _check_type(msg, "error")
    code = msg.get("code")
    if not isinstance(code, str) or code not in ERROR_CODES:
        raise ProtocolError(BAD_TELEMETRY, f"error code {_short(code)} is not one of {ERROR_CODES}", "code")
    message = msg.get("message", "")
    return {"type": "error", "v": VERSION, "code": code,
            "message": message if isinstance(message, str) else _short(message, 200)}


# ----------------------------------------------------------------------------- builders

def hello_request(client: str = "racerl-jax") -> dict:
    return {"type": "hello", "v": VERSION, "client": client}


def hello_reply(game: str, modes: Iterable[str], dt: float, track: bool, **extra: Any) -> dict:
    reply = validate_hello_reply({"type": "hello", "v": VERSION, "game": game, "modes": list(modes),
                                  "dt": dt, "track": track})
    return {**extra, **reply}  # extra keys never override the contract's own


def track_request() -> dict:
    return {"type": "track", "v": VERSION}


def _as_float(v: Any) -> Any:
    # numpy scalars (np.float32, np.int64) become floats; anything else is left for the validator
    # to reject with a clear message (float() would turn "1.5" into a number, or overflow).
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        try:
            return float(v)
        except (OverflowError, ValueError, TypeError):
            return v
    return v


@_guarded(BAD_TELEMETRY)
def track_reply(name: str, closed: bool, x, y, w_left, w_right) -> dict:
    return validate_track_reply({"type": "track", "v": VERSION, "name": name, "closed": bool(closed),
                                 "x": [_as_float(v) for v in x], "y": [_as_float(v) for v in y],
                                 "w_left": [_as_float(v) for v in w_left],
                                 "w_right": [_as_float(v) for v in w_right]})


def reset_request(seed: int | None = None) -> dict:
    return {"type": "reset", "v": VERSION, "seed": seed}


def step_request(seq: int, action: Mapping[str, float], ticks: int = 1) -> dict:
    return {"type": "step", "v": VERSION, "seq": seq,
            "action": {k: _as_float(action[k]) for k in CONTROLS}, "ticks": ticks}


def close_request() -> dict:
    return {"type": "close", "v": VERSION}


def bye() -> dict:
    return {"type": "bye", "v": VERSION}


def error(code: str, message: str) -> dict:
    if code not in ERROR_CODES:
        raise ValueError(f"error code {code!r} is not one of {ERROR_CODES}")
    return {"type": "error", "v": VERSION, "code": code, "message": message}


def action_message(seq: int, steer: float, throttle: float, brake: float) -> dict:
    return {"type": "action", "v": VERSION, "seq": seq, "steer": _as_float(steer),
            "throttle": _as_float(throttle), "brake": _as_float(brake)}


def telemetry(**fields: Any) -> dict:
    """Build and validate a telemetry frame (raises ProtocolError naming the bad field)."""
    return validate_telemetry({"type": "telemetry", "v": VERSION, **fields})
