
import numpy as np
import pytest
import zmq

from bridge import protocol as P
from bridge.client import LockstepClient, RemoteError
from bridge.games.kinematic import KinematicCarGame
from bridge.sdk import GamePlugin, LockstepServer

FULL = {"steer": 0.0, "throttle": 1.0, "brake": 0.0}


def test_hello_track_reset_step_close_round_trip(lockstep_server, ctx):
    with LockstepClient(lockstep_server.address, timeout=2, context=ctx) as c:
        h = c.hello()
        assert h["game"] == "kinematic-circle" and h["modes"] == ["lockstep"] and h["dt"] == 0.02 and h["track"]
        tr = c.track()
        assert tr["closed"] and tr["x"].shape == (200,) and tr["x"].dtype == np.float64
        np.testing.assert_allclose(np.hypot(tr["x"], tr["y"]), 50.0)
        r0 = c.reset(seed=3).frame
        assert r0["episode"] == 0 and r0["t"] == 0.0 and r0["speed"] == 0.0 and r0["throttle"] == 0.0
        r1 = c.step(FULL, ticks=5)
        f = r1.frame
        assert not r1.restarted and f["seq"] == r0["seq"] + 1 and f["ack"] == 0
        assert f["t"] == pytest.approx(0.1) and f["throttle"] == 1.0
        assert f["speed"] == pytest.approx(6.0 * 0.1)  # 6 m/s^2 for 5 ticks of 0.02 s
        assert c.reset().frame["episode"] == 1
    assert lockstep_server.stats.frames == 3


def test_same_seed_gives_same_episode(lockstep_server, ctx):
    with LockstepClient(lockstep_server.address, context=ctx) as c:
        runs = []
        for _ in range(2):
            c.reset(seed=11)
            runs.append([c.step({"steer": 0.3, "throttle": 0.7, "brake": 0.0}).frame["x"] for _ in range(10)])
        assert runs[0] == runs[1]


def test_step_before_reset_raises_remote_no_episode_and_bad_action_is_refused_before_sending(lockstep_server, ctx):
    with LockstepClient(lockstep_server.address, context=ctx) as c:
        with pytest.raises(RemoteError) as ei:
            c.step(FULL)  # before any reset
        assert ei.value.code == P.NO_EPISODE
        c.reset()
        sent = c.stats.requests
        for bad in ({"steer": 2.0, "throttle": 0.0, "brake": 0.0}, {"steer": 10 ** 400, "throttle": 0.0, "brake": 0.0},
                    {"steer": float("nan"), "throttle": 0.0, "brake": 0.0}):
            with pytest.raises(P.ProtocolError) as ei:
                c.step(bad)
            assert ei.value.code == P.BAD_ACTION and ei.value.field == "steer"
        for ticks in (0, 1001, 10 ** 9):
            with pytest.raises(P.ProtocolError, match="ticks"):
                c.step(FULL, ticks=ticks)
        with pytest.raises(P.ProtocolError, match="seed"):
            c.reset(seed=-1)
        assert c.stats.requests == sent and c.stats.invalid == 0  # nothing sent, nothing blamed on the plugin
        r = c.step(FULL)
        assert not r.restarted and r.frame["throttle"] == 1.0 and r.frame["episode"] == 0  # still serving


class NoTrackGame(KinematicCarGame):
    def track(self):
        return None


def test_track_unsupported_when_hello_says_false(ctx):
    server = LockstepServer(NoTrackGame(), "tcp://127.0.0.1:*", context=ctx)
    from tests.bridge.conftest import ServerThread
    st = ServerThread(server)
    try:
        with LockstepClient(server.address, context=ctx) as c:
            assert c.hello()["track"] is False
            with pytest.raises(RemoteError) as ei:
                c.track()
            assert ei.value.code == P.UNSUPPORTED
    finally:
        st.stop()


class NaNGame(GamePlugin):
    name = "nan"

    def reset(self, seed):
        return {"x": 0.0, "y": 0.0, "yaw": 0.0, "speed": float("nan")}


def test_game_producing_nan_is_answered_internal_naming_the_field(ctx):
    server = LockstepServer(NaNGame(), "tcp://127.0.0.1:*", context=ctx)
    try:
        reply, _ = server.handle(P.encode(P.reset_request()))
        err = P.validate_error(P.decode(reply))
        assert err["code"] == P.INTERNAL and "speed" in err["message"]
        assert server.stats.frames == 0 and server.stats.game_errors == 1  # never reached a trainer
    finally:
        server.close()


def test_non_loopback_bind_refused_without_keys(ctx):
    for addr in ("tcp://0.0.0.0:*", "tcp://*:*"):
        with pytest.raises(PermissionError, match="CurveZMQ"):
            LockstepServer(KinematicCarGame(), addr, context=ctx)


def test_curve_encrypted_server_on_all_interfaces_talks_to_keyed_client_only(ctx):
    from bridge.sdk import CurveKeys
    spub, ssec = zmq.curve_keypair()
    cpub, csec = zmq.curve_keypair()
    server = LockstepServer(KinematicCarGame(), "tcp://0.0.0.0:*", curve=CurveKeys(spub, ssec), context=ctx)
    from tests.bridge.conftest import ServerThread
    st = ServerThread(server)
    port = server.address.rsplit(":", 1)[1]
    try:
        # only ever connect through loopback
        with LockstepClient(f"tcp://127.0.0.1:{port}", curve=CurveKeys(cpub, csec, spub), context=ctx) as c:
            assert c.hello()["game"] == "kinematic-circle"
        plain = LockstepClient(f"tcp://127.0.0.1:{port}", timeout=0.3, retries=0, context=ctx)
        with pytest.raises(TimeoutError):
            plain.request_raw(P.encode(P.hello_request()))
        plain.close(say_bye=False)
    finally:
        st.stop()


def test_track_reply_follows_the_layout_of_the_current_episode(ctx):
    class NewLayoutEachSeed(KinematicCarGame):
        def reset(self, seed):
            self.radius = 50.0 + (seed or 0)
            return super().reset(seed)

    server = LockstepServer(NewLayoutEachSeed(), "tcp://127.0.0.1:*", context=ctx)
    from tests.bridge.conftest import ServerThread

    st = ServerThread(server)
    try:
        with LockstepClient(server.address, timeout=2, context=ctx) as c:
            c.reset(seed=10)
            np.testing.assert_allclose(np.hypot(*(c.track()[k] for k in ("x", "y"))), 60.0)
            c.reset(seed=30)
            np.testing.assert_allclose(np.hypot(*(c.track()[k] for k in ("x", "y"))), 80.0)
    finally:
        st.stop()
