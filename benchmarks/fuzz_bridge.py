"""Fuzz the game bridge on both sides, for long campaigns.

    python benchmarks/fuzz_bridge.py --messages 200000 [--seed 0] [--hang-timeout 5]

Plugin side: the example kinematic game served by the SDK, in its own process exactly as a user
starts it (``python -m bridge.games.kinematic``), on loopback TCP. It is sent ``--messages``
generated requests: valid ones, and valid ones mutated (numbers too large for a float, NaN,
out-of-range ticks/seq/seed, booleans and strings where numbers belong, missing and unknown keys,
deep nesting, oversize, several frames, corrupted bytes, garbage). Each reply is checked against an
independent reading of the contract (the oracle below, written from protocol-v1.md, not from
``bridge.protocol``): a crash is the plugin process dying, a hang is no reply within
``--hang-timeout`` seconds (the plugin is then restarted), and an invalid request answered with
telemetry is an invalid message accepted.

Trainer side: ``--messages`` generated frames (a few more where a reset retries), half as replies of a fake lockstep plugin to
``LockstepClient.reset``/``step``, half published to a ``RealtimeClient``. A crash is any
exception out of a client other than its documented ones; an invalid frame handed to the caller
is an invalid message accepted.

Progress bars go to stderr. The last line is machine-readable:
plugin_messages=<n> plugin_crashes=<n> plugin_hangs=<n> trainer_frames=<n> trainer_crashes=<n> invalid_accepted=<n>
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
import decimal
from decimal import Decimal

import zmq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bridge import protocol as P  # noqa: E402
from bridge.client import BridgeUnavailable, LockstepClient, RealtimeClient, RemoteError  # noqa: E402

# ----------------------------------------------------------------------------- the contract, restated
# From /work/shared/design/protocol-v1.md and docs/protocol.md (the reference receivers' limits).
MAX_BYTES = 64 * 1024
MAX_DEPTH = 32
TICKS = (1, 1000)
SEQ = (0, 2 ** 53)
SEED = (0, 2 ** 32 - 1)
TELEMETRY_INT = (0, 2 ** 53)
CONTROLS = {"steer": (-1.0, 1.0), "throttle": (0.0, 1.0), "brake": (0.0, 1.0)}
CODES = ("bad_request", "bad_action", "no_episode", "unsupported", "version", "internal")
LOCKSTEP_TYPES = ("hello", "track", "reset", "step", "close")


class JInt(Decimal):
    """A JSON integer literal, exactly (no size limit, no rounding)."""


class JFloat(Decimal):
    """A JSON number literal with a fraction or exponent, exactly."""


class _TooBig:
    """A JSON number whose exponent is beyond even Decimal's range (1e99999999999999999999)."""


def _jint(text: str):
    return JInt(text)


def _jfloat(text: str):
    try:
        return JFloat(text)
    except decimal.InvalidOperation:  # an exponent Decimal cannot hold: 0 or far beyond a double
        mantissa, _, exponent = text.lower().partition("e")
        if exponent.startswith("-") or not any(c in "123456789" for c in mantissa):
            return JFloat(0)
        return _TooBig()


class Bad(Exception):
    def __init__(self, code: str, why: str):
        super().__init__(why)
        self.code = code


def _constant(name: str):
    raise Bad("bad_request", f"{name} is not JSON")


def _depth_ok(obj) -> bool:
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if d > MAX_DEPTH:
            return False
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values() if isinstance(v, (dict, list)))
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o if isinstance(v, (dict, list)))
    return True


def parse(parts: list[bytes], max_bytes: int = MAX_BYTES) -> dict:
    """One message -> its object, or Bad('bad_request' | 'version')."""
    if len(parts) != 1:
        raise Bad("bad_request", "one message is one frame")
    data = parts[0]
    if len(data) > max_bytes:
        raise Bad("bad_request", "too large")
    try:
        text = data.decode("utf-8")
        obj = json.loads(text, parse_int=_jint, parse_float=_jfloat, parse_constant=_constant)
    except Bad:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise Bad("bad_request", f"not UTF-8 JSON: {type(e).__name__}") from None
    if not _depth_ok(obj):
        raise Bad("bad_request", "nested too deep")
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise Bad("bad_request", "not an object with a string type")
    v = obj.get("v")
    if type(v) is not JInt or not math.isfinite(float(v)):
        raise Bad("bad_request", "v not an integer that fits a double")
    if v > 1:
        raise Bad("version", "newer v")
    if v < 1:
        raise Bad("bad_request", "v below 1")
    return obj


