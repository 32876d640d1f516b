import zmq

from bridge import conformance
from bridge.conformance import Report, check_lockstep, check_realtime
from bridge.games.kinematic import KinematicCarGame
from bridge.sdk import LockstepServer
from tests.bridge.conftest import ServerThread


def quiet():
    return Report(out=lambda s: None)


def test_reference_kinematic_game_passes_lockstep_suite(lockstep_server, ctx):
    r = check_lockstep(lockstep_server.address, timeout=2, report=quiet(), context=ctx)
    assert r.ok, [x for x in r.results if not x[1]]
    assert len(r.results) == 9


def test_reference_kinematic_game_passes_realtime_suite(realtime_server, ctx):
    r = check_realtime(realtime_server.pub_address, realtime_server.pull_address, action_timeout=0.2,
                       report=quiet(), context=ctx)
    assert r.ok, [x for x in r.results if not x[1]]


class KmhGame(KinematicCarGame):
    """Reports speed in km/h: the suite's units check must catch it."""

    def step(self, action, ticks):
        f = super().step(action, 1)
        f["speed"] *= 3.6
        return f


def test_suite_fails_a_plugin_with_wrong_units(ctx):
    server = LockstepServer(KmhGame(), "tcp://127.0.0.1:*", context=ctx)
    st = ServerThread(server)
    try:
        r = check_lockstep(server.address, timeout=2, report=quiet(), context=ctx)
    finally:
        st.stop()
    failed = {name: detail for name, ok, detail in r.results if not ok}
    assert not r.ok
    assert "m/s" in failed["units: speed m/s, pose m, yaw rad CCW from +x"]


def test_suite_reports_fail_and_exit_code_1_against_a_dead_address(ctx, capsys):
    port_sock = ctx.socket(zmq.REP)
    port = port_sock.bind_to_random_port("tcp://127.0.0.1")
    port_sock.close(linger=0)  # nothing listens there now
    rc = conformance.main([f"tcp://127.0.0.1:{port}", "--timeout", "0.2"])
    out = capsys.readouterr().out
    assert rc == 1 and "FAIL hello" in out and "0/1 checks passed" in out


def test_cli_exit_code_0_when_all_pass(lockstep_server, capsys):
    rc = conformance.main([lockstep_server.address])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("PASS") == 9 and "FAIL" not in out


def test_cli_rejects_a_malformed_address_with_a_clear_message(capsys):
    import pytest
    with pytest.raises(SystemExit) as ei:
        conformance.main(["tcp://127.0.0.1:"])
    assert ei.value.code == 2 and "tcp://HOST:PORT" in capsys.readouterr().err
