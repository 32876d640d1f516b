"""A game whose own code raises: the SDK answers 'internal' (lockstep) or drops the frame (real
time), ends the episode, logs the traceback once, and keeps serving."""
import logging
import time

import pytest

from bridge import protocol as P
from bridge.client import LockstepClient
from bridge.games.kinematic import KinematicCarGame
from bridge.sdk import GameFaultLog, LockstepServer, RealtimeServer
from tests.bridge.conftest import ServerThread

GO = {"steer": 0.0, "throttle": 1.0, "brake": 0.0}
BOOM_SEED = 13


class FlakyGame(KinematicCarGame):
    """Raises in reset for seed 13, in step when braking fully, and returns a broken frame when
    steering fully right; otherwise the kinematic car."""

    def reset(self, seed):
        if seed == BOOM_SEED:
            raise RuntimeError("the track generator failed for this seed")
        return super().reset(seed)

    def step(self, action, ticks):
        if action["brake"] == 1.0:
            raise ZeroDivisionError("brake model divided by zero")
        f = super().step(action, ticks)
        if action["steer"] == -1.0:
            f["speed"] = float("nan")
        return f


def call(server, msg) -> dict:
    reply, _ = server.handle(P.encode(msg))
    return P.decode(reply)


def step(seq, **a):
    return P.step_request(seq, {**GO, **a})


@pytest.fixture
def server(ctx):
    s = LockstepServer(FlakyGame(), "tcp://127.0.0.1:*", context=ctx)
    yield s
    s.close()


def test_game_raising_in_step_is_answered_internal_and_ends_the_episode(server):
    assert call(server, P.reset_request(1))["type"] == "telemetry"
    assert call(server, step(0))["episode"] == 0
    err = P.validate_error(call(server, step(1, brake=1.0)))
    assert err["code"] == P.INTERNAL and "ZeroDivisionError" in err["message"] and "reset" in err["message"]
    assert P.validate_error(call(server, step(2)))["code"] == P.NO_EPISODE  # the episode is over
    f = call(server, P.reset_request(1))
    assert f["episode"] == 1 and f["t"] == 0.0  # and the plugin keeps serving
    assert call(server, step(3))["episode"] == 1
    assert server.stats.game_errors == 1 and server.stats.errors[P.INTERNAL] == 1


def test_game_raising_in_reset_is_answered_internal_and_no_episode_is_left_running(server):
    call(server, P.reset_request(1))
    err = P.validate_error(call(server, P.reset_request(BOOM_SEED)))
    assert err["code"] == P.INTERNAL and "track generator" in err["message"]
    assert P.validate_error(call(server, step(0)))["code"] == P.NO_EPISODE
    assert call(server, P.reset_request(2))["episode"] == 1  # a failed reset does not count an episode


def test_an_invalid_frame_from_the_game_is_internal_and_never_reaches_the_trainer(server):
    call(server, P.reset_request(1))
    frames = server.stats.frames
    err = P.validate_error(call(server, step(0, steer=-1.0)))
    assert err["code"] == P.INTERNAL and "speed" in err["message"]
    assert server.stats.frames == frames
    seqs = [call(server, P.reset_request(1))["seq"], call(server, step(1))["seq"]]
    assert seqs[1] == seqs[0] + 1  # seq counts frames sent: the refused frame took none


@pytest.mark.parametrize("where", ["info", "track"])
def test_game_raising_in_hello_or_track_is_internal(ctx, where):
    class Broken(KinematicCarGame):
        calls = 0

        def info(self):
            if where == "info":
                raise KeyError("version")
            return {}

        def track(self):
            Broken.calls += 1
            if where == "track" and Broken.calls > 1:  # the first call, at startup, succeeds
                return {"name": "t", "closed": True, "x": [0, 1], "y": [0, 0], "w_left": [1, -1],
                        "w_right": [1, 1]}
            return super().track()

    s = LockstepServer(Broken(), "tcp://127.0.0.1:*", context=ctx)
    try:
        req = P.hello_request() if where == "info" else P.track_request()
        err = P.validate_error(call(s, req))
        assert err["code"] == P.INTERNAL
        assert call(s, P.close_request())["type"] == "bye"
    finally:
        s.close()


def test_traceback_logged_once_per_place_not_once_per_request(server, caplog):
    call(server, P.reset_request(1))
    with caplog.at_level(logging.ERROR, logger="bridge.sdk"):
        for i in range(200):
            call(server, P.reset_request(1))
            call(server, step(i, brake=1.0))
        for i in range(50):
            call(server, P.reset_request(BOOM_SEED))
    assert server.stats.game_errors == 250
    with_tb = [r for r in caplog.records if r.exc_info]
    assert len(with_tb) == 2  # one per place the game raised from
    assert len(caplog.records) <= 4
    assert {r.exc_info[0] for r in with_tb} == {ZeroDivisionError, RuntimeError}


def test_fault_log_repeats_a_summary_at_most_once_per_interval():
    t = [0.0]
    logger = logging.getLogger("test.faults")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        fl = GameFaultLog(logger, summary_every_s=60.0, clock=lambda: t[0])
        for i in range(1000):
            t[0] = i * 0.5  # 500 s of failures, one every half second
            try:
                raise ValueError("x")
            except ValueError as e:
                fl.report(e, "a step")
    finally:
        logger.removeHandler(handler)
    assert fl.total == 1000 and len(records) == 1 + 8  # the traceback, then one summary a minute
    assert "1000" not in records[-1].getMessage() and "times so far" in records[-1].getMessage()