def number(x) -> float | None:
    """The contract's number: a JSON number (not a boolean) that is finite as a 64-bit float."""
    if type(x) not in (JInt, JFloat):
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def integer(x, lo: int, hi: int) -> bool:
    return type(x) is JInt and lo <= x <= hi


def _controls_ok(a) -> bool:
    if not isinstance(a, dict):
        return False
    for k, (lo, hi) in CONTROLS.items():
        f = number(a.get(k))
        if f is None or not lo <= f <= hi:
            return False
    return True


def oracle_request(parts: list[bytes]) -> tuple[str, str]:
    """("ok", type) for a valid lockstep request, else ("error", the code the SDK answers).

    Where several faults apply the SDK's documented order decides (docs/protocol.md)."""
    try:
        m = parse(parts)
    except Bad as e:
        return "error", e.code
    t = m["type"]
    if t not in LOCKSTEP_TYPES:
        return "error", "unsupported"
    if t == "hello" and "client" in m and not isinstance(m["client"], str):
        return "error", "bad_request"
    if t == "reset" and m.get("seed") is not None and not integer(m["seed"], *SEED):
        return "error", "bad_request"
    if t == "step":
        if not integer(m.get("seq"), *SEQ):
            return "error", "bad_request"
        if "ticks" in m and not integer(m["ticks"], *TICKS):
            return "error", "bad_request"
        if not _controls_ok(m.get("action")):
            return "error", "bad_action"
    return "ok", t


def oracle_realtime(parts: list[bytes]) -> str | None:
    """'action' or 'reset' for a valid real-time message, None for one to drop."""
    try:
        m = parse(parts)
    except Bad:
        return None
    if m["type"] == "action":
        return "action" if integer(m.get("seq"), *SEQ) and _controls_ok(m) else None
    if m["type"] == "reset":
        return "reset" if m.get("seed") is None or integer(m["seed"], *SEED) else None
    return None


def oracle_telemetry(parts: list[bytes], max_bytes: int = MAX_BYTES) -> bool:
    """Whether a telemetry frame is valid by the contract."""
    try:
        m = parse(parts, max_bytes)
    except Bad:
        return False
    if m["type"] != "telemetry":
        return False
    if not (integer(m.get("seq"), *TELEMETRY_INT) and integer(m.get("episode"), *TELEMETRY_INT)):
        return False
    ranges = {"t": (0.0, math.inf), "x": (-math.inf, math.inf), "y": (-math.inf, math.inf),
              "yaw": (-math.inf, math.inf), "speed": (0.0, math.inf), **CONTROLS}
    for k, (lo, hi) in ranges.items():
        f = number(m.get(k))
        if f is None or not lo <= f <= hi:
            return False
    for k in ("accel_long", "accel_lat", "yaw_rate", "lap_dist"):
        if m.get(k) is not None and number(m[k]) is None:
            return False
    for k in ("lap", "ack"):
        if m.get(k) is not None and not integer(m[k], *TELEMETRY_INT):
            return False
    for k in ("on_track", "done"):
        if m.get(k) is not None and not isinstance(m[k], bool):
            return False
    return m.get("reason") is None or isinstance(m["reason"], str)


def oracle_error(parts: list[bytes]) -> str | None:
    """The code of a valid error reply, else None."""
    try:
        m = parse(parts)
    except Bad:
        return None
    return m["code"] if m["type"] == "error" and m.get("code") in CODES else None


# ----------------------------------------------------------------------------- generating messages

class Raw:
    """A JSON literal written as is (1e400, NaN, a 5000-digit integer, 20000 nested brackets)."""
    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


