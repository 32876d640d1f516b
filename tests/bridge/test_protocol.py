import json
import math

import pytest

from bridge import protocol as P


def err_code(fn, *a):
    with pytest.raises(P.ProtocolError) as ei:
        fn(*a)
    return ei.value.code


def test_decode_rejects_each_malformed_input_with_the_contract_code():
    assert err_code(P.decode, b"\xff\xfe") == P.BAD_REQUEST  # not UTF-8
    assert err_code(P.decode, b"{not json") == P.BAD_REQUEST
    assert err_code(P.decode, b"[1,2]") == P.BAD_REQUEST  # not an object
    assert err_code(P.decode, b'{"v":1}') == P.BAD_REQUEST  # type missing
    assert err_code(P.decode, b'{"type":3,"v":1}') == P.BAD_REQUEST  # type wrong type
    assert err_code(P.decode, b'{"type":"hello"}') == P.BAD_REQUEST  # v missing
    assert err_code(P.decode, b'{"type":"hello","v":"1"}') == P.BAD_REQUEST
    assert err_code(P.decode, b'{"type":"hello","v":true}') == P.BAD_REQUEST
    assert err_code(P.decode, b'{"type":"hello","v":2}') == P.VERSION_ERR
    assert err_code(P.decode, b'{"type":"hello","v":1,"x":NaN}') == P.BAD_REQUEST
    assert err_code(P.decode, b'{"type":"hello","v":1,"x":Infinity}') == P.BAD_REQUEST


def test_decode_rejects_oversize_before_parsing_and_limit_is_configurable():
    msg = P.encode({"type": "hello", "v": 1, "pad": "x" * 2000})
    assert err_code(P.decode, msg, 1000) == P.BAD_REQUEST
    assert P.decode(msg, 4000)["type"] == "hello"


def test_request_validation_codes():
    v = lambda m: P.validate_request(m)  # noqa: E731
    good = P.step_request(3, {"steer": -1.0, "throttle": 1.0, "brake": 0.0}, 2)
    assert v(good)["ticks"] == 2 and v(good)["action"]["steer"] == -1.0
    assert v({"type": "step", "v": 1, "seq": 0, "action": good["action"]})["ticks"] == 1  # default
    assert err_code(v, {"type": "fly", "v": 1}) == P.UNSUPPORTED
    assert err_code(v, {**good, "ticks": 0}) == P.BAD_REQUEST
    assert err_code(v, {**good, "ticks": 1.5}) == P.BAD_REQUEST
    assert err_code(v, {**good, "seq": "3"}) == P.BAD_REQUEST
    assert err_code(v, {"type": "reset", "v": 1, "seed": "7"}) == P.BAD_REQUEST
    assert err_code(v, {"type": "reset", "v": 1, "seed": 1.0}) == P.BAD_REQUEST
    assert v({"type": "reset", "v": 1})["seed"] is None
    assert err_code(v, {k: x for k, x in good.items() if k != "action"}) == P.BAD_ACTION
    for bad in ({"steer": 1.01, "throttle": 0, "brake": 0}, {"steer": 0, "throttle": -0.1, "brake": 0},
                {"steer": 0, "throttle": 0, "brake": 1.5}, {"steer": 0, "throttle": 0},
                {"steer": float("nan"), "throttle": 0, "brake": 0}, {"steer": "0", "throttle": 0, "brake": 0},
                {"steer": True, "throttle": 0, "brake": 0}, [0, 0, 0]):
        assert err_code(v, {**good, "action": bad}) == P.BAD_ACTION, bad


def test_unknown_keys_are_ignored_and_dropped():
    req = P.validate_request({"type": "hello", "v": 1, "client": "c", "future_key": [1, 2]})
    assert "future_key" not in req
    frame = P.telemetry(seq=0, episode=0, t=0.0, x=1, y=2, yaw=0.1, speed=3, steer=0, throttle=1, brake=0,
                        tyre_temp=80)
    assert "tyre_temp" not in frame and frame["x"] == 1.0


def test_telemetry_validation_names_the_bad_field():
    base = dict(type="telemetry", v=1, seq=1, episode=0, t=0.5, x=0.0, y=0.0, yaw=0.0, speed=1.0,
                steer=0.0, throttle=0.5, brake=0.0)
    assert P.validate_telemetry(base)["seq"] == 1
    cases = {"speed": -1.0, "x": float("nan"), "t": -0.1, "steer": 2.0, "seq": 1.5, "episode": None,
             "lap": -1, "on_track": 1, "lap_dist": "far", "accel_long": float("inf"), "done": "no"}
    for k, bad in cases.items():
        with pytest.raises(P.ProtocolError) as ei:
            P.validate_telemetry({**base, k: bad})
        assert ei.value.field == k, (k, ei.value)
    with pytest.raises(P.ProtocolError) as ei:
        P.validate_telemetry({k: x for k, x in base.items() if k != "yaw"})
    assert ei.value.field == "yaw"
    assert P.validate_telemetry({**base, "lap_dist": None})["lap_dist"] is None