def test_serving_loop_survives_a_failing_game_over_sockets(ctx):
    server = LockstepServer(FlakyGame(), "tcp://127.0.0.1:*", context=ctx)
    st = ServerThread(server)
    try:
        with LockstepClient(server.address, timeout=2, context=ctx) as c:
            c.reset(seed=1)
            r = c.step({**GO, "brake": 1.0})  # the game raises: the client starts a new episode
            assert r.restarted and r.frame["episode"] == 1 and c.stats.errors[P.INTERNAL] == 1
            assert not c.step(GO).restarted
        assert st.thread.is_alive()
    finally:
        st.stop()


def test_client_reset_retries_internal_then_gives_up(ctx):
    from bridge.client import BridgeUnavailable
    server = LockstepServer(FlakyGame(), "tcp://127.0.0.1:*", context=ctx)
    st = ServerThread(server)
    try:
        c = LockstepClient(server.address, timeout=2, retries=2, context=ctx)
        with pytest.raises(BridgeUnavailable, match="3 attempts"):
            c.reset(seed=BOOM_SEED)
        assert c.stats.errors[P.INTERNAL] == 3 and server.stats.game_errors == 3
        assert c.reset(seed=1).frame["type"] == "telemetry"
        c.close()
    finally:
        st.stop()


def test_step_with_the_largest_ticks_is_served_and_larger_is_refused_at_once(server):
    call(server, P.reset_request(1))
    t0 = time.perf_counter()
    f = call(server, {**step(0, throttle=0.0), "ticks": 1000})
    assert f["t"] == pytest.approx(1000 * 0.02)
    for ticks in (1001, 10 ** 9, 10 ** 400):
        assert P.validate_error(call(server, {**step(1), "ticks": ticks}))["code"] == P.BAD_REQUEST
    assert time.perf_counter() - t0 < 1.0  # a billion ticks would take hours
    assert call(server, step(2))["episode"] == 0


def test_a_400_digit_steer_is_bad_action_and_the_plugin_keeps_serving(server):
    call(server, P.reset_request(1))
    reply, _ = server.handle(b'{"type":"step","v":1,"seq":1,"action":{"steer":' + b"9" * 400
                             + b',"throttle":0,"brake":0}}')
    err = P.validate_error(P.decode(reply))
    assert err["code"] == P.BAD_ACTION and "steer" in err["message"]
    assert call(server, step(2))["episode"] == 0  # an error reply does not end the episode


def test_multipart_request_is_answered_bad_request(ctx):
    import zmq
    server = LockstepServer(KinematicCarGame(), "tcp://127.0.0.1:*", context=ctx)
    st = ServerThread(server)
    req = ctx.socket(zmq.REQ)
    req.linger = 0
    req.connect(server.address)
    try:
        req.send_multipart([P.encode(P.hello_request()), b"second"])
        assert req.poll(2000)
        assert P.validate_error(P.decode(req.recv()))["code"] == P.BAD_REQUEST
        req.send(P.encode(P.hello_request()))
        assert req.poll(2000) and P.decode(req.recv())["type"] == "hello"
    finally:
        req.close()
        st.stop()


# ----------------------------------------------------------------------------- real time

class FlakyRealtimeGame(KinematicCarGame):
    def __init__(self):
        super().__init__()
        self.fail_steps = 0
        self.fail_resets = 0

    def reset(self, seed):
        if self.fail_resets:
            self.fail_resets -= 1
            raise RuntimeError("reset failed")
        return super().reset(seed)

    def step(self, action, ticks):
        if self.fail_steps:
            self.fail_steps -= 1
            raise RuntimeError("step failed")
        return super().step(action, ticks)


def test_realtime_game_failure_drops_the_frame_counts_it_and_starts_a_new_episode(ctx):
    game = FlakyRealtimeGame()
    server = RealtimeServer(game, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", context=ctx, clock=lambda: 0.0)
    try:
        assert server.tick()["episode"] == 0
        assert server.tick()["t"] == pytest.approx(0.02)
        game.fail_steps, game.fail_resets = 1, 2
        assert server.tick() is None  # the step raised: nothing published
        assert server.tick() is None and server.tick() is None  # the new episode's resets raise too
        f = server.tick()
        assert f["episode"] == 1 and f["t"] == 0.0 and f["seq"] == 2  # seq counts frames sent
        assert server.stats.game_errors == 3 and server.stats.frames == 3
    finally:
        server.close()


def test_realtime_serve_keeps_running_while_the_game_fails(ctx):
    game = FlakyRealtimeGame()
    game.fail_steps = 10 ** 9  # every step fails
    server = RealtimeServer(game, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", rate_hz=500, context=ctx)
    st = ServerThread(server)
    try:
        time.sleep(0.3)
        assert st.thread.is_alive() and server.stats.game_errors > 10
    finally:
        st.stop()


def test_an_exception_whose_message_cannot_be_shown_is_still_answered_internal(ctx):
    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no message for you")

    class Game(KinematicCarGame):
        def step(self, action, ticks):
            raise Unprintable()

    s = LockstepServer(Game(), "tcp://127.0.0.1:*", context=ctx)
    try:
        call(s, P.reset_request(1))
        err = P.validate_error(call(s, step(0)))
        assert err["code"] == P.INTERNAL and "Unprintable" in err["message"]
    finally:
        s.close()