def dumps(o) -> str:
    if isinstance(o, Raw):
        return o.text
    if o is None:
        return "null"
    if isinstance(o, bool):
        return "true" if o else "false"
    if isinstance(o, int):
        return str(o)
    if isinstance(o, float):
        return repr(o) if math.isfinite(o) else ("NaN" if o != o else ("Infinity" if o > 0 else "-Infinity"))
    if isinstance(o, str):
        return json.dumps(o)
    if isinstance(o, list):
        return "[" + ",".join(dumps(v) for v in o) + "]"
    if isinstance(o, dict):
        return "{" + ",".join(json.dumps(str(k)) + ":" + dumps(v) for k, v in o.items()) + "}"
    raise TypeError(type(o))


BOUNDARY_INTS = (0, -1, 1, 2, 999, 1000, 1001, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 53, 2 ** 53 + 1,
                 -(2 ** 53), 2 ** 63, 2 ** 64, 10 ** 9, 10 ** 18, 10 ** 100)
NUMBER_LITERALS = ("1e400", "-1e400", "1e309", "1E400", "-0.0", "0e0", "1e-400", "1e308", "-1e308",
                   "1.7976931348623157e308", "1.7976931348623159e308", "2e308", "1.0", "0.5", "-0.5", "1.5",
                   "1.0000000000000001", "-1.0000000000000001", "5e-324", "3.0", "1000.0", "1e3")
CONSTANTS = ("NaN", "Infinity", "-Infinity", "nan", "inf")
STRINGS = ("", "1", "0.5", "NaN", "lockstep", "step", "telemetry", "\u0000", "é", "x" * 300)
DEPTHS = (2, 31, 32, 33, 100, 999, 1001, 20000)