def test_encode_refuses_non_finite_and_round_trips():
    with pytest.raises(ValueError, match="finite"):
        P.encode({"type": "telemetry", "v": 1, "x": math.nan})
    msg = P.step_request(1, {"steer": 0.25, "throttle": 1, "brake": 0})
    assert P.decode(P.encode(msg)) == json.loads(json.dumps(msg))


def test_realtime_message_validation():
    assert P.validate_realtime_message(P.action_message(4, 0.1, 0.2, 0.0))["seq"] == 4
    assert err_code(P.validate_realtime_message, P.action_message(4, 0.1, 1.2, 0.0)) == P.BAD_ACTION
    assert err_code(P.validate_realtime_message, {"type": "step", "v": 1}) == P.UNSUPPORTED
    assert P.validate_realtime_message(P.reset_request(None))["seed"] is None


def test_replies_validate_hello_track_error():
    assert P.hello_reply("g", ["lockstep"], 0.02, True, car="x")["car"] == "x"
    assert P.hello_reply("g", ["lockstep"], 0.02, True, v=5, type="evil")["v"] == 1  # extras never override
    with pytest.raises(P.ProtocolError):
        P.hello_reply("g", ["warp"], 0.02, True)
    tr = P.track_reply("t", True, [0, 1, 2], [0, 0, 1], [1, 1, 1], [1, 1, 1])
    assert tr["x"] == [0.0, 1.0, 2.0]
    with pytest.raises(P.ProtocolError, match="w_left"):
        P.track_reply("t", True, [0, 1], [0, 0], [1, -1], [1, 1])
    with pytest.raises(P.ProtocolError, match="points"):
        P.track_reply("t", True, [0, 1], [0, 0, 0], [1, 1], [1, 1])
    assert P.validate_error(P.error("no_episode", "m"))["code"] == "no_episode"
    with pytest.raises(ValueError):
        P.error("oops", "m")


# ----------------------------------------------------------------------------- bounds and hostile numbers

HUGE_INT = b"9" * 400  # the 400-digit integer: float() of it raises OverflowError
STEP = b'{"type":"step","v":1,"seq":%s,"ticks":%s,"action":{"steer":%s,"throttle":%s,"brake":%s}}'


def step_bytes(seq=b"1", ticks=b"1", steer=b"0", throttle=b"0", brake=b"0"):
    return STEP % (seq, ticks, steer, throttle, brake)


def request_code(data: bytes) -> str:
    with pytest.raises(P.ProtocolError) as ei:
        P.validate_request(P.decode(data))
    return ei.value.code


def test_request_bounds_from_the_contract_ticks_seq_seed():
    ok = lambda data: P.validate_request(P.decode(data))  # noqa: E731
    assert ok(step_bytes(ticks=b"1000"))["ticks"] == 1000
    assert ok(step_bytes(seq=str(2 ** 53).encode()))["seq"] == 2 ** 53
    assert ok(b'{"type":"reset","v":1,"seed":4294967295}')["seed"] == 2 ** 32 - 1
    assert ok(b'{"type":"reset","v":1,"seed":0}')["seed"] == 0
    assert ok(b'{"type":"reset","v":1,"seed":null}')["seed"] is None
    for ticks in (b"1001", b"0", b"-1", b"1000000000", b"1.5", b"1.0", b'"2"', b"true", b"null", HUGE_INT):
        assert request_code(step_bytes(ticks=ticks)) == P.BAD_REQUEST, ticks
    for seq in (str(2 ** 53 + 1).encode(), b"-1", b"1.0", b"false", HUGE_INT, b"1e400"):
        assert request_code(step_bytes(seq=seq)) == P.BAD_REQUEST, seq
    for seed in (b"-1", b"4294967296", b"7.0", b"true", b'"7"', HUGE_INT, b"-" + HUGE_INT, b"1e400"):
        assert request_code(b'{"type":"reset","v":1,"seed":%s}' % seed) == P.BAD_REQUEST, seed
        assert err_code(P.validate_realtime_message, P.decode(b'{"type":"reset","v":1,"seed":%s}' % seed)) \
            == P.BAD_REQUEST
    with pytest.raises(P.ProtocolError, match=r"'ticks' = 1001 must be an integer from 1 to 1000"):
        P.validate_request(P.decode(step_bytes(ticks=b"1001")))
    with pytest.raises(P.ProtocolError, match=r"'seed' must be null or an integer from 0 to 4294967295"):
        P.validate_request(P.decode(b'{"type":"reset","v":1,"seed":-1}'))


def test_numbers_too_large_for_a_float_are_rejected_in_every_control_with_bad_action():
    for big in (HUGE_INT, b"-" + HUGE_INT, b"9" * 5000, b"1e400", b"-1e400", b"1e308", b"true"):
        for k in ("steer", "throttle", "brake"):
            with pytest.raises(P.ProtocolError) as ei:
                P.validate_request(P.decode(step_bytes(**{k: big})))
            assert ei.value.code == P.BAD_ACTION and ei.value.field == k, (k, big[:10])
            rt = b'{"type":"action","v":1,"seq":1,"steer":0,"throttle":0,"brake":0}'.replace(
                b'"%s":0' % k.encode(), b'"%s":%s' % (k.encode(), big))
            assert err_code(P.validate_realtime_message, P.decode(rt)) == P.BAD_ACTION
    with pytest.raises(P.ProtocolError, match="too large for a 64-bit float"):
        P.validate_request(P.decode(step_bytes(steer=HUGE_INT)))


