"""Trainer side: whatever a plugin answers, the clients count what they cannot validate, recover,
and never crash (the issue: a 400-digit integer in a frame raised OverflowError out of step)."""
import json

import pytest

from bridge import protocol as P
from bridge.client import BridgeUnavailable, LockstepClient, RealtimeClient, RemoteError
from tests.bridge.fakes import ScriptedPlugin, telemetry_bytes

GO = {"steer": 0.0, "throttle": 1.0, "brake": 0.0}
HUGE = "9" * 400


def scripted(bad_step_reply):
    """A plugin whose first step reply is ``bad_step_reply``; everything else is a valid frame."""
    state = {"seq": 0, "episode": -1, "bad_sent": False}

    def answer(req: bytes):
        msg = json.loads(req)
        if msg["type"] == "reset":
            state["episode"] += 1
        elif not state["bad_sent"]:
            state["bad_sent"] = True
            return bad_step_reply
        state["seq"] += 1
        return telemetry_bytes(state["seq"], state["episode"])
    return answer


BAD_REPLIES = {
    "400-digit integer in x": telemetry_bytes(5).replace(b'"x":0.0', b'"x":' + HUGE.encode()),
    "400-digit integer in seq": telemetry_bytes(5).replace(b'"seq":5', b'"seq":' + HUGE.encode()),
    "1e400 in speed": telemetry_bytes(5).replace(b'"speed":0.0', b'"speed":1e400'),
    "NaN literal": telemetry_bytes(5).replace(b'"yaw":0.0', b'"yaw":NaN'),
    "seq beyond 2^53": telemetry_bytes(2 ** 53 + 1),
    "boolean speed": telemetry_bytes(5).replace(b'"speed":0.0', b'"speed":true'),
    "deep nesting": b'{"type":"telemetry","v":1,"x":' + b"[" * 5000 + b"]" * 5000 + b"}",
    "not JSON": b"\x00\xff{",
    "two frames": [telemetry_bytes(5), telemetry_bytes(6)],
    "empty frames list": [b""],
    "error with unknown code": P.encode({"type": "error", "v": 1, "code": "boom", "message": "m"}),
    "bad_action to a valid step": P.encode(P.error(P.BAD_ACTION, "steer out of range")),
    "bad_request to a valid step": P.encode(P.error(P.BAD_REQUEST, "nope")),
    "hello instead of telemetry": P.encode({"type": "hello", "v": 1, "game": "g", "modes": ["lockstep"],
                                            "dt": 0.02, "track": False}),
}


@pytest.mark.parametrize("what", list(BAD_REPLIES))
def test_invalid_step_reply_is_counted_and_the_client_starts_a_new_episode(ctx, what):
    with ScriptedPlugin(ctx, scripted(BAD_REPLIES[what])) as plugin:
        c = LockstepClient(plugin.address, timeout=1.0, retries=2, context=ctx)
        c.reset()
        r = c.step(GO)
        assert r.restarted and r.frame["episode"] == 1 and c.stats.invalid == 1
        assert not c.step(GO).restarted  # recovered: the socket still works
        c.close(say_bye=False)


def test_internal_error_reply_to_a_step_starts_a_new_episode_without_counting_invalid(ctx):
    with ScriptedPlugin(ctx, scripted(P.encode(P.error(P.INTERNAL, "game raised")))) as plugin:
        c = LockstepClient(plugin.address, timeout=1.0, context=ctx)
        c.reset()
        r = c.step(GO)
        assert r.restarted and c.stats.invalid == 0 and c.stats.errors == {P.INTERNAL: 1}
        c.close(say_bye=False)


def test_unsupported_reply_to_a_step_is_raised_not_retried(ctx):
    with ScriptedPlugin(ctx, scripted(P.encode(P.error(P.UNSUPPORTED, "real time only")))) as plugin:
        c = LockstepClient(plugin.address, timeout=1.0, context=ctx)
        c.reset()
        with pytest.raises(RemoteError) as ei:
            c.step(GO)
        assert ei.value.code == P.UNSUPPORTED
        c.close(say_bye=False)


def test_reset_gives_up_with_bridge_unavailable_when_every_reply_is_invalid(ctx):
    garbage = telemetry_bytes(1).replace(b'"t":0.0', b'"t":' + HUGE.encode())
    with ScriptedPlugin(ctx, lambda req: garbage) as plugin:
        c = LockstepClient(plugin.address, timeout=1.0, retries=3, context=ctx)
        with pytest.raises(BridgeUnavailable, match="4 attempts"):
            c.reset()
        assert c.stats.invalid == 4
        c.close(say_bye=False)


def test_invalid_hello_and_track_replies_raise_protocol_error_and_are_counted(ctx):
    answers = {"hello": b'{"type":"hello","v":1,"game":"g","modes":["lockstep"],"dt":' + HUGE.encode()
                        + b',"track":true}',
               "track": b'{"type":"track","v":1,"name":"t","closed":true,"x":[0,' + HUGE.encode()
                        + b'],"y":[0,0],"w_left":[1,1],"w_right":[1,1]}'}
    with ScriptedPlugin(ctx, lambda req: answers[json.loads(req)["type"]]) as plugin:
        c = LockstepClient(plugin.address, timeout=1.0, context=ctx)
        with pytest.raises(P.ProtocolError, match="dt"):
            c.hello()
        with pytest.raises(P.ProtocolError, match="x"):
            c.track()
        assert c.stats.invalid == 2
        c.close(say_bye=False)


def test_realtime_client_drops_and_counts_every_kind_of_invalid_frame(ctx):
    c = RealtimeClient("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", context=ctx)  # sockets unused here
    try:
        for what, reply in BAD_REPLIES.items():
            parts = reply if isinstance(reply, list) else [reply]
            assert c.ingest(parts) is None, what
        assert c.stats.invalid == len(BAD_REPLIES)
        assert c.ingest([telemetry_bytes(7)])["seq"] == 7
    finally:
        c.close()