class Fuzzer:
    def __init__(self, rng: random.Random):
        self.rng = rng

    def huge_int(self) -> Raw:
        r = self.rng
        n = r.choice((308, 309, 310, 400, 1000, 4301, 20000))
        return Raw(r.choice(("", "-")) + str(r.randint(1, 9)) + "".join(r.choice("0123456789") for _ in range(n - 1))
                   if n < 1000 else r.choice(("", "-")) + "9" * n)

    def nested(self) -> Raw:
        d = self.rng.choice(DEPTHS)
        o, c = self.rng.choice((("[", "]"), ('{"a":', "}")))
        return Raw(o * d + ("1" if o != "[" else "") + c * d)

    def nasty(self):
        r = self.rng
        k = r.randrange(12)
        if k == 0:
            return self.huge_int()
        if k == 1:
            return Raw(r.choice(NUMBER_LITERALS))
        if k == 2:
            return Raw(r.choice(CONSTANTS))
        if k == 3:
            return r.choice(BOUNDARY_INTS)
        if k == 4:
            return r.choice((0.0, 0.5, -0.5, 1.0, -1.0, 1.0000001, -1.0000001, 1.5, 3.14, 1e-300, 1e300))
        if k == 5:
            return r.choice((True, False, None))
        if k == 6:
            return r.choice(STRINGS)
        if k == 7:
            return Raw(r.choice(('"\\ud800"', '"\\udfff\\u0000"', '"\\"', "'x'", "01", "-", "1.", ".5", "+1")))
        if k == 8:
            return [self.nasty() for _ in range(r.randrange(3))]
        if k == 9:
            return {r.choice(("steer", "throttle", "brake", "x", "seq")): self.nasty() for _ in range(r.randrange(3))}
        if k == 10:
            return self.nested()
        return r.uniform(-2, 2)

    def mutate_bytes(self, data: bytes) -> bytes:
        r = self.rng
        k = r.randrange(6)
        if not data:
            return bytes(r.randrange(256) for _ in range(r.randrange(1, 20)))
        i = r.randrange(len(data))
        if k == 0:
            return data[:i] + bytes([r.randrange(256)]) + data[i + 1:]
        if k == 1:
            return data[:i]
        if k == 2:
            return data[:i] + bytes(r.randrange(256) for _ in range(r.randrange(1, 8))) + data[i:]
        if k == 3:
            return data[:i] + b"\xff\xfe" + data[i:]
        if k == 4:
            return data[:i] + data[i:i + r.randrange(1, 40)] + data[i:]
        return data[:i] + r.choice((b"NaN", b"1e400", b"9" * 400, b"[" * 40, b"}", b",", b'"')) + data[i:]

    def finish(self, obj) -> list[bytes]:
        """Serialise ``obj`` and maybe corrupt, pad or split it."""
        r = self.rng
        data = dumps(obj).encode("utf-8", "surrogatepass")
        u = r.random()
        if u < 0.12:
            data = self.mutate_bytes(data)
        elif u < 0.125:
            data = data[:-1] + b',"pad":"' + b"x" * r.choice((MAX_BYTES, MAX_BYTES - len(data) - 9)) + b'"}'
        elif u < 0.15:
            data = bytes(r.randrange(256) for _ in range(r.randrange(0, 64)))
        if r.random() < 0.01:
            return [data, r.choice((b"", data, b"second frame"))]
        return [data]

    def mutate(self, obj: dict, sub: str | None = None) -> dict:
        r = self.rng
        for _ in range(r.choice((0, 0, 1, 1, 1, 2, 3))):
            k = r.randrange(6)
            keys = list(obj)
            if k == 0 and keys:
                obj[r.choice(keys)] = self.nasty()
            elif k == 1 and sub and isinstance(obj.get(sub), dict):
                obj[sub][r.choice(list(CONTROLS) + ["x"])] = self.nasty()
            elif k == 2 and keys:
                obj.pop(r.choice(keys))
            elif k == 3:
                obj[r.choice(("future", "extra", "pad", "ack"))] = self.nasty()
            elif k == 4:
                obj["type"] = r.choice(LOCKSTEP_TYPES + ("action", "telemetry", "error", "bye", "", "STEP"))
            elif k == 5:
                obj["v"] = r.choice((0, 1, 1, 2, -1, 1.0, True, None, "1", Raw("1e400")))
        return obj

    # -- plugin side
    def action(self) -> dict:
        r = self.rng
        return {"steer": r.uniform(-1, 1), "throttle": r.random(), "brake": r.random() * r.choice((0, 0, 1))}

    def request(self) -> list[bytes]:
        r = self.rng
        t = r.choice(("hello", "track", "reset", "reset", "step", "step", "step", "step", "step", "close"))
        obj: dict = {"type": t, "v": 1}
        if t == "hello":
            obj["client"] = "fuzz"
        elif t == "reset":
            obj["seed"] = r.choice((None, 0, SEED[1], r.randrange(SEED[1] + 1)))
        elif t == "step":
            obj["seq"] = r.choice((r.randrange(1000), r.randrange(SEQ[1] + 1), SEQ[1]))
            obj["action"] = self.action()
            u = r.random()
            if u < 0.7:
                obj["ticks"] = r.randint(1, 5)
            elif u < 0.75:
                obj["ticks"] = r.choice((1000, r.randint(1, 1000)))
        return self.finish(self.mutate(obj, "action"))

    def realtime_message(self) -> list[bytes]:
        r = self.rng
        if r.random() < 0.85:
            obj = {"type": "action", "v": 1, "seq": r.randrange(10 ** 6), **self.action()}
        else:
            obj = {"type": "reset", "v": 1, "seed": r.choice((None, r.randrange(SEED[1] + 1)))}
        return self.finish(self.mutate(obj, None))

    # -- trainer side
    def telemetry(self, seq: int, episode: int) -> dict:
        r = self.rng
        f = {"type": "telemetry", "v": 1, "seq": seq, "episode": episode, "t": r.uniform(0, 100),
             "x": r.uniform(-1e4, 1e4), "y": r.uniform(-1e4, 1e4), "yaw": r.uniform(-4, 4),
             "speed": r.uniform(0, 90), **self.action()}
        for k in ("accel_long", "accel_lat", "yaw_rate", "lap_dist"):
            if r.random() < 0.5:
                f[k] = r.choice((None, r.uniform(-50, 50)))
        for k, v in (("lap", r.randrange(5)), ("ack", r.randrange(10 ** 6)), ("on_track", r.random() < 0.5),
                     ("done", r.random() < 0.1), ("reason", r.choice(("crash", "finish")))):
            if r.random() < 0.5:
                f[k] = r.choice((None, v))
        return f

    def reply(self, seq: int, episode: int, clean: float = 0.5) -> list[bytes]:
        """A reply of a (possibly broken) plugin: ``clean`` of them are valid frames, unmutated."""
        r = self.rng
        u = r.random()
        if u < clean:
            return [dumps(self.telemetry(seq, episode)).encode()]
        if u < clean + 0.06:
            return [P.encode({"type": "error", "v": 1, "code": r.choice(CODES + ("boom", "")), "message": "fuzz"})]
        if u < clean + 0.08:
            return [P.encode({"type": r.choice(("hello", "bye", "track")), "v": 1, "game": "g", "modes": ["lockstep"],
                              "dt": 0.02, "track": False})]
        return self.finish(self.mutate(self.telemetry(seq, episode), None))


