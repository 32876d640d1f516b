"""Conformance suite: check any running plugin against protocol v1.

    python -m bridge.conformance tcp://127.0.0.1:5555                      # lockstep
    python -m bridge.conformance tcp://127.0.0.1:5556 --mode realtime      # PUB; PULL = port + 1
    python -m bridge.conformance tcp://HOST:5556 --mode realtime --actions tcp://HOST:5557
    python -m bridge.conformance tcp://127.0.0.1:5555 --internal-request '{"type":"reset","v":1,"seed":13}'

Run it against a freshly started plugin (one check sends a step before any reset). Prints one
PASS/FAIL line per check with what failed; exit code 0 only if every check passes.

Besides the happy path it sends what broke plugins in the field: ticks of a billion, integers of
hundreds of digits and 1e400 in every numeric field, out-of-range seeds, JSON nested thousands of
levels deep, oversize and multi-frame messages. Each must be answered with the right error at
once, and the plugin must keep serving. ``--internal-request`` names a valid request your game is
known to fail on (a test hook of yours): the suite then checks the ``internal`` reply, that the
episode ended, and that serving goes on.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

import zmq

from bridge import protocol as P


class CheckFailed(AssertionError):
    pass


def expect(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


@dataclass
class Report:
    results: list = field(default_factory=list)  # (name, ok, detail)
    out: Callable[[str], None] = print

    def run(self, name: str, fn: Callable[[], str | None]) -> bool:
        try:
            note = fn() or ""
            self.results.append((name, True, note))
            self.out(f"PASS {name}" + (f" ({note})" if note else ""))
            return True
        except CheckFailed as e:
            detail = str(e)
        except P.ProtocolError as e:
            detail = f"invalid message from the plugin: {e}"
        except TimeoutError as e:
            detail = str(e)
        except Exception as e:  # a conformance run must report, not crash, whatever the plugin does
            detail = f"{type(e).__name__}: {e}"
        self.results.append((name, False, detail))
        self.out(f"FAIL {name}: {detail}")
        return False

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(ok for _, ok, _ in self.results)


# ----------------------------------------------------------------------------- lockstep

class _Req:
    """Raw REQ socket with a timeout; reopened after a timeout so one silent answer does not
    poison every later check."""

    def __init__(self, ctx: zmq.Context, address: str, timeout: float):
        self.ctx, self.address, self.timeout = ctx, address, timeout
        self.sock = None
        self._open()

    def _open(self):
        if self.sock is not None:
            self.sock.close(linger=0)
        self.sock = self.ctx.socket(zmq.REQ)
        self.sock.linger = 0
        self.sock.connect(self.address)

    def raw(self, data: bytes | list[bytes], max_bytes: int = P.DEFAULT_TRACK_MAX_BYTES) -> dict:
        self.sock.send_multipart(data if isinstance(data, list) else [data])
        if not self.sock.poll(int(self.timeout * 1000), zmq.POLLIN):
            self._open()
            raise TimeoutError(f"no reply within {self.timeout} s")
        parts = self.sock.recv_multipart()
        if len(parts) != 1:
            raise CheckFailed(f"the reply has {len(parts)} frames; protocol v1 messages are one frame")
        return P.decode(parts[0], max_bytes)

    def call(self, msg: dict) -> dict:
        return self.raw(P.encode(msg))

    def close(self):
        self.sock.close(linger=0)


def _expect_error(reply: dict, codes: tuple[str, ...], what: str) -> None:
    expect(reply.get("type") == "error", f"{what}: expected an error reply, got type {reply.get('type')!r}")
    err = P.validate_error(reply)
    expect(err["code"] in codes, f"{what}: expected error code {' or '.join(codes)}, got {err['code']!r}"
                                 f" ({err['message']})")


def _frame(reply: dict, what: str) -> dict:
    if reply.get("type") == "error":
        raise CheckFailed(f"{what}: plugin answered error {reply.get('code')!r}: {reply.get('message')}")
    return P.validate_telemetry(reply)


HUGE_INT = b"9" * 400  # float() of it raises OverflowError: the number that crashed plugins


def _short_what(lit: str) -> str:
    return lit if len(lit) <= 12 else f"{lit[:4]}... ({len(lit.lstrip('-'))}-digit integer)"


def _with(msg: dict, key: str, literal: str, in_action: bool = False) -> bytes:
    """``msg`` encoded with ``key`` set to a raw JSON literal (one Python cannot encode: 1e400)."""
    marker = "__literal__"
    if in_action:
        msg = {**msg, "action": {**msg["action"], key: marker}}
    else:
        msg = {**msg, key: marker}
    return P.encode(msg).replace(f'"{marker}"'.encode(), literal.encode())


def check_lockstep(address: str, timeout: float = 2.0, report: Report | None = None,
                   context: zmq.Context | None = None, internal_request: bytes | None = None) -> Report:
    """Run the lockstep checks against the plugin at ``address``.

    ``internal_request``: a valid request (bytes) that the game is known to fail on; with it, the
    suite also checks the ``internal`` reply and what must follow it."""
    report = report or Report()
    ctx = context or zmq.Context.instance()
    req = _Req(ctx, address, timeout)
    st: dict = {}
    GO = {"steer": 0.0, "throttle": 1.0, "brake": 0.0}
    NEUTRAL = dict(P.NEUTRAL_ACTION)

    def hello():
        r = P.validate_hello_reply(req.call({**P.hello_request("conformance"), "extra_unknown_key": 1}))
        expect("lockstep" in r["modes"], f"hello modes {r['modes']} lack 'lockstep'")
        st["hello"] = r

    def step_before_reset():
        _expect_error(req.call(P.step_request(0, GO)), (P.NO_EPISODE,),
                      "step before any reset (run the suite against a freshly started plugin)")

    def track():
        r = req.call(P.track_request())
        if st["hello"]["track"]:
            P.validate_track_reply(r)
        else:
            _expect_error(r, (P.UNSUPPORTED,), "track when hello said track=false")

    def reset():
        f0 = _frame(req.call(P.reset_request(7)), "reset seed=7")
        expect(f0["t"] <= st["hello"]["dt"] + 1e-9, f"first frame t={f0['t']} should be ~0 (game seconds "
                                                    f"since the episode started)")
        f1 = _frame(req.call(P.reset_request(None)), "reset seed=null")
        expect(f1["episode"] == f0["episode"] + 1, f"episode should increment at reset: {f0['episode']} -> "
                                                   f"{f1['episode']}")
        expect(f1["seq"] == f0["seq"] + 1, f"seq should be +1 per frame: {f0['seq']} -> {f1['seq']}")
        st["last"] = f1

    def step():
        prev = st["last"]
        dt = st["hello"]["dt"]
        for i, ticks in enumerate((1, 3)):
            msg = P.step_request(100 + i, {"steer": 0.1, "throttle": 0.5, "brake": 0.0}, ticks)
            f = _frame(req.call(msg), f"step ticks={ticks}")
            expect(f["seq"] == prev["seq"] + 1, f"seq should be +1 per frame: {prev['seq']} -> {f['seq']}")
            expect(f["episode"] == prev["episode"], f"episode changed during a step: {prev['episode']} -> "
                                                    f"{f['episode']}")
            want = prev["t"] + ticks * dt
            expect(abs(f["t"] - want) <= 1e-6 + 1e-3 * dt,
                   f"t should advance by ticks*dt = {ticks * dt}: {prev['t']} -> {f['t']}")
            if "ack" in f:
                expect(f["ack"] == 100 + i, f"ack should be the step's seq {100 + i}, got {f['ack']}")
            prev = f
        f = _frame(req.call(P.step_request(102, GO)), "step without ticks (default 1)")
        expect(abs(f["t"] - prev["t"] - dt) <= 1e-6 + 1e-3 * dt, f"default ticks should be 1: t {prev['t']} -> "
                                                                 f"{f['t']}")
        st["last"] = f

    def units():
        _frame(req.call(P.reset_request(1)), "reset")
        frames = [_frame(req.call(P.step_request(200 + i, GO, 1)), "step") for i in range(150)]
        dt = st["hello"]["dt"]
        path = sum(math.hypot(b["x"] - a["x"], b["y"] - a["y"]) for a, b in zip(frames, frames[1:]))
        integ = sum(0.5 * (a["speed"] + b["speed"]) * (b["t"] - a["t"]) for a, b in zip(frames, frames[1:]))
        expect(path > 1.0, f"the car moved only {path:.3f} m in {150 * dt:.1f} s at full throttle")
        ratio = integ / path
        expect(0.6 < ratio < 1.6, f"integral of speed dt ({integ:.2f}) disagrees with distance travelled "
                                  f"({path:.2f} m): speed must be in m/s and x, y in m")
        errs = []
        for a, b in zip(frames, frames[1:]):
            if b["speed"] > 1.0 and math.hypot(b["x"] - a["x"], b["y"] - a["y"]) > 1e-3:
                heading = math.atan2(b["y"] - a["y"], b["x"] - a["x"])
                errs.append(abs(math.remainder(heading - b["yaw"], 2 * math.pi)))
        expect(errs, "too little motion to check yaw")
        errs.sort()
        med = errs[len(errs) // 2]
        expect(med < 0.35, f"yaw disagrees with the direction of motion by {med:.2f} rad (median): yaw must be "
                           f"radians, counter-clockwise, 0 along world +x")
        st["last"] = frames[-1]

    def errors():
        base = P.step_request(300, GO)
        cases = [
            ("malformed JSON", b'{"type": "step", "v": 1,', (P.BAD_REQUEST,)),
            ("not UTF-8", b'\xff\xfe{"type":"hello"}', (P.BAD_REQUEST,)),
            ("non-object", b"[1, 2, 3]", (P.BAD_REQUEST,)),
            ("type missing", b'{"v": 1}', (P.BAD_REQUEST,)),
            ("v missing", b'{"type": "hello"}', (P.BAD_REQUEST,)),
            ("v a string", b'{"type": "hello", "v": "1"}', (P.BAD_REQUEST,)),
            ("unknown type", P.encode({"type": "teleport", "v": 1}), (P.UNSUPPORTED,)),
            ("newer version", P.encode({**base, "v": 2}), (P.VERSION_ERR,)),
            ("ticks 0", P.encode({**base, "ticks": 0}), (P.BAD_REQUEST,)),
            ("ticks not an integer", P.encode({**base, "ticks": 1.5}), (P.BAD_REQUEST,)),
            ("seed a string", P.encode({"type": "reset", "v": 1, "seed": "7"}), (P.BAD_REQUEST,)),
            ("action missing", P.encode({k: v for k, v in base.items() if k != "action"}), (P.BAD_ACTION,)),
            ("control missing", P.encode({**base, "action": {"steer": 0.0, "throttle": 1.0}}), (P.BAD_ACTION,)),
            ("steer out of range", P.encode({**base, "action": {**GO, "steer": 1.5}}), (P.BAD_ACTION,)),
            ("throttle negative", P.encode({**base, "action": {**GO, "throttle": -0.5}}), (P.BAD_ACTION,)),
            ("control a string", P.encode({**base, "action": {**GO, "brake": "0"}}), (P.BAD_ACTION,)),
            # NaN/Infinity are not JSON: a strict parser calls it bad_request, a lenient one bad_action
            ("NaN control", b'{"type":"step","v":1,"seq":300,"action":{"steer":NaN,"throttle":0,"brake":0}}',
             (P.BAD_REQUEST, P.BAD_ACTION)),
            ("infinite control", b'{"type":"step","v":1,"seq":300,"action":{"steer":1e999,"throttle":0,'
                                 b'"brake":0}}', (P.BAD_REQUEST, P.BAD_ACTION)),
        ]
        expect_all(cases)

    def expect_all(cases) -> None:
        failures = []
        for what, data, codes in cases:
            try:
                _expect_error(req.raw(data), codes, what)
            except (CheckFailed, TimeoutError, P.ProtocolError) as e:
                failures.append(f"{what}: {e}")
        expect(not failures, f"{len(failures)} of {len(cases)} failed: " + "; ".join(failures))

    def in_episode(what: str) -> None:
        # Step faults are checked inside an episode, so a plugin that asks "is there an episode?"
        # before it looks at the fields is not taken for wrong (the contract leaves that order open).
        st["last"] = _frame(req.call(P.reset_request(None)), f"reset before the {what} checks")

    def bounds():
        in_episode("bounds")
        base = P.step_request(310, GO)
        reset = {"type": "reset", "v": 1}
        BR = (P.BAD_REQUEST,)
        BIG = HUGE_INT.decode()
        cases = [(f"ticks {t}", _with(base, "ticks", t), BR)
                 for t in ("1001", "0", "-1", "1000000000", "1.5", "1.0", '"2"', "true", "null", BIG, "1e400")]
        cases += [(f"seq {q}", _with(base, "seq", q), BR)
                  for q in ("-1", str(P.MAX_SEQ + 1), "1.5", '"3"', "true", BIG, "1e400")]
        cases += [(f"seed {d}", _with(reset, "seed", d), BR)
                  for d in ("-1", str(P.MAX_SEED + 1), "7.0", '"7"', "true", BIG, "-" + BIG, "1e400")]
        expect_all([(_short_what(w), d, c) for w, d, c in cases])

    def numbers():
        in_episode("number")
        base = P.step_request(320, GO)
        cases = []
        for k in P.CONTROLS:
            for lit in (HUGE_INT.decode(), "-" + HUGE_INT.decode(), "1e400", "-1e400"):
                # valid JSON numbers too large for a float: bad_action (the field) or bad_request (the parser)
                cases.append((f"{k} {_short_what(lit)}", _with(base, k, lit, in_action=True),
                              (P.BAD_ACTION, P.BAD_REQUEST)))
            for lit in ("1e308", "true", "null", "[0.5]"):
                cases.append((f"{k} {lit}", _with(base, k, lit, in_action=True), (P.BAD_ACTION,)))
        for lit in (HUGE_INT.decode(), "1e400"):
            cases.append((f"v {_short_what(lit)}", b'{"type":"hello","v":%s}' % lit.encode(),
                          (P.BAD_REQUEST, P.VERSION_ERR)))
        expect_all(cases)

    def nesting():
        in_episode("nesting")
        depth = 30000
        cases = [
            (f"an array nested {depth} deep", b"[" * depth + b"]" * depth, (P.BAD_REQUEST,)),
            (f"an object nested {depth // 6} deep", b'{"a":' * (depth // 6) + b"1" + b"}" * (depth // 6),
             (P.BAD_REQUEST,)),
            (f"a step whose action is nested {depth} deep",
             b'{"type":"step","v":1,"seq":330,"action":' + b"[" * depth + b"]" * depth + b"}",
             (P.BAD_REQUEST, P.BAD_ACTION)),
            ("a two-frame request", [P.encode(P.hello_request("conformance")), b"second frame"], (P.BAD_REQUEST,)),
        ]
        expect_all(cases)
        # Not errors by themselves: a plugin may refuse them or ignore the unknown key, but it must answer.
        for what, data in ((f"an unknown key nested {depth} deep",
                            b'{"type":"hello","v":1,"x":' + b"[" * depth + b"]" * depth + b"}"),
                           ("a 1 MiB message", P.encode({**P.hello_request("conformance"), "pad": "x" * (1 << 20)}))):
            try:
                r = req.raw(data)
            except TimeoutError as e:
                raise CheckFailed(f"{what}: {e}") from None
            if r.get("type") == "error":
                _expect_error(r, (P.BAD_REQUEST,), what)
            else:
                expect(r.get("type") == "hello", f"{what}: expected a hello or a bad_request error, got "
                                                 f"type {r.get('type')!r}")

    def keeps_serving():
        prev = st["last"]
        f = _frame(req.call({**P.step_request(400, GO), "unknown_future_key": {"a": 1}}),
                   "step after the error replies (with an unknown key)")
        expect(f["episode"] == prev["episode"] and f["seq"] > prev["seq"],
               f"the episode should continue after error replies: episode {prev['episode']} -> {f['episode']}")

    def after_internal(what: str, reply: dict) -> None:
        """The contract after 'internal': the episode is over, and the plugin keeps serving."""
        expect(P.validate_error(reply)["code"] == P.INTERNAL, f"{what}: expected telemetry or error 'internal', "
                                                              f"got error {reply.get('code')!r}")
        _expect_error(req.call(P.step_request(390, GO)), (P.NO_EPISODE,),
                      f"a step after 'internal' for {what} (the episode must be over)")
        f = _frame(req.call(P.reset_request(None)), f"a reset after 'internal' for {what}")
        st["last"] = f

    def served(what: str, msg: dict, notes: list) -> dict | None:
        try:
            r = req.call(msg)
        except TimeoutError as e:
            raise CheckFailed(f"{what}: {e} (a valid request must be answered: telemetry, or error "
                              f"'internal' if the game fails)") from None
        if r.get("type") == "error":
            after_internal(what, r)
            notes.append(f"the game failed on {what}: answered 'internal' as it should")
            return None
        return P.validate_telemetry(r)

    def edge_cases():
        notes: list[str] = []
        dt = st["hello"]["dt"]
        for seed in (0, P.MAX_SEED):
            served(f"reset seed={seed}", P.reset_request(seed), notes)
        f0 = served("reset seed=null", P.reset_request(None), notes)
        if f0 is not None:
            f = served("step ticks=1000", {**P.step_request(340, NEUTRAL), "ticks": P.MAX_TICKS}, notes)
            if f is not None:
                expect(abs(f["t"] - f0["t"] - P.MAX_TICKS * dt) <= 1e-6 + 1e-3 * P.MAX_TICKS * dt,
                       f"t should advance by 1000*dt = {P.MAX_TICKS * dt}: {f0['t']} -> {f['t']}")
        served("reset seed=null", P.reset_request(None), notes)
        for i, a in enumerate(({"steer": -1.0, "throttle": 1.0, "brake": 1.0}, {"steer": 1.0, "throttle": 0.0, "brake": 1.0},
                               {"steer": 1.0, "throttle": 1.0, "brake": 0.0}, {"steer": -1.0, "throttle": 0.0, "brake": 0.0})):
            served(f"step {a}", P.step_request(350 + i, a), notes)
        f = served("step seq=2^53", P.step_request(P.MAX_SEQ, GO), notes)
        if f is not None and "ack" in f:
            expect(f["ack"] == P.MAX_SEQ, f"ack should echo seq 2^53 = {P.MAX_SEQ}, got {f['ack']}")
        st["last"] = served("reset seed=null", P.reset_request(None), notes) or st.get("last")
        return "; ".join(notes)

    def internal():
        _frame(req.call(P.reset_request(None)), "reset before the internal request")
        try:
            r = req.raw(internal_request)
        except TimeoutError as e:
            raise CheckFailed(f"the request the game fails on was not answered: {e}") from None
        expect(r.get("type") == "error", f"the request the game fails on should be answered with error "
                                         f"'internal', got type {r.get('type')!r}")
        after_internal("the request the game fails on", r)
        r = P.validate_hello_reply(req.call(P.hello_request("conformance")))
        expect(r["game"] == st["hello"]["game"], "hello after 'internal' names another game")

    def close():
        r = req.call(P.close_request())
        expect(r.get("type") == "bye", f"close should be answered with bye, got {r.get('type')!r}")

    checks = [("hello", hello), ("step before reset -> no_episode", step_before_reset), ("track", track),
              ("reset: episode and seq counters", reset), ("step: seq, t, ticks, ack", step),
              ("units: speed m/s, pose m, yaw rad CCW from +x", units),
              ("error codes on bad requests", errors),
              ("bounds: ticks 1..1000, seq 0..2^53, seed 0..2^32-1 or null", bounds),
              ("numbers too large for a float, booleans, null in every control and v", numbers),
              ("deep nesting, oversize and multi-frame requests", nesting),
              ("keeps serving after errors", keeps_serving),
              ("valid edge cases answered (ticks 1000, extreme seeds, controls, seq)", edge_cases)]
    if internal_request is not None:
        checks.append(("a game that raises -> internal, episode over, keeps serving", internal))
    checks.append(("close -> bye", close))
    try:
        for name, fn in checks:
            if not report.run(name, fn) and name == "hello":
                break  # nothing else can be checked without a handshake
    finally:
        req.close()
    return report


# ----------------------------------------------------------------------------- real time

def check_realtime(pub_address: str, pull_address: str, action_timeout: float = 0.5, timeout: float = 3.0,
                   report: Report | None = None, context: zmq.Context | None = None) -> Report:
    report = report or Report()
    ctx = context or zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(pub_address)
    push = ctx.socket(zmq.PUSH)
    push.linger = 0
    push.connect(pull_address)
    st: dict = {"seq": 1000}

    def recv(t: float = timeout) -> dict:
        if not sub.poll(int(t * 1000), zmq.POLLIN):
            raise TimeoutError(f"no telemetry within {t} s on {pub_address}")
        return P.validate_telemetry(P.decode(sub.recv()))

    def drain() -> None:
        # The SUB is not conflated (the suite wants every seq), so skip what queued while we slept.
        while sub.poll(0, zmq.POLLIN):
            P.validate_telemetry(P.decode(sub.recv()))

    def frames_until(pred, t: float, what: str) -> dict:
        end = time.monotonic() + t
        while time.monotonic() < end:
            f = recv(max(0.01, end - time.monotonic()))
            if pred(f):
                return f
        raise CheckFailed(f"{what}: not seen within {t} s")

    def send_action(steer, throttle, brake, seq=None) -> int:
        if seq is None:
            st["seq"] += 1
            seq = st["seq"]
        push.send(P.encode(P.action_message(seq, steer, throttle, brake)))
        return seq

    def published():
        t0 = time.monotonic()
        fs = [recv()]
        while time.monotonic() - t0 < 1.0:
            fs.append(recv())
        seqs = [f["seq"] for f in fs]
        expect(all(b > a for a, b in zip(seqs, seqs[1:])), f"seq must increase: {seqs[:10]}...")
        expect(len(fs) >= 5, f"only {len(fs)} frames in 1 s")
        st["rate"] = len(fs) / (time.monotonic() - t0)
        st["last"] = fs[-1]

    def reset():
        e = st["last"]["episode"]
        push.send(P.encode(P.reset_request(3)))
        f = frames_until(lambda f: f["episode"] > e, timeout, "a frame with a new episode after reset")
        expect(f["episode"] == e + 1, f"episode should increment by 1 at reset: {e} -> {f['episode']}")
        expect(f["t"] < 1.0, f"t should restart near 0 after reset, got {f['t']}")

    def acknowledged():
        seq = send_action(0.25, 0.75, 0.0)
        f = frames_until(lambda f: f.get("ack") == seq, timeout, f"a frame acknowledging action seq {seq}")
        expect(abs(f["steer"] - 0.25) < 1e-6 and abs(f["throttle"] - 0.75) < 1e-6 and f["brake"] == 0.0,
               f"frame acknowledging seq {seq} should report the applied inputs 0.25/0.75/0, got "
               f"{f['steer']}/{f['throttle']}/{f['brake']}")

    def older_dropped():
        hi = send_action(0.0, 0.5, 0.0)
        frames_until(lambda f: f.get("ack") == hi, timeout, f"ack of seq {hi}")
        send_action(0.0, 0.0, 1.0, seq=hi - 5)
        end = time.monotonic() + 0.2
        while time.monotonic() < end:
            f = recv()
            expect(f.get("ack") != hi - 5 and f["brake"] == 0.0,
                   f"an action with older seq {hi - 5} was applied (frame ack={f.get('ack')}, brake={f['brake']})")

    def malformed_ignored():
        for junk in (b"{bad json", b"[]", b'{"type":"action","v":1,"seq":1,"steer":NaN,"throttle":0,"brake":0}',
                     P.encode(P.action_message(st["seq"] + 100, 5.0, 0.0, 0.0)), P.encode({"type": "x", "v": 1}),
                     P.encode({**P.action_message(st["seq"] + 101, 0, 0, 1.0), "v": 2})):
            push.send(junk)
        time.sleep(0.1)
        drain()
        f = recv()
        expect(f["steer"] <= 1.0 and f["brake"] == 0.0, "an invalid action was applied")
        st["last"] = f

    def hostile_ignored():
        drain()
        e = recv()["episode"]
        big = HUGE_INT
        junk = [b'{"type":"reset","v":1,"seed":%s}' % d for d in
                (b"-1", str(P.MAX_SEED + 1).encode(), big, b"1e400", b"7.5", b'"7"', b"true")]
        base = P.action_message(st["seq"] + 200, 0.0, 0.0, 1.0)
        for k in P.CONTROLS:
            for lit in (big.decode(), "-" + big.decode(), "1e400", "true"):
                junk.append(_with(base, k, lit))
        junk += [_with(base, "seq", lit) for lit in (big.decode(), "-1", str(P.MAX_SEQ + 1), "1.5")]
        junk += [b"[" * 30000 + b"]" * 30000, b'{"type":"action","v":1,"seq":' + b"[" * 30000 + b"]" * 30000 + b"}",
                 b'{"type":"hello","v":%s}' % big]
        for m in junk:
            push.send(m)
        push.send_multipart([P.encode(P.reset_request(None)), b"second frame"])  # one message, two frames
        time.sleep(0.3)
        drain()
        f = recv()
        expect(f["episode"] == e, f"an invalid reset (seed out of range, not an integer, or a two-frame message) "
                                  f"started a new episode: {e} -> {f['episode']}")
        expect(f["brake"] == 0.0, f"an invalid action was applied (brake {f['brake']})")
        st["last"] = f

    def neutral_after_timeout():
        seq = send_action(0.3, 1.0, 0.0)
        frames_until(lambda f: f.get("ack") == seq, timeout, f"ack of seq {seq}")
        time.sleep(action_timeout + 0.25)
        drain()
        f = recv()
        expect((f["steer"], f["throttle"], f["brake"]) == (0.0, 0.0, 0.0),
               f"{action_timeout + 0.25:.2f} s without actions the applied inputs should be neutral (0, 0, 0), "
               f"got ({f['steer']}, {f['throttle']}, {f['brake']})")

    checks = [("frames published, seq increases", published), ("reset -> new episode", reset),
              ("actions applied and acknowledged", acknowledged), ("older action seq dropped", older_dropped),
              ("malformed messages ignored", malformed_ignored),
              ("out-of-range seeds, huge numbers, deep nesting, multi-frame messages ignored", hostile_ignored),
              (f"neutral action after action_timeout ({action_timeout} s)", neutral_after_timeout)]
    try:
        for name, fn in checks:
            if not report.run(name, fn) and name.startswith("frames published"):
                break
    finally:
        sub.close(linger=0)
        push.close(linger=0)
    return report


def _has_port(parts) -> bool:
    try:
        return parts.port is not None
    except ValueError:
        return False


def _next_port(address: str) -> str:
    parts = urlsplit(address)
    return f"{parts.scheme}://{parts.hostname}:{parts.port + 1}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bridge.conformance", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("address", help="lockstep: the REP address; realtime: the PUB (telemetry) address")
    ap.add_argument("--mode", choices=["lockstep", "realtime"], default="lockstep")
    ap.add_argument("--actions", help="realtime: the PULL (actions) address; default: PUB port + 1")
    ap.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for a reply or frame")
    ap.add_argument("--action-timeout", type=float, default=0.5, help="realtime: the plugin's action_timeout")
    ap.add_argument("--internal-request", metavar="JSON",
                    help="lockstep: a valid request your game is known to fail on (a test hook of yours); "
                         "checks the 'internal' reply, that the episode ended, and that serving goes on")
    args = ap.parse_args(argv)
    if args.internal_request is not None and args.mode != "lockstep":
        ap.error("--internal-request is a lockstep check")
    for a in (args.address, args.actions):
        if a is not None:
            parts = urlsplit(a)
            if parts.scheme not in ("tcp", "ipc") or (parts.scheme == "tcp" and not _has_port(parts)):
                ap.error(f"address {a!r} is not a ZeroMQ endpoint: use tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555")
    ctx = zmq.Context()
    try:
        if args.mode == "lockstep":
            internal = args.internal_request.encode() if args.internal_request is not None else None
            report = check_lockstep(args.address, args.timeout, context=ctx, internal_request=internal)
        else:
            report = check_realtime(args.address, args.actions or _next_port(args.address), args.action_timeout,
                                    args.timeout, context=ctx)
    finally:
        ctx.destroy(linger=0)
    n_ok = sum(ok for _, ok, _ in report.results)
    print(f"{n_ok}/{len(report.results)} checks passed")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
