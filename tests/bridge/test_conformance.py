import time

import pytest
import zmq

from bridge import conformance
from bridge import protocol as P
from bridge.conformance import Report, check_lockstep, check_realtime
from bridge.games.kinematic import KinematicCarGame
from bridge.sdk import LockstepServer
from tests.bridge.conftest import ServerThread


N_LOCKSTEP_CHECKS = 13


def quiet():
    return Report(out=lambda s: None)


def test_reference_kinematic_game_passes_lockstep_suite(lockstep_server, ctx):
    r = check_lockstep(lockstep_server.address, timeout=2, report=quiet(), context=ctx)
    assert r.ok, [x for x in r.results if not x[1]]
    assert len(r.results) == N_LOCKSTEP_CHECKS


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
    assert rc == 0 and out.count("PASS") == N_LOCKSTEP_CHECKS and "FAIL" not in out


def test_cli_rejects_a_malformed_address_with_a_clear_message(capsys):
    with pytest.raises(SystemExit) as ei:
        conformance.main(["tcp://127.0.0.1:"])
    assert ei.value.code == 2 and "tcp://HOST:PORT" in capsys.readouterr().err


def failed_checks(r):
    return {name: detail for name, ok, detail in r.results if not ok}


class UnboundedGame(KinematicCarGame):
    """Stands for a plugin written before the bounds: a billion ticks keep it busy, and its game
    (like Gymnasium) raises on a negative seed."""

    def step(self, action, ticks):
        if ticks > 1000:
            time.sleep(0.5)  # far more than one tick's work per tick
        return super().step(action, min(ticks, 1000))

    def reset(self, seed):
        if seed is not None and seed < 0:
            raise ValueError("Expected a non-negative seed")
        return super().reset(seed)


def test_suite_fails_a_plugin_that_does_not_bound_ticks_and_seed(ctx, monkeypatch):
    monkeypatch.setattr(P, "MAX_TICKS", 10 ** 12)
    def any_integer_seed(msg):  # checks the type, not the range: -1 reaches the game
        seed = msg.get("seed")
        if seed is not None and not P._is_int(seed):
            raise P.ProtocolError(P.BAD_REQUEST, "seed must be an integer or null", "seed")
        return seed

    monkeypatch.setattr(P, "_seed", any_integer_seed)
    server = LockstepServer(UnboundedGame(), "tcp://127.0.0.1:*", context=ctx)
    st = ServerThread(server)
    try:
        r = check_lockstep(server.address, timeout=0.3, report=quiet(), context=ctx)
    finally:
        st.stop()
    failed = failed_checks(r)
    detail = failed["bounds: ticks 1..1000, seq 0..2^53, seed 0..2^32-1 or null"]
    assert "ticks 1001: no reply" in detail and "seed -1: expected error code bad_request, got 'internal'" in detail
    assert "hello" not in failed and "error codes on bad requests" not in failed


class FailsOnSeed13(KinematicCarGame):
    def reset(self, seed):
        if seed == 13:
            raise RuntimeError("no track for seed 13")
        return super().reset(seed)


def test_internal_request_check_passes_when_the_sdk_answers_internal_and_keeps_serving(ctx):
    server = LockstepServer(FailsOnSeed13(), "tcp://127.0.0.1:*", context=ctx)
    st = ServerThread(server)
    try:
        r = check_lockstep(server.address, timeout=2, report=quiet(), context=ctx,
                           internal_request=b'{"type":"reset","v":1,"seed":13}')
    finally:
        st.stop()
    assert r.ok, failed_checks(r)
    assert len(r.results) == N_LOCKSTEP_CHECKS + 1 and server.stats.game_errors == 1


def test_internal_request_check_fails_when_the_game_serves_it(lockstep_server, ctx):
    r = check_lockstep(lockstep_server.address, timeout=2, report=quiet(), context=ctx,
                       internal_request=b'{"type":"reset","v":1,"seed":13}')
    detail = failed_checks(r)["a game that raises -> internal, episode over, keeps serving"]
    assert "should be answered with error 'internal', got type 'telemetry'" in detail


def test_edge_cases_pass_with_a_note_when_the_game_fails_on_a_valid_seed(ctx):
    class NoHugeSeeds(KinematicCarGame):
        def reset(self, seed):
            if seed is not None and seed >= 2 ** 31:
                raise OverflowError("seed does not fit an int32")
            return super().reset(seed)

    server = LockstepServer(NoHugeSeeds(), "tcp://127.0.0.1:*", context=ctx)
    st = ServerThread(server)
    try:
        r = check_lockstep(server.address, timeout=2, report=quiet(), context=ctx)
    finally:
        st.stop()
    assert r.ok, failed_checks(r)
    notes = {name: d for name, ok, d in r.results if ok and d}
    assert "reset seed=4294967295" in notes["valid edge cases answered (ticks 1000, extreme seeds, controls, seq)"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # its serving thread dies
def test_suite_fails_a_plugin_that_goes_silent_when_its_game_raises(ctx):
    class SilentOnFailure(LockstepServer):
        def _internal(self, what, exc):  # the old SDK: the exception ended the serving loop
            self._closed = True
            raise exc

    server = SilentOnFailure(FailsOnSeed13(), "tcp://127.0.0.1:*", context=ctx)
    st = ServerThread(server)
    try:
        r = check_lockstep(server.address, timeout=0.3, report=quiet(), context=ctx,
                           internal_request=b'{"type":"reset","v":1,"seed":13}')
    finally:
        st.stop()
    failed = failed_checks(r)
    assert "was not answered" in failed["a game that raises -> internal, episode over, keeps serving"]
    assert "no reply" in failed["close -> bye"]


def test_cli_internal_request_adds_the_check(ctx, capsys):
    server = LockstepServer(FailsOnSeed13(), "tcp://127.0.0.1:*", context=ctx)
    st = ServerThread(server)
    try:
        rc = conformance.main([server.address, "--internal-request", '{"type":"reset","v":1,"seed":13}'])
    finally:
        st.stop()
    out = capsys.readouterr().out
    assert rc == 0 and "PASS a game that raises -> internal" in out and f"{N_LOCKSTEP_CHECKS + 1}/" in out
