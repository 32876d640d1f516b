"""Property-based fuzzing of both sides of the bridge (Hypothesis), in-process for speed.

Plugin side: the SDK serving the example kinematic game is fed generated and mutated requests; every
reply must be what an independent reading of the contract says (the oracle in
benchmarks/fuzz_bridge.py), and the plugin must keep serving. Trainer side: the clients are fed
generated and mutated frames; they must never crash, hand over only valid frames, and count every
invalid one. Long campaigns: ``python benchmarks/fuzz_bridge.py --messages 200000``.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
from collections import deque

import pytest
import zmq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bridge import protocol as P
from bridge.client import BridgeUnavailable, LockstepClient, RealtimeClient, RemoteError
from bridge.games.kinematic import KinematicCarGame
from bridge.sdk import LockstepServer, RealtimeServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("fuzz_bridge", os.path.join(ROOT, "benchmarks", "fuzz_bridge.py"))
F = sys.modules.setdefault("fuzz_bridge", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(F)

FUZZ = settings(max_examples=120, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
CTX = zmq.Context.instance()
_names = iter(range(10 ** 9))


def inproc() -> str:
    return f"inproc://test-fuzz-{os.getpid()}-{next(_names)}"


# ----------------------------------------------------------------------------- strategies

huge_int = st.builds(lambda sign, n: sign + "9" * n, st.sampled_from(["", "-"]),
                     st.sampled_from([300, 309, 310, 400, 4301, 20000]))
number_literal = st.one_of(st.sampled_from(F.NUMBER_LITERALS + F.CONSTANTS), huge_int,
                           st.integers(-(2 ** 70), 2 ** 70).map(str))
nesting = st.builds(lambda d, obj: ('{"a":' * d + "1" + "}" * d) if obj else "[" * d + "]" * d,
                    st.sampled_from(F.DEPTHS), st.booleans())
leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 60), 2 ** 60), st.sampled_from(F.BOUNDARY_INTS),
                 st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                 number_literal.map(F.Raw), nesting.map(F.Raw))
json_value = st.recursive(leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                          max_leaves=6)
unit = st.floats(0.0, 1.0)
controls = st.fixed_dictionaries({"steer": st.floats(-1.0, 1.0), "throttle": unit, "brake": unit})


field_value = st.one_of(leaf, leaf, json_value)
big = st.one_of(huge_int, st.sampled_from(["1e400", "-1e400", "1e309"])).map(F.Raw)
# Each field drawn from its valid range, its edges, just past them, the wrong kind, or too large
# for a float: so every message tries one field's limits at least.
seeds = st.one_of(st.none(), st.integers(0, P.MAX_SEED),
                  st.sampled_from([0, P.MAX_SEED, -1, P.MAX_SEED + 1, -(2 ** 63), 2 ** 64, 7.0, True, "7"]), big)
seqs = st.one_of(st.integers(0, P.MAX_SEQ), st.sampled_from([0, P.MAX_SEQ, -1, P.MAX_SEQ + 1, 1.0, False, "3"]), big)
ticks = st.one_of(st.integers(1, 5), st.sampled_from([1, 1000, 1001, 0, -1, 10 ** 9, 1.5, 2.0, True, None, "2"]), big)


def control(lo: float, hi: float):
    return st.one_of(st.floats(lo, hi), st.floats(lo, hi), st.sampled_from([lo, hi, lo - 1e-9, hi + 1e-9, 1e308]),
                     st.sampled_from([True, None, "0.5", [0.5]]), big, number_literal.map(F.Raw))


def actions(plain: bool = False):
    if plain:
        return controls
    return st.fixed_dictionaries({k: control(*P.CONTROL_RANGES[k]) for k in P.CONTROLS})


@st.composite
def mutated(draw, base: dict, sub: str | None = None) -> list[bytes]:
    """``base``, in one message of four, with a field replaced, dropped or added; in one of five
    with its bytes corrupted."""
    msg = dict(base)
    keys = sorted([k for k in msg if k not in ("type", "v")] * 4 + ["type", "v", "future"])
    if draw(st.booleans()) and draw(st.booleans()):
        key = draw(st.sampled_from(keys))
        if draw(st.booleans()):
            msg.pop(key, None)
        elif key == sub and isinstance(msg.get(sub), dict):
            msg[sub] = {**msg[sub], draw(st.sampled_from(sorted(msg[sub]))): draw(field_value)}
        else:
            msg[key] = draw(field_value)
    data = F.dumps(msg).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 4)) == 4:
        how = draw(st.sampled_from(["flip", "cut", "insert", "garbage"]))
        if how == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1:]
        elif how == "cut":
            data = data[:draw(st.integers(0, len(data)))]
        elif how == "insert":
            i = draw(st.integers(0, len(data)))
            data = data[:i] + draw(st.sampled_from([b"NaN", b"1e400", b"9" * 400, b"[" * 40, b"\xff", b'"'])) + data[i:]
        else:
            data = draw(st.binary(max_size=64))
    return [data]


@st.composite
def lockstep_requests(draw) -> list[bytes]:
    t = draw(st.sampled_from(["step", "reset", "step", "hello", "track", "close", "teleport"]))
    base: dict = {"type": t, "v": 1}
    if t == "hello":
        base["client"] = "fuzz"
    elif t == "reset":
        base["seed"] = draw(seeds)
    elif t == "step":
        base["seq"] = draw(seqs)
        base["action"] = draw(actions(plain=draw(st.booleans())))
        if draw(st.booleans()):
            base["ticks"] = draw(ticks)
    return draw(mutated(base, "action"))


@st.composite
def realtime_messages(draw) -> list[bytes]:
    if draw(st.integers(0, 3)):
        base = {"type": "action", "v": 1, "seq": draw(st.one_of(st.integers(0, 2 ** 20), seqs)),
                **draw(actions(plain=draw(st.booleans())))}
    else:
        base = {"type": "reset", "v": 1, "seed": draw(seeds)}
    return draw(mutated(base))


counters = st.one_of(st.sampled_from([0, 2 ** 53, 2 ** 53 + 1, -1, 1.0, True, None]), big)
reals = st.one_of(st.sampled_from([0.0, -1e-9, 1e308, -1e308, True, None, "1", [1.0]]), big, number_literal.map(F.Raw))
EDGES = {"seq": counters, "episode": counters, "lap": counters, "ack": counters, "on_track": st.sampled_from([1, "true", 0]),
         "done": st.sampled_from([1, "false"]), "reason": st.sampled_from([1, True, ["crash"]]),
         **{k: reals for k in ("t", "x", "y", "yaw", "speed", "accel_long", "lap_dist", "steer", "throttle", "brake")}}


@st.composite
def telemetry_frames(draw, clean_share: int = 2) -> list[bytes]:
    frame = {"type": "telemetry", "v": 1, "seq": draw(st.integers(0, 2 ** 53)), "episode": draw(st.integers(0, 99)),
             "t": draw(st.floats(0, 1e4)), "x": draw(st.floats(-1e4, 1e4)), "y": draw(st.floats(-1e4, 1e4)),
             "yaw": draw(st.floats(-4, 4)), "speed": draw(st.floats(0, 100)), **draw(controls)}
    for k, s in (("accel_long", st.floats(-50, 50)), ("lap", st.integers(0, 9)), ("lap_dist", st.floats(0, 5e3)),
                 ("on_track", st.booleans()), ("ack", st.integers(0, 2 ** 53)), ("done", st.booleans()),
                 ("reason", st.sampled_from(["crash", "finish"]))):
        if draw(st.booleans()):
            frame[k] = draw(st.one_of(st.none(), s))
    kind = draw(st.integers(0, clean_share + 3))
    if kind < clean_share:
        return [P.encode(frame)]
    if kind == clean_share:
        code = draw(st.sampled_from(F.CODES + ("boom",)))
        return [P.encode({"type": "error", "v": 1, "code": code, "message": "fuzz"})]
    if kind == clean_share + 1:  # one field at or past its limits
        k = draw(st.sampled_from(sorted(EDGES)))
        frame[k] = draw(EDGES[k])
        return [F.dumps(frame).encode()]
    return draw(mutated(frame))


# ----------------------------------------------------------------------------- plugin side

STEP = b'{"type":"step","v":1,"seq":%s,"action":{"steer":%s,"throttle":0.5,"brake":0}%s}'
ISSUE_REQUESTS = [  # what broke the plugin before the contract bounded it (issue 17), then their neighbours
    [b'{"type":"reset","v":1,"seed":1}'], [STEP % (b"1", b"0", b',"ticks":1000000000')],
    [STEP % (b"2", b"9" * 400, b"")], [STEP % (b"9" * 400, b"0", b"")], [b'{"type":"reset","v":1,"seed":' + b"9" * 400 + b"}"],
    [b'{"type":"reset","v":1,"seed":-1}'], [b'{"type":"reset","v":1,"seed":4294967296}'],
    [STEP % (b"9007199254740993", b"0", b"")], [STEP % (b"3", b"1e400", b"")], [STEP % (b"4", b"0", b',"ticks":1001')],
    [STEP % (b"5", b"0", b',"ticks":1000')], [b"[" * 50000], [STEP % (b"6", b"[" * 30000 + b"]" * 30000, b"")],
]


@FUZZ
@given(st.lists(lockstep_requests(), min_size=1, max_size=10))
@example(ISSUE_REQUESTS)
def test_plugin_answers_every_request_as_the_contract_says_and_keeps_serving(requests):
    server = LockstepServer(KinematicCarGame(), inproc(), context=CTX)
    try:
        in_episode = False
        for parts in requests:
            verdict = F.oracle_request(parts)
            reply, _ = server.handle(parts[0])
            problem, what = F._check_reply([reply], verdict, in_episode)
            assert problem is None, (problem, what, parts[0][:200])
            if verdict == ("ok", "reset"):
                in_episode = True
        assert P.decode(server.handle(P.encode(P.hello_request()))[0])["type"] == "hello"
        assert P.decode(server.handle(P.encode(P.reset_request(1)))[0])["type"] == "telemetry"
        step = P.step_request(0, {"steer": 0.0, "throttle": 1.0, "brake": 0.0})
        assert P.decode(server.handle(P.encode(step))[0])["type"] == "telemetry"
        assert server.stats.game_errors == 0
    finally:
        server.close()


@FUZZ
@given(st.lists(realtime_messages(), min_size=1, max_size=10))
def test_realtime_plugin_applies_exactly_the_valid_messages_and_keeps_publishing(messages):
    server = RealtimeServer(KinematicCarGame(), inproc(), inproc(), context=CTX, clock=lambda: 0.0)
    push = CTX.socket(zmq.PUSH)
    push.linger = 0
    push.connect(server.pull_address)
    try:
        first = server.tick()
        episode, ack, applied = first["episode"], None, dict(P.NEUTRAL_ACTION)
        for parts in messages:
            kind = F.oracle_realtime(parts)
            push.send_multipart(parts)
            if kind == "reset":
                episode, ack, applied = episode + 1, None, dict(P.NEUTRAL_ACTION)
            elif kind == "action":
                m = F.parse(parts)
                if ack is None or m["seq"] > ack:
                    ack, applied = int(m["seq"]), {k: F.number(m[k]) for k in P.CONTROLS}
            frame = server.tick()
            assert frame is not None, parts
            got = {k: frame[k] for k in P.CONTROLS}
            assert (frame["episode"], frame.get("ack"), got) == (episode, ack, applied), parts[0][:200]
    finally:
        push.close(linger=0)
        server.close()


# ----------------------------------------------------------------------------- trainer side

def frame_with(**over) -> list[bytes]:
    f = {"type": "telemetry", "v": 1, "seq": 1, "episode": 0, "t": 0.0, "x": 0.0, "y": 0.0, "yaw": 0.0, "speed": 0.0,
         "steer": 0.0, "throttle": 0.0, "brake": 0.0, **over}
    return [F.dumps(f).encode()]


ISSUE_FRAMES = [frame_with(), frame_with(x=F.Raw("9" * 400)), frame_with(seq=F.Raw("9" * 400)), frame_with(seq=2 ** 53),
                frame_with(seq=2 ** 53 + 1), frame_with(ack=2 ** 53 + 1), frame_with(lap=-1), frame_with(speed=F.Raw("1e400")),
                frame_with(t=True), frame_with(episode=1.0), frame_with(lap_dist=None), frame_with(on_track=1),
                frame_with(x=F.Raw("[" * 40 + "]" * 40)), [b"[" * 50000], frame_with(v=F.Raw("9" * 309))]


@FUZZ
@given(st.lists(telemetry_frames(clean_share=1), min_size=1, max_size=20))
@example(ISSUE_FRAMES)
def test_realtime_client_takes_exactly_the_valid_frames_and_counts_the_rest(frames):
    client = RealtimeClient(inproc(), inproc(), context=CTX)
    try:
        for i, parts in enumerate(frames):
            valid = F.oracle_telemetry(parts)
            before = client.stats.invalid
            frame = client.ingest(parts)
            assert (frame is not None) == valid, parts[0][:200]
            assert client.stats.invalid == before + (not valid)
    finally:
        client.close()


class QueuePlugin:
    """A fake lockstep plugin answering each request with the next queued reply (a valid frame when
    the queue is empty), remembering whether its last reply was valid telemetry."""

    def __init__(self):
        self.address = inproc()
        self.sock = CTX.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.bind(self.address)
        self.queue: deque = deque()
        self.last_valid = True
        self.expected_invalid = 0
        self.seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            if not self.sock.poll(10):
                continue
            ident, _, body = self.sock.recv_multipart()
            self.seq += 1
            parts = self.queue.popleft() if self.queue else [P.encode(P.telemetry(
                seq=self.seq, episode=0, t=0.0, x=0, y=0, yaw=0, speed=0, steer=0, throttle=0, brake=0))]
            self.last_valid = F.oracle_telemetry(parts)
            if not self.last_valid and F.oracle_error(parts) not in F.FakePlugin.NOT_INVALID:
                self.expected_invalid += 1
            self.sock.send_multipart([ident, b"", *parts])

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close(linger=0)


@pytest.fixture(scope="module")
def queue_plugin():
    p = QueuePlugin()
    yield p
    p.close()


@FUZZ
@given(replies=st.lists(telemetry_frames(), min_size=1, max_size=12), seed=st.integers(0, 10))
@example(replies=ISSUE_FRAMES, seed=0)
def test_lockstep_client_never_crashes_hands_over_only_valid_frames_and_counts_the_rest(queue_plugin, replies, seed):
    plugin = queue_plugin
    plugin.queue, plugin.expected_invalid = deque(replies), 0
    client = LockstepClient(plugin.address, timeout=2.0, retries=2, context=CTX)
    try:
        need_reset = True
        for _ in range(len(replies) + 2):
            try:
                r = client.reset(seed) if need_reset else client.step({"steer": 0.1, "throttle": 0.5, "brake": 0.0})
                need_reset = False
                assert plugin.last_valid, "the client handed over a frame from an invalid reply"
            except BridgeUnavailable:
                need_reset = True
            except RemoteError as e:
                assert e.code in (P.UNSUPPORTED, P.VERSION_ERR), e
                need_reset = True
        assert not plugin.queue
        assert client.stats.invalid == plugin.expected_invalid
        assert client.stats.timeouts == 0
    finally:
        client.close(say_bye=False)


# ----------------------------------------------------------------------------- the long-campaign tool

def test_fuzz_campaign_runs_and_prints_the_summary_line_with_zero_findings():
    out = subprocess.run([sys.executable, "benchmarks/fuzz_bridge.py", "--messages", "400", "--no-progress"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    last = out.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"plugin_messages=(\d+) plugin_crashes=(\d+) plugin_hangs=(\d+) trainer_frames=(\d+) "
                     r"trainer_crashes=(\d+) invalid_accepted=(\d+)", last)
    assert m, out.stdout[-2000:] + out.stderr[-2000:]
    plugin_messages, plugin_crashes, hangs, trainer_frames, trainer_crashes, accepted = map(int, m.groups())
    # a client's reset may take a few more replies (retries) than asked for: at least, never fewer
    assert plugin_messages == 400 and 400 <= trainer_frames < 420, last
    assert (plugin_crashes, hangs, trainer_crashes, accepted) == (0, 0, 0, 0), out.stdout[-3000:]
    assert out.returncode == 0


def test_oracle_agrees_with_the_contract_on_the_issue_cases():
    step = b'{"type":"step","v":1,"seq":1,"action":{"steer":%s,"throttle":0,"brake":0}%s}'
    assert F.oracle_request([step % (b"0", b',"ticks":1000000000')]) == ("error", "bad_request")
    assert F.oracle_request([step % (b"9" * 400, b"")]) == ("error", "bad_action")
    assert F.oracle_request([b'{"type":"reset","v":1,"seed":-1}']) == ("error", "bad_request")
    assert F.oracle_request([step % (b"0.5", b',"ticks":1000')]) == ("ok", "step")
    frame = json.loads(P.encode(P.telemetry(seq=1, episode=0, t=0, x=0, y=0, yaw=0, speed=0, steer=0, throttle=0,
                                            brake=0)))
    assert F.oracle_telemetry([json.dumps(frame).encode()])
    assert not F.oracle_telemetry([json.dumps({**frame, "x": 1}).encode().replace(b'"x": 1', b'"x": ' + b"9" * 400)])