# ----------------------------------------------------------------------------- plugin campaign

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Findings:
    counts: dict = field(default_factory=dict)
    examples: list = field(default_factory=list)

    def add(self, kind: str, what: str, max_examples: int = 8) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.examples) < max_examples:
            self.examples.append(f"{kind}: {what}")

    def __getitem__(self, kind: str) -> int:
        return self.counts.get(kind, 0)


def _show(parts: list[bytes], n: int = 160) -> str:
    return " | ".join(repr(p[:n]) + (f"...({len(p)} bytes)" if len(p) > n else "") for p in parts)


class PluginProcess:
    """The example game served by the SDK in its own process, as a user starts it."""

    def __init__(self, port: int):
        self.address = f"tcp://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bridge.games.kinematic", "--mode", "lockstep",
                                      "--address", self.address], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)


def _check_reply(parts: list[bytes], verdict: tuple[str, str], in_episode: bool) -> tuple[str | None, str]:
    """(a finding kind or None, what the reply was)."""
    if len(parts) != 1:
        return "bad_reply", f"{len(parts)} frames"
    try:
        m = P.decode(parts[0], P.DEFAULT_TRACK_MAX_BYTES)
        t = m["type"]
        {"telemetry": P.validate_telemetry, "hello": P.validate_hello_reply, "track": P.validate_track_reply,
         "error": P.validate_error, "bye": lambda m: m}[t](m)
    except (P.ProtocolError, KeyError) as e:
        return "bad_reply", f"invalid reply: {e}"
    got = m["code"] if t == "error" else t
    kind, what = verdict
    if kind == "error":
        if t == "telemetry":
            return "invalid_accepted", f"expected error {what}, got telemetry"
        return (None if got == what else "wrong_code"), f"expected {what}, got {got}"
    want = {"hello": "hello", "track": "track", "close": "bye", "reset": "telemetry",
            "step": "telemetry" if in_episode else "no_episode"}[what]
    if got == "internal":
        return None, "internal"  # the game failed: allowed by the contract (the example game should not)
    return (None if got == want else "wrong_reply"), f"expected {want}, got {got}"


def run_plugin_campaign(n: int, seed: int = 0, hang_timeout: float = 5.0, progress: bool = True) -> dict:
    from tqdm import tqdm
    rng = random.Random(seed)
    fz = Fuzzer(rng)
    found = Findings()
    plugin = PluginProcess(free_port())
    ctx = zmq.Context()

    def connect() -> zmq.Socket:
        s = ctx.socket(zmq.REQ)
        s.linger = 0
        s.connect(plugin.address)
        return s

    sock = connect()
    # the plugin is starting: wait for its first answer
    sock.send(P.encode(P.hello_request("fuzz")))
    if not sock.poll(30_000):
        raise RuntimeError(f"the plugin at {plugin.address} did not start within 30 s")
    sock.recv()
    in_episode = False
    restarts = 0
    bar = tqdm(total=n, desc="plugin", unit="msg", disable=not progress, mininterval=0.5, file=sys.stderr)
    try:
        for i in range(n):
            parts = fz.request()
            verdict = oracle_request(parts)
            sock.send_multipart(parts)
            if not sock.poll(int(hang_timeout * 1000)):
                kind = "crash" if not plugin.alive() else "hang"
                found.add(kind, _show(parts))
                plugin.restart()
                restarts += 1
                sock.close(linger=0)
                sock = connect()
                in_episode = False
                bar.update(1)
                continue
            kind, what = _check_reply(sock.recv_multipart(), verdict, in_episode)
            if kind is not None:
                found.add(kind, f"{what}: {_show(parts)}")
            if verdict == ("ok", "reset") and what.endswith("telemetry"):
                in_episode = True
            elif what == "internal":
                in_episode = False
            if i % 2000 == 1999 and not plugin.alive():
                found.add("crash", "the plugin process died")
                plugin.restart()
                restarts += 1
            bar.update(1)
    finally:
        bar.close()
        sock.close(linger=0)
        plugin.stop()
        ctx.destroy(linger=0)
    return {"messages": n, "crashes": found["crash"], "hangs": found["hang"], "restarts": restarts,
            "invalid_accepted": found["invalid_accepted"], "wrong": found["wrong_code"] + found["wrong_reply"],
            "bad_replies": found["bad_reply"], "examples": found.examples}


