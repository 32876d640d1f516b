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
