import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from racerl_jax import checkpoint, spot, train_loop
from racerl_jax.crossq import CrossQConfig
from racerl_jax.envs import Pendulum

ROOT = Path(__file__).resolve().parents[2]
TINY = CrossQConfig.cpu(
    critic_hidden=(16, 16), actor_hidden=(16, 16), batch_size=8, learning_starts=40, buffer_size=2_000
)
ENV = Pendulum()
PARAMS = ENV.default_params()


# ----------------------------------------------------------------------------- a fake metadata service


class FakeIMDS:
    """The two IMDSv2 paths the watcher reads, on a loopback port: 404 until a notice is set."""

    def __init__(self) -> None:
        self.token = "tok-1"
        self.instance_action: str | None = None
        self.rebalance: str | None = None
        self.expire_token_once = False
        self.requests: list[tuple[str, str, dict]] = []
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _reply(self, status: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self):
                imds.requests.append(("PUT", self.path, {k.lower(): v for k, v in self.headers.items()}))
                if self.path != spot.TOKEN_PATH or not self.headers.get(spot.TOKEN_TTL_HEADER):
                    return self._reply(400)
                self._reply(200, imds.token)

            def do_GET(self):
                imds.requests.append(("GET", self.path, {k.lower(): v for k, v in self.headers.items()}))
                if imds.expire_token_once:
                    imds.expire_token_once = False
                    imds.token = "tok-2"
                if self.headers.get(spot.TOKEN_HEADER) != imds.token:
                    return self._reply(401)
                body = {spot.INSTANCE_ACTION_PATH: imds.instance_action, spot.REBALANCE_PATH: imds.rebalance}.get(
                    self.path, None)
                self._reply(404) if body is None else self._reply(200, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeIMDS":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


NOTICE = json.dumps({"action": "terminate", "time": "2026-12-01T12:00:00Z"})


def test_watcher_takes_a_token_then_reports_the_interruption_notice_once_it_is_scheduled():
    notices, rebalances = [], []
    with FakeIMDS() as imds:
        w = spot.SpotWatcher(spot.SpotConfig(imds.url, poll_seconds=0.01), notices.append, rebalances.append).start()
        assert _wait_for(lambda: w.polls >= 3)  # 404s: nothing scheduled yet
        assert not notices and w.active
        imds.instance_action = NOTICE
        assert _wait_for(lambda: notices)
        w.stop()
    assert notices == [f"spot interruption notice: {NOTICE}"] and not rebalances
    put = imds.requests[0]
    assert put[:2] == ("PUT", spot.TOKEN_PATH) and put[2][spot.TOKEN_TTL_HEADER.lower()] == str(spot.TOKEN_TTL_S)
    gets = [r for r in imds.requests if r[0] == "GET"]
    assert {r[1] for r in gets} == {spot.INSTANCE_ACTION_PATH, spot.REBALANCE_PATH}
    assert all(r[2][spot.TOKEN_HEADER.lower()] == "tok-1" for r in gets)


def test_a_rebalance_recommendation_asks_for_one_checkpoint_per_recommendation_and_an_expired_token_is_renewed():
    with FakeIMDS() as imds:
        imds.expire_token_once = True  # the first GET is refused: the watcher takes a new token and goes on
        with spot.StopSignal(spot.SpotConfig(imds.url, poll_seconds=0.01)) as stop:
            assert _wait_for(lambda: stop.watcher.polls >= 2)
            assert not stop.take_checkpoint_request()
            imds.rebalance = json.dumps({"noticeTime": "2026-12-01T11:50:00Z"})
            assert _wait_for(stop.take_checkpoint_request)
            n = stop.watcher.polls
            assert _wait_for(lambda: stop.watcher.polls >= n + 3)
            assert not stop.take_checkpoint_request()  # the same recommendation: once
            assert not stop.requested  # a recommendation is not an interruption
    assert [r[1] for r in imds.requests if r[0] == "PUT"] == [spot.TOKEN_PATH, spot.TOKEN_PATH]


def test_off_aws_the_watcher_turns_itself_off_after_one_failed_probe_with_one_log_line(caplog):
    with socket.socket() as s:  # a loopback port nobody listens on: the connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    caplog.set_level(logging.INFO, logger="racerl_jax.spot")
    w = spot.SpotWatcher(spot.SpotConfig(f"http://127.0.0.1:{port}", poll_seconds=0.01), lambda t: None).start()
    w._thread.join(5)
    assert not w._thread.is_alive() and not w.active and w.polls == 0
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "spot watcher off" in lines[0] and str(port) in lines[0]


def test_bad_spot_settings_are_refused_naming_the_fix():
    with pytest.raises(ValueError, match="expected http://HOST"):
        spot.SpotConfig("169.254.169.254")
    with pytest.raises(ValueError, match="must be > 0"):
        spot.SpotConfig(poll_seconds=0)
    assert spot.exit_code("spot") == spot.exit_code("signal") == spot.EXIT_INTERRUPTED == 75
    assert spot.exit_code("steps") == spot.exit_code("wall_clock") == 0


def _train(run_dir, total, **kw):
    return train_loop.train(ENV, PARAMS, TINY, total_env_steps=total, num_envs=2, seed=3, chunk_iterations=50,
                            run_dir=run_dir, progress=False, **kw)


@struct.dataclass
class Counters:
    env_steps: jax.Array
    updates: jax.Array


@struct.dataclass
class Carry:
    """The training driver's view of a state: an agent with its counters (and here nothing else)."""

    agent: Counters


def count_steps(carry: Carry, iterations: int, lr_scale: float = 1.0, entropy_shift: float = 0.0):
    """A chunk of 2 envs x ``iterations`` steps that takes 10 ms: the driver's stop path without a compile."""
    time.sleep(0.01)
    a = carry.agent
    return Carry(Counters(a.env_steps + 2 * iterations, a.updates + iterations)), {}


def _drive(run_dir, **kw):
    start = Carry(Counters(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)))
    return train_loop.drive(count_steps, start, 2, total_env_steps=10**6, chunk_iterations=5, run_meta={"test": 1},
                            run_dir=run_dir, progress=False, **kw)