def test_huge_v_is_bad_request_and_a_huge_number_in_an_unknown_key_is_ignored():
    assert err_code(P.decode, b'{"type":"hello","v":%s}' % HUGE_INT) == P.BAD_REQUEST
    assert err_code(P.decode, b'{"type":"hello","v":1e400}') == P.BAD_REQUEST
    assert P.validate_request(P.decode(b'{"type":"hello","v":1,"future":%s}' % HUGE_INT))["type"] == "hello"


def test_telemetry_rejects_huge_numbers_in_every_numeric_field_naming_it():
    base = dict(type="telemetry", v=1, seq=1, episode=0, t=0.5, x=0.0, y=0.0, yaw=0.0, speed=1.0,
                steer=0.0, throttle=0.5, brake=0.0, accel_long=0.0, accel_lat=0.0, yaw_rate=0.0, lap=0,
                lap_dist=3.0, ack=0)
    numeric = [k for k, v in base.items() if k not in ("type", "v")]
    for k in numeric:
        for bad in (10 ** 400, -(10 ** 400), float("inf"), True):
            with pytest.raises(P.ProtocolError) as ei:
                P.validate_telemetry({**base, k: bad})
            assert ei.value.code == P.BAD_TELEMETRY and ei.value.field == k, (k, bad)
        wire = P.encode(base).replace(b'"%s":' % k.encode(), b'"%s":%s,"_":' % (k.encode(), HUGE_INT), 1)
        with pytest.raises(P.ProtocolError) as ei:
            P.validate_telemetry(P.decode(wire))
        assert ei.value.field == k
    for k in ("seq", "episode", "lap", "ack"):  # counters: 0..2^53, like a request's seq
        assert P.validate_telemetry({**base, k: 2 ** 53})[k] == 2 ** 53
        with pytest.raises(P.ProtocolError):
            P.validate_telemetry({**base, k: 2 ** 53 + 1})


def test_track_and_hello_replies_reject_huge_numbers_without_overflow():
    with pytest.raises(P.ProtocolError, match=r"'x'\[1\]"):
        P.track_reply("t", True, [0, 10 ** 400], [0, 0], [1, 1], [1, 1])
    wire = b'{"type":"track","v":1,"name":"t","closed":true,"x":[0,%s],"y":[0,0],"w_left":[1,1],"w_right":[1,1]}'
    with pytest.raises(P.ProtocolError, match="too large"):
        P.validate_track_reply(P.decode(wire % HUGE_INT))
    with pytest.raises(P.ProtocolError):
        P.validate_hello_reply({"type": "hello", "v": 1, "game": "g", "modes": ["lockstep"], "dt": 10 ** 400,
                                "track": True})
    with pytest.raises(P.ProtocolError):
        P.validate_hello_reply({"type": "hello", "v": 1, "game": "g", "modes": [["lockstep"]], "dt": 0.02,
                                "track": True})


def test_deep_nesting_is_bad_request_at_any_depth():
    ok = b'{"type":"hello","v":1,"x":' + b"[" * 31 + b"]" * 31 + b"}"
    assert P.decode(ok)["type"] == "hello"  # 32 levels: the limit
    too_deep = b'{"type":"hello","v":1,"x":' + b"[" * 32 + b"]" * 32 + b"}"
    for data in (too_deep, b"[" * 30000 + b"]" * 30000, b'{"a":' * 10000 + b"1" + b"}" * 10000,
                 b'{"type":"step","v":1,"seq":1,"action":' + b"[" * 20000 + b"]" * 20000 + b"}"):
        with pytest.raises(P.ProtocolError, match="deeper than 32 levels") as ei:
            P.decode(data)
        assert ei.value.code == P.BAD_REQUEST


def test_strings_full_of_brackets_are_not_mistaken_for_nesting():
    msg = P.encode({"type": "hello", "v": 1, "client": "[{" * 1000})
    assert P.validate_request(P.decode(msg))["client"] == "[{" * 1000


def test_every_entry_point_raises_only_protocol_error_for_odd_inputs():
    odd = [None, 3, "text", [1, 2], {"type": None}, {"type": "telemetry", "v": 1, "seq": [1]}, b"{}",
           {"type": "step", "v": 1, "seq": 1, "action": None}, {"type": "error", "code": ["x"]}]
    fns = (P.validate_request, P.validate_realtime_message, P.validate_telemetry, P.validate_hello_reply,
           P.validate_track_reply, P.validate_error, P.validate_action, P.decode)
    for fn in fns:
        for x in odd:
            try:
                fn(x)
            except P.ProtocolError:
                pass


def test_internal_is_a_contract_error_code():
    assert P.INTERNAL == "internal" and P.INTERNAL in P.ERROR_CODES
    assert P.validate_error(P.error(P.INTERNAL, "game raised"))["code"] == "internal"