# ----------------------------------------------------------------------------- trainer campaign

class FakePlugin:
    """A lockstep plugin that answers every request with the fuzzer's next reply (ROUTER, so it can
    also stay silent), and remembers what it sent last."""

    NOT_INVALID = ("no_episode", "internal", "unsupported", "version")  # errors the client does not count as invalid

    def __init__(self, ctx: zmq.Context, fz: Fuzzer, address: str, silence: float = 0.0002):
        self.fz, self.silence = fz, silence
        self.sock = ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.bind(address)
        self.sent = 0
        self.expected_invalid = 0
        self.last_valid = False
        self.last_error: str | None = None
        self.seq = self.episode = 0
        self.lock = threading.Lock()
        self.error: str | None = None
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._serve()
        except Exception:  # noqa: BLE001 - a harness bug must show, not look like a client hang
            self.error = traceback.format_exc()

    def _serve(self) -> None:
        rng = self.fz.rng
        while not self._stop.is_set():
            if not self.sock.poll(20):
                continue
            ident, *_, body = self.sock.recv_multipart()
            if json.loads(body)["type"] == "reset":
                self.episode += 1
            self.seq += 1
            with self.lock:
                if rng.random() < self.silence:
                    continue
                parts = self.fz.reply(self.seq, self.episode)
                valid = oracle_telemetry(parts)
                err = None if valid else oracle_error(parts)
                self.sent += 1
                self.last_valid, self.last_error = valid, err
                if not valid and err not in self.NOT_INVALID:
                    self.expected_invalid += 1
            self.sock.send_multipart([ident, b"", *parts])

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        self.sock.close(linger=0)


def _lockstep_trainer(n: int, rng: random.Random, found: Findings, bar) -> int:
    ctx = zmq.Context()
    fz = Fuzzer(rng)
    address = "inproc://fuzz-lockstep"
    fake = FakePlugin(ctx, fz, address)
    new_client = lambda: LockstepClient(address, timeout=0.25, retries=3, context=ctx)  # noqa: E731
    client = new_client()
    need_reset = True
    done = 0
    invalid_before = 0
    try:
        while fake.sent < n:
            if fake.error is not None:
                raise RuntimeError(f"the fake plugin failed (a bug in this harness):\n{fake.error}")
            try:
                r = client.reset() if need_reset else client.step(fz.action(), rng.randint(1, 3))
                need_reset = False
                with fake.lock:
                    if not fake.last_valid:
                        found.add("invalid_accepted", f"lockstep client returned {r.frame} after an invalid reply")
            except BridgeUnavailable:
                need_reset = True  # every retry got an invalid answer: documented
            except RemoteError as e:
                if e.code not in ("unsupported", "version"):
                    found.add("crash", f"RemoteError {e.code} where the client should have recovered")
                need_reset = True
            except Exception as e:  # noqa: BLE001 - what the campaign is looking for
                found.add("crash", f"lockstep client: {type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}")
                client.close(say_bye=False)
                invalid_before += client.stats.invalid
                client = new_client()
                need_reset = True
            bar.update(fake.sent - done)
            done = fake.sent
        client.close(say_bye=False)
        counted = invalid_before + client.stats.invalid
        # the client counts what it could not validate; a timeout's late reply is never read
        if counted != fake.expected_invalid:
            found.add("miscounted", f"lockstep client counted {counted} invalid replies, the oracle "
                                    f"{fake.expected_invalid}")
    finally:
        fake.close()
        ctx.destroy(linger=0)
    return fake.sent