def test_a_notice_from_the_metadata_service_checkpoints_and_stops_the_run(tmp_path):
    with FakeIMDS() as imds:
        imds.instance_action = NOTICE
        result = _drive(tmp_path, spot=spot.SpotConfig(imds.url, poll_seconds=0.01))
    steps = int(result.carry.agent.env_steps)
    assert result.stop_reason == "spot" and spot.exit_code(result.stop_reason) == 75 and 0 < steps < 10**6
    with checkpoint.Checkpointer(tmp_path / "checkpoints") as ckpt:
        assert ckpt.latest_step() == steps


def test_a_rebalance_recommendation_checkpoints_the_run_at_once_and_it_goes_on(tmp_path):
    with FakeIMDS() as imds:
        imds.rebalance = json.dumps({"noticeTime": "2026-12-01T11:50:00Z"})

        def stop_after_a_while(agent):  # the evaluation hook: ends the run by SIGTERM once it has saved
            if (tmp_path / "checkpoints").is_dir() and checkpoint.complete_steps(tmp_path / "checkpoints"):
                os.kill(os.getpid(), signal.SIGTERM)
            return {}

        result = _drive(tmp_path, spot=spot.SpotConfig(imds.url, poll_seconds=0.01), eval_fn=stop_after_a_while,
                        eval_every_env_steps=10)
    steps = checkpoint.complete_steps(tmp_path / "checkpoints")
    assert result.stop_reason == "signal" and len(steps) == 2 and steps[0] < steps[1] == int(result.carry.agent.env_steps)


# ----------------------------------------------------------------------------- signals and kill -9 (subprocesses)

