import time

import pytest
import zmq

from bridge import protocol as P
from bridge.client import LockstepClient, RealtimeClient, RemoteError

GO = {"steer": 0.2, "throttle": 1.0, "brake": 0.0}


def wait_for(client, pred, timeout=2.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        f = client.wait_frame(timeout)
        if pred(f):
            return f
    raise AssertionError("condition not met in time")


@pytest.fixture
def rt_client(realtime_server, ctx):
    c = RealtimeClient(realtime_server.pub_address, realtime_server.pull_address, period=0.01, context=ctx)
    yield c
    c.close()


def test_frames_are_published_with_increasing_seq(rt_client):
    seqs = [rt_client.wait_frame(2.0, newer_than_seq=-1)["seq"]]
    for _ in range(5):
        seqs.append(rt_client.wait_frame(2.0, newer_than_seq=seqs[-1])["seq"])
    assert all(b > a for a, b in zip(seqs, seqs[1:]))


def test_actions_are_applied_acknowledged_and_older_seq_dropped(rt_client, realtime_server):
    rt_client.reset(seed=1)
    seq = rt_client.send_action(GO)
    f = wait_for(rt_client, lambda f: f.get("ack") == seq)
    assert f["throttle"] == 1.0 and f["steer"] == pytest.approx(0.2)
    # a stale action (seq below the applied one) must not override the newer one
    stale = P.action_message(seq - 1 if seq else 0, 0.0, 0.0, 1.0)
    rt_client.push.send(P.encode(stale))
    time.sleep(0.05)
    f = rt_client.wait_frame(1.0, newer_than_seq=f["seq"])
    assert f["brake"] == 0.0 and f["ack"] == seq
    assert realtime_server.stats.dropped >= 1


def test_neutral_action_after_action_timeout(rt_client):
    rt_client.reset()
    seq = rt_client.send_action(GO)
    wait_for(rt_client, lambda f: f.get("ack") == seq)
    time.sleep(0.3)  # server action_timeout is 0.2 s
    f = rt_client.wait_frame(1.0, newer_than_seq=rt_client.latest["seq"])
    assert (f["steer"], f["throttle"], f["brake"]) == (0.0, 0.0, 0.0) and "ack" not in f


def test_reset_starts_a_new_episode(rt_client):
    e0 = rt_client.reset()["episode"]
    f = rt_client.reset(seed=5)
    # The newest frame of the new episode: on a busy machine the conflated socket may already hold its
    # second or third (the protocol promises the new episode number, not that its first frame is seen).
    assert f["episode"] == e0 + 1 and 0.0 <= f["t"] < 1.0


def test_malformed_realtime_messages_are_dropped_and_server_keeps_publishing(rt_client, realtime_server):
    rt_client.reset()
    for junk in (b"\xff", b"[]", b'{"type":"action","v":1,"seq":1,"steer":NaN,"throttle":0,"brake":0}',
                 b'{"type":"action","v":9,"seq":1}', b"{" + b" " * 70000 + b"}"):
        rt_client.push.send(junk)
    time.sleep(0.05)
    last = rt_client.latest["seq"]
    assert rt_client.wait_frame(1.0, newer_than_seq=last)["seq"] > last
    assert realtime_server.stats.dropped >= 5
    assert realtime_server.stats.errors.get(P.VERSION_ERR) == 1


def test_info_socket_serves_hello_and_refuses_lockstep_requests(realtime_server, ctx):
    with LockstepClient(realtime_server.info.address, context=ctx) as c:
        assert c.hello()["modes"] == ["realtime"]
        with pytest.raises(RemoteError) as ei:
            c.reset()
        assert ei.value.code == P.UNSUPPORTED


def test_elastic_control_period_reports_lateness(rt_client):
    rt_client.reset()
    on_time = [rt_client.step(GO) for _ in range(5)]
    assert all(s.frame is not None for s in on_time)
    # On time: lateness is scheduling jitter, under a period even while the other test worker
    # loads both cores (5 ms was exceeded once in CI).
    assert max(s.late_s for s in on_time) < 0.01
    time.sleep(0.06)  # the trainer overran its 10 ms period by ~50 ms
    late = rt_client.step(GO)
    assert late.late_s > 0.035
    assert rt_client.stats.late_steps >= 1
    assert rt_client.step(GO).late_s < 0.01  # elastic: the schedule restarted, no catch-up burst


def test_realtime_over_curve_on_all_interfaces(ctx):
    from bridge.games.kinematic import KinematicCarGame
    from bridge.sdk import CurveKeys, RealtimeServer
    from tests.bridge.conftest import ServerThread
    spub, ssec = zmq.curve_keypair()
    cpub, csec = zmq.curve_keypair()
    server = RealtimeServer(KinematicCarGame(), "tcp://0.0.0.0:*", "tcp://0.0.0.0:*", rate_hz=200,
                            curve=CurveKeys(spub, ssec), context=ctx)
    st = ServerThread(server)
    ports = [a.rsplit(":", 1)[1] for a in (server.pub_address, server.pull_address)]
    try:
        # only loopback traffic: connect through 127.0.0.1
        c = RealtimeClient(f"tcp://127.0.0.1:{ports[0]}", f"tcp://127.0.0.1:{ports[1]}", period=0.01,
                           curve=CurveKeys(cpub, csec, spub), context=ctx)
        c.reset()
        seq = c.send_action(GO)
        assert wait_for(c, lambda f: f.get("ack") == seq)["throttle"] == 1.0
        c.close()
        plain = RealtimeClient(f"tcp://127.0.0.1:{ports[0]}", f"tcp://127.0.0.1:{ports[1]}", context=ctx)
        with pytest.raises(TimeoutError):
            plain.wait_frame(0.3)  # no keys, no telemetry
        plain.close()
    finally:
        st.stop()