def _realtime_trainer(n: int, rng: random.Random, found: Findings, bar) -> int:
    ctx = zmq.Context()
    fz = Fuzzer(rng)
    pub = ctx.socket(zmq.PUB)
    pub.bind("inproc://fuzz-telemetry")
    pull = ctx.socket(zmq.PULL)
    pull.bind("inproc://fuzz-actions")
    client = RealtimeClient("inproc://fuzz-telemetry", "inproc://fuzz-actions", context=ctx)
    expected_invalid = 0
    try:
        for i in range(n):
            parts = fz.reply(i, i // 100, clean=0.4)
            # the client's SUB is conflated (newest frame only): of a multi-frame message it gets the last frame
            delivered = parts[-1:]
            valid = oracle_telemetry(delivered)
            expected_invalid += not valid
            pub.send_multipart(parts)
            try:
                frame = client.poll_frame()
            except Exception as e:  # noqa: BLE001
                found.add("crash", f"realtime client: {type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}")
                continue
            if frame is not None and not valid:
                found.add("invalid_accepted", f"realtime client took {_show(delivered)}")
            if frame is None and valid:
                found.add("valid_dropped", _show(delivered))
            if i % 256 == 255:
                bar.update(256)
        bar.update(n % 256)
        if client.stats.invalid != expected_invalid:
            found.add("miscounted", f"realtime client counted {client.stats.invalid} invalid frames, the oracle "
                                    f"{expected_invalid}")
    finally:
        client.close()
        pub.close(linger=0)
        pull.close(linger=0)
        ctx.destroy(linger=0)
    return n


def run_trainer_campaign(n: int, seed: int = 0, progress: bool = True) -> dict:
    from tqdm import tqdm
    import logging
    logging.getLogger("bridge.client").setLevel(logging.ERROR)  # recoveries log a warning each
    rng = random.Random(seed + 1)
    found = Findings()
    bar = tqdm(total=n, desc="trainer", unit="frame", disable=not progress, mininterval=0.5, file=sys.stderr)
    try:
        frames = _lockstep_trainer(n // 2, rng, found, bar)
        frames += _realtime_trainer(n - n // 2, rng, found, bar)
    finally:
        bar.close()
    return {"frames": frames, "crashes": found["crash"], "invalid_accepted": found["invalid_accepted"],
            "miscounted": found["miscounted"], "valid_dropped": found["valid_dropped"], "examples": found.examples}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000, help="messages sent to the plugin, and frames to the clients")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hang-timeout", type=float, default=5.0, help="seconds without a reply that count as a hang")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    plugin = run_plugin_campaign(args.messages, args.seed, args.hang_timeout, not args.no_progress)
    t1 = time.monotonic()
    trainer = run_trainer_campaign(args.messages, args.seed, not args.no_progress)
    t2 = time.monotonic()
    for ex in plugin["examples"] + trainer["examples"]:
        print(ex)
    print(f"plugin: {plugin['messages']} messages in {t1 - t0:.1f} s, restarts={plugin['restarts']} "
          f"wrong_replies={plugin['wrong']} invalid_replies={plugin['bad_replies']}")
    print(f"trainer: {trainer['frames']} frames in {t2 - t1:.1f} s, miscounted={trainer['miscounted']} "
          f"valid_dropped={trainer['valid_dropped']}")
    print(f"plugin_messages={plugin['messages']} plugin_crashes={plugin['crashes']} plugin_hangs={plugin['hangs']} "
          f"trainer_frames={trainer['frames']} trainer_crashes={trainer['crashes']} "
          f"invalid_accepted={plugin['invalid_accepted'] + trainer['invalid_accepted']}")
    bad = (plugin["crashes"] + plugin["hangs"] + trainer["crashes"] + plugin["invalid_accepted"]
           + trainer["invalid_accepted"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