TRAIN_CHILD = """
import sys
from racerl_jax import spot, train_loop
from racerl_jax.crossq import CrossQConfig
from racerl_jax.envs import Pendulum
TINY = CrossQConfig.cpu(critic_hidden=(16, 16), actor_hidden=(16, 16), batch_size=8, learning_starts=40, buffer_size=2_000)
def report(agent):
    print("step", int(agent.env_steps), flush=True)
    return {}
env = Pendulum()
r = train_loop.train(env, env.default_params(), TINY, total_env_steps=10**6, num_envs=2, seed=3, chunk_iterations=50,
                     run_dir=sys.argv[1], progress=False, eval_fn=report, eval_every_env_steps=100,
                     checkpoint_every_env_steps=200, spot=spot.SpotConfig(""))
print("stopped", r.stop_reason, int(r.carry.agent.env_steps), flush=True)
sys.exit(spot.exit_code(r.stop_reason))
"""
# The driver's stop path in a process of its own, with the trivial step above (no compile).
DRIVE_CHILD = """
import sys
from racerl_jax import spot
from tests.racerl_jax.test_spot import _drive
def report(agent):
    print("step", int(agent.env_steps), flush=True)
    return {}
r = _drive(sys.argv[1], eval_fn=report, eval_every_env_steps=100, spot=spot.SpotConfig(""))
print("stopped", r.stop_reason, int(r.carry.agent.env_steps), flush=True)
sys.exit(spot.exit_code(r.stop_reason))
"""


def _child(script: str, run_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-c", script, str(run_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _read_until_step(proc: subprocess.Popen, at_least: int, timeout: float = 240.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("step ") and int(line.split()[1]) >= at_least:
                return int(line.split()[1])
    proc.kill()
    raise AssertionError(f"the child did not reach step {at_least}: {proc.stderr.read()[-2000:]}")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals to a child")
def test_sigterm_and_sigint_each_checkpoint_within_seconds_and_exit_with_status_75(tmp_path):
    children = {sig: (_child(DRIVE_CHILD, tmp_path / sig.name), tmp_path / sig.name)
                for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig, (proc, run_dir) in children.items():
        _read_until_step(proc, 200)
        t0 = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - t0
        assert proc.returncode == spot.EXIT_INTERRUPTED, err[-2000:]
        stopped = [line for line in out.splitlines() if line.startswith("stopped")]
        assert stopped and stopped[0].split()[1] == "signal"
        with checkpoint.Checkpointer(run_dir / "checkpoints") as ckpt:
            assert ckpt.latest_step() == int(stopped[0].split()[2])  # the state it stopped at
        assert took < 30.0, took  # within seconds: the chunk it is in and the save (13 s on a CI machine at load 14)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_kill_9_mid_training_loses_at_most_one_checkpoint_interval_and_resumes_to_the_uninterrupted_state(tmp_path):
    run_dir = tmp_path / "killed"
    proc = _child(TRAIN_CHILD, run_dir)
    _read_until_step(proc, 500)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    last = max([500] + [int(line.split()[1]) for line in out.splitlines() if line.startswith("step ")])
    assert proc.returncode == -signal.SIGKILL
    with checkpoint.Checkpointer(run_dir / "checkpoints") as ckpt:
        kept = ckpt.latest_step()
    assert last - kept <= 200  # the checkpoint interval
    total = kept + 200

    resumed = _train(run_dir, total, checkpoint_every_env_steps=200)
    assert resumed.history[0]["env_steps"] == kept + 100  # from the newest complete checkpoint
    whole = _train(tmp_path / "whole", total)
    assert (int(resumed.carry.agent.env_steps), int(resumed.carry.agent.updates)) == \
        (int(whole.carry.agent.env_steps), int(whole.carry.agent.updates)) == (total, int(whole.carry.agent.updates))
    for a, b in zip(jax.tree.leaves(resumed.carry), jax.tree.leaves(whole.carry)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
