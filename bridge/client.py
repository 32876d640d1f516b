"""Trainer-side clients: lockstep (REQ, lazy pirate), real time (conflated SUB + PUSH, elastic
control period) and telemetry-only newline-delimited JSON over TCP.

Every frame handed back has passed :func:`bridge.protocol.validate_telemetry`; invalid ones are
dropped and counted in ``stats.invalid``. Whatever a plugin sends (garbage, multipart messages,
numbers too large for a float, wrong replies to valid requests), the clients count it, recover, and
raise only their documented exceptions: ``BridgeUnavailable`` (lockstep: no valid answer after all
retries), ``RemoteError`` (lockstep: the plugin refuses a request the client cannot fix by
retrying: ``unsupported``, ``version``, or a ``step`` before the caller's own ``reset``), and
``ProtocolError`` for the caller's own invalid request (an out-of-range action or seed, refused
before it is sent) or an invalid ``hello``/``track`` reply.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping

import numpy as np
import zmq

from bridge import protocol as P
from bridge.sdk import (DEFAULT_LOCKSTEP_ADDRESS, DEFAULT_PUB_ADDRESS, DEFAULT_PULL_ADDRESS, CurveKeys)

log = logging.getLogger(__name__)


class RemoteError(RuntimeError):
    """The plugin answered with an error message."""

    def __init__(self, code: str, message: str):
        super().__init__(f"plugin error [{code}]: {message}")
        self.code = code
        self.message = message


class BridgeUnavailable(ConnectionError):
    """The plugin did not answer after all retries."""


@dataclass
class ClientStats:
    requests: int = 0
    timeouts: int = 0
    reconnects: int = 0
    invalid: int = 0  # frames/replies dropped because they broke the contract
    restarted_episodes: int = 0
    late_steps: int = 0
    stale_steps: int = 0
    errors: dict = field(default_factory=dict)


@dataclass
class Reply:
    """A lockstep reset/step result. ``restarted``: the plugin was lost (timeout, restart, invalid
    reply) and the client started a new episode, so ``frame`` is that episode's first frame and the
    previous episode must be treated as truncated."""
    frame: dict
    restarted: bool
    rtt_s: float


def _apply_curve_client(sock: zmq.Socket, curve: CurveKeys | None) -> None:
    if curve is None:
        return
    if curve.server_key is None:
        raise ValueError("client CurveKeys need server_key (the plugin's public key)")
    sock.curve_publickey = curve.public_key
    sock.curve_secretkey = curve.secret_key
    sock.curve_serverkey = curve.server_key


# ----------------------------------------------------------------------------- lockstep

class LockstepClient:
    """REQ client with timeouts and the lazy-pirate pattern (close, reopen, new episode)."""

    def __init__(self, address: str = DEFAULT_LOCKSTEP_ADDRESS, *, timeout: float = 2.0, retries: int = 3,
                 max_bytes: int = P.DEFAULT_MAX_BYTES, track_max_bytes: int = P.DEFAULT_TRACK_MAX_BYTES,
                 curve: CurveKeys | None = None, client_name: str = "racerl-jax",
                 context: zmq.Context | None = None):
        self.address = address
        self.timeout = timeout
        self.retries = retries
        self.max_bytes = max_bytes
        self.track_max_bytes = track_max_bytes
        self.curve = curve
        self.client_name = client_name
        self.stats = ClientStats()
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self._seq = 0
        self._last_seed: int | None = None
        self._in_episode = False
        self._open()

    def _open(self) -> None:
        s = self._ctx.socket(zmq.REQ)
        s.linger = 0
        _apply_curve_client(s, self.curve)
        s.connect(self.address)
        self._sock = s

    def _reopen(self) -> None:
        self._sock.close(linger=0)
        self.stats.reconnects += 1
        self._open()

    def request_raw(self, data: bytes, max_bytes: int | None = None) -> dict:
        """Send raw bytes, return the decoded reply; raises TimeoutError (socket then reopened) or
        ProtocolError (a reply that is not one valid protocol-v1 message)."""
        self.stats.requests += 1
        self._sock.send(data)
        if not self._sock.poll(int(self.timeout * 1000), zmq.POLLIN):
            self.stats.timeouts += 1
            self._reopen()  # a REQ that lost its reply is stuck; only a fresh socket recovers
            raise TimeoutError(f"no reply from {self.address} within {self.timeout} s")
        parts = self._sock.recv_multipart()  # all of it, or the next send finds the socket mid-reply
        if len(parts) != 1:
            raise P.ProtocolError(P.BAD_TELEMETRY, f"reply has {len(parts)} frames; protocol v1 messages are "
                                                   f"one frame")
        return P.decode(parts[0], max_bytes or self.max_bytes)

    def _call(self, msg: dict, max_bytes: int | None = None) -> dict:
        reply = self.request_raw(P.encode(msg), max_bytes)
        if reply["type"] == "error":
            err = P.validate_error(reply)
            self.stats.errors[err["code"]] = self.stats.errors.get(err["code"], 0) + 1
            raise RemoteError(err["code"], err["message"])
        return reply

    def _checked(self, fn, *args):
        try:
            return fn(*args)
        except P.ProtocolError:
            self.stats.invalid += 1
            raise

    def hello(self) -> dict:
        """The plugin's hello reply (ProtocolError, counted in ``stats.invalid``, if it is invalid)."""
        return self._checked(lambda: P.validate_hello_reply(self._call(P.hello_request(self.client_name))))

    def track(self) -> dict:
        """Centre line and widths as numpy float64 arrays (RemoteError 'unsupported' if not served)."""
        tr = self._checked(lambda: P.validate_track_reply(self._call(P.track_request(), self.track_max_bytes)))
        return {k: (np.asarray(v, dtype=np.float64) if k in ("x", "y", "w_left", "w_right") else v)
                for k, v in tr.items()}

    def _frame(self, msg: dict) -> tuple[dict, float]:
        """Send a (valid) reset or step, return (validated telemetry reply, round trip). An invalid
        reply, or an error that a valid request cannot deserve (bad_request, bad_action), is counted
        in ``stats.invalid`` and raised as ProtocolError."""
        t0 = time.perf_counter()
        try:
            reply = self._call(msg)
            rtt = time.perf_counter() - t0
            return P.validate_telemetry(reply), rtt
        except P.ProtocolError:
            self.stats.invalid += 1
            raise
        except RemoteError as e:
            if e.code in (P.BAD_REQUEST, P.BAD_ACTION):
                self.stats.invalid += 1
                raise P.ProtocolError(P.BAD_TELEMETRY, f"the plugin refused a valid {msg['type']!r} request "
                                                       f"with {e.code!r}: {e.message}") from None
            raise

    def reset(self, seed: int | None = None) -> Reply:
        """Start a new episode, retrying (with reconnect) up to ``retries`` times.

        ``seed``: None or an integer from 0 to 2^32 - 1 (ProtocolError before anything is sent
        otherwise). Timeouts, invalid replies and ``internal`` errors are retried; after the last
        attempt, BridgeUnavailable. ``unsupported`` and ``version`` raise RemoteError at once."""
        msg = P.reset_request(seed)
        P.validate_request(msg)  # the caller's bad seed is the caller's error, not a plugin fault
        self._last_seed = seed
        self._in_episode = False
        last_exc: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                frame, rtt = self._frame(msg)
                self._in_episode = True
                return Reply(frame, attempt > 0, rtt)
            except RemoteError as e:
                if e.code in (P.UNSUPPORTED, P.VERSION_ERR):
                    raise  # retrying cannot help: the wrong kind of plugin, or a newer one
                last_exc = e  # internal (the game failed), or a nonsensical no_episode
                log.warning("reset failed (%s), attempt %d/%d", e, attempt + 1, self.retries + 1)
            except (TimeoutError, P.ProtocolError) as e:
                last_exc = e
                log.warning("reset failed (%s), attempt %d/%d", e, attempt + 1, self.retries + 1)
        raise BridgeUnavailable(f"plugin at {self.address} gave no valid reset reply after "
                                f"{self.retries + 1} attempts: {last_exc}")

    def step(self, action: Mapping[str, float], ticks: int = 1) -> Reply:
        """Apply ``action`` for ``ticks`` ticks (1 to 1000). If the plugin is lost (timeout,
        restart, invalid reply, or the game failed: error ``internal``) the client reconnects where
        needed and starts a new episode: ``Reply.restarted`` is then True.

        An action out of range or not finite, or ``ticks`` outside 1..1000, raises ProtocolError
        before anything is sent (the caller's bug, never hidden)."""
        msg = P.step_request(self._seq, action, ticks)
        P.validate_request(msg)
        self._seq += 1
        try:
            frame, rtt = self._frame(msg)
            return Reply(frame, False, rtt)
        except TimeoutError as e:
            log.warning("step timed out (%s); reconnecting and starting a new episode", e)
        except RemoteError as e:
            if e.code == P.INTERNAL:
                log.warning("the game failed to serve the step (%s); starting a new episode", e.message)
            elif e.code != P.NO_EPISODE or not self._in_episode:
                raise  # a step before our own reset (the caller's bug), unsupported, version
            else:
                log.warning("plugin lost the episode (restarted?); starting a new one")
        except P.ProtocolError as e:
            log.warning("invalid step reply dropped (%s); starting a new episode", e)
        self._in_episode = False
        self.stats.restarted_episodes += 1
        r = self.reset(self._last_seed)
        return Reply(r.frame, True, r.rtt_s)

    def close(self, say_bye: bool = True) -> None:
        if self._sock is None:
            return
        if say_bye:
            try:
                old, self.timeout = self.timeout, min(self.timeout, 0.5)
                self._call(P.close_request())
            except (TimeoutError, RemoteError, P.ProtocolError):
                pass
            finally:
                self.timeout = old
        self._sock.close(linger=0)
        self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------- real time

@dataclass
class RealtimeStep:
    """One control period. ``frame``: the newest valid frame (None before any arrived); ``fresh``:
    whether it is newer than the previous step's; ``late_s``: how far past its scheduled time the
    observation was taken (compute overrun plus timer jitter); ``age_s``: since it was received."""
    frame: dict | None
    fresh: bool
    late_s: float
    age_s: float


class RealtimeClient:
    """Conflated telemetry SUB + action PUSH with a fixed control period (elastic, as in rtgym).

    Every frame received is validated (:meth:`ingest`); invalid ones are dropped and counted in
    ``stats.invalid``. The conflated SUB keeps only the last frame of a multi-frame message (ZeroMQ
    cannot conflate multipart messages), so such a message is judged by that frame alone.

    ``step(action)`` sends the action at once, sleeps until the end of the current control period
    and returns the newest frame. If the caller comes back late (its compute took longer than the
    period), the schedule restarts from now instead of bursting to catch up, and the lateness is
    recorded in ``late_s``.

    ``hold(action)`` keeps sending one action every period from a background thread until
    ``release_hold()``: the plugin falls back to neutral after ``action_timeout`` without actions, so
    an emergency stop that sent its brake once would let the car roll on after half a second.
    """

    def __init__(self, telemetry_address: str = DEFAULT_PUB_ADDRESS,
                 action_address: str = DEFAULT_PULL_ADDRESS, *, period: float = 0.02,
                 max_bytes: int = P.DEFAULT_MAX_BYTES, curve: CurveKeys | None = None,
                 context: zmq.Context | None = None, clock=time.monotonic, spin_s: float = 0.0005):
        self.period = period
        self.max_bytes = max_bytes
        self.clock = clock
        self.spin_s = spin_s
        self.stats = ClientStats()
        self._ctx = context or zmq.Context.instance()
        self.sub = self._ctx.socket(zmq.SUB)
        self.sub.linger = 0
        self.sub.setsockopt(zmq.CONFLATE, 1)  # keep only the newest frame; must precede connect
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        _apply_curve_client(self.sub, curve)
        self.sub.connect(telemetry_address)
        self.push = self._ctx.socket(zmq.PUSH)
        self.push.linger = 0
        self.push.sndhwm = 4
        _apply_curve_client(self.push, curve)
        self.push.connect(action_address)
        self._seq = 0
        self._latest: dict | None = None
        self._latest_at = -float("inf")
        self._last_step_seq = -1
        self._deadline: float | None = None
        self.late: deque[float] = deque(maxlen=1_000_000)  # bounded: a long run must not grow memory
        # The hold thread and the caller share the PUSH socket and the seq counter: one lock for both.
        self._send_lock = threading.Lock()
        self._held: dict | None = None
        self._hold_stop = threading.Event()
        self._hold_thread: threading.Thread | None = None

    def poll_frame(self) -> dict | None:
        """Take the newest frame waiting (if any) into ``latest``; returns it when new."""
        new = None
        while True:
            try:
                parts = self.sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return new
            frame = self.ingest(parts)
            if frame is not None:
                self._latest, self._latest_at, new = frame, self.clock(), frame

    def ingest(self, parts: list) -> dict | None:
        """Validate one received message (its frames); the telemetry, or None (counted in
        ``stats.invalid``) if it breaks the contract. Never raises."""
        try:
            if len(parts) != 1:
                raise P.ProtocolError(P.BAD_TELEMETRY, f"message has {len(parts)} frames; protocol v1 "
                                                       f"messages are one frame")
            return P.validate_telemetry(P.decode(parts[0], self.max_bytes))
        except P.ProtocolError as e:
            self.stats.invalid += 1
            log.debug("invalid telemetry dropped: %s", e)
            return None

    def wait_frame(self, timeout: float, newer_than_seq: int = -1, episode_at_least: int | None = None) -> dict:
        """Block until a valid frame with seq > newer_than_seq (and episode >= ...) arrives."""
        end = self.clock() + timeout
        while True:
            f = self.poll_frame()
            if f is not None and f["seq"] > newer_than_seq and (
                    episode_at_least is None or f["episode"] >= episode_at_least):
                return f
            remaining = end - self.clock()
            if remaining <= 0:
                raise TimeoutError(f"no fresh valid telemetry within {timeout} s")
            self.sub.poll(max(1, int(min(remaining, 0.05) * 1000)), zmq.POLLIN)

    @property
    def latest(self) -> dict | None:
        return self._latest

    def send_action(self, action: Mapping[str, float]) -> int:
        """Send one action now; while an action is held, the held one goes out instead."""
        with self._send_lock:
            if self._held is not None:
                action = self._held
            msg = P.action_message(self._seq, *(float(action[k]) for k in P.CONTROLS))
            P.validate_realtime_message(msg)  # never put an out-of-range control on the wire
            seq = self._seq
            self._seq += 1
            try:
                self.push.send(P.encode(msg), zmq.NOBLOCK)
            except zmq.Again:
                self.stats.errors["send_blocked"] = self.stats.errors.get("send_blocked", 0) + 1
            return seq

    def hold(self, action: Mapping[str, float]) -> None:
        """Send ``action`` now and again every period until :meth:`release_hold` (or close)."""
        held = {k: float(action[k]) for k in P.CONTROLS}
        P.validate_realtime_message(P.action_message(0, *held.values()))  # refuse a bad action here, not in the thread
        with self._send_lock:
            self._held = held
        self.send_action(held)
        if self._hold_thread is None or not self._hold_thread.is_alive():
            self._hold_stop.clear()
            self._hold_thread = threading.Thread(target=self._hold_loop, name="bridge-hold", daemon=True)
            self._hold_thread.start()

    def _hold_loop(self) -> None:
        while not self._hold_stop.wait(self.period):
            if self._held is None:
                return
            try:
                self.send_action(self._held)
            except zmq.ZMQError:  # the socket was closed under us
                return

    def release_hold(self) -> None:
        with self._send_lock:
            self._held = None
        self._hold_stop.set()
        if self._hold_thread is not None:
            self._hold_thread.join(timeout=1.0)
            self._hold_thread = None

    def reset(self, seed: int | None = None, timeout: float = 5.0) -> dict:
        """Ask for a new episode and wait for its first frame; restarts the control schedule."""
        if self._latest is None:  # learn the current episode first, so its frames are not taken as new
            self.wait_frame(timeout)
        before = self._latest["episode"]
        # the PUSH may still be connecting: wait until it can send rather than drop the reset
        if not self.push.poll(int(timeout * 1000), zmq.POLLOUT):
            raise TimeoutError(f"cannot send reset: the action socket did not connect within {timeout} s")
        with self._send_lock:
            self.push.send(P.encode(P.reset_request(seed)), zmq.NOBLOCK)
        frame = self.wait_frame(timeout, episode_at_least=before + 1)
        self._last_step_seq = frame["seq"]
        self._deadline = self.clock() + self.period
        return frame

    def _sleep_until(self, t: float) -> None:
        # Sleep most of the way, then spin: time.sleep alone overshoots by up to a scheduler tick.
        while True:
            remaining = t - self.clock()
            if remaining <= 0:
                return
            if remaining > self.spin_s:
                time.sleep(remaining - self.spin_s)

    def step(self, action: Mapping[str, float]) -> RealtimeStep:
        now = self.clock()
        if self._deadline is None:
            self._deadline = now + self.period
        self.send_action(action)
        self._sleep_until(self._deadline)
        taken = self.clock()
        late = max(0.0, taken - self._deadline)
        self.poll_frame()
        self.late.append(late)
        if late > 0.1 * self.period:
            self.stats.late_steps += 1
            self._deadline = taken + self.period  # elastic: restart the schedule, do not burst
        else:
            self._deadline += self.period
        f = self._latest
        fresh = f is not None and f["seq"] > self._last_step_seq
        if f is not None:
            self._last_step_seq = f["seq"]
        if not fresh:
            self.stats.stale_steps += 1
        return RealtimeStep(f, fresh, late, taken - self._latest_at if f is not None else float("inf"))

    def close(self) -> None:
        self.release_hold()
        self.sub.close(linger=0)
        self.push.close(linger=0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------- telemetry only (TCP)

class TcpTelemetrySource:
    """Newline-delimited JSON telemetry over plain TCP; iterating yields valid frames only.

    ``TcpTelemetrySource.connect(host, port)`` reads from a game that serves the stream;
    ``TcpTelemetrySource.listen(host, port)`` waits for the game to connect and stream to us.
    Invalid lines are dropped and counted in ``stats.invalid``; lines longer than ``max_bytes`` too.
    """

    def __init__(self, sock: socket.socket, max_bytes: int = P.DEFAULT_MAX_BYTES):
        self.sock = sock
        self.max_bytes = max_bytes
        self.stats = ClientStats()

    @classmethod
    def connect(cls, host: str, port: int, timeout: float = 5.0, **kw) -> "TcpTelemetrySource":
        s = socket.create_connection((host, port), timeout=timeout)
        return cls(s, **kw)

    @classmethod
    def listen(cls, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0, ready=None,
               **kw) -> "TcpTelemetrySource":
        """Accept one streaming game. ``ready(port)`` is called once listening (port 0 = any free)."""
        srv = socket.create_server((host, port))
        try:
            srv.settimeout(timeout)
            if ready is not None:
                ready(srv.getsockname()[1])
            conn, _ = srv.accept()
        finally:
            srv.close()
        conn.settimeout(timeout)
        return cls(conn, **kw)

    def __iter__(self) -> Iterator[dict]:
        buf, skipping = b"", False
        while True:
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, OSError):
                chunk = b""
            if not chunk:
                if buf.strip() and not skipping:
                    self.stats.invalid += 1  # a last line without its newline may be cut short
                return
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if skipping:  # the tail of an oversize line
                    skipping = False
                    continue
                if not line.strip():
                    continue
                try:
                    yield P.validate_telemetry(P.decode(line, self.max_bytes))
                except P.ProtocolError as e:
                    self.stats.invalid += 1
                    log.debug("invalid telemetry line dropped: %s", e)
            if len(buf) > self.max_bytes:
                if not skipping:
                    self.stats.invalid += 1
                buf, skipping = b"", True  # never buffer an unbounded line

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class NdjsonTelemetryServer:
    """Tiny game-side helper: serve lines (frames as dicts, or raw bytes) to one TCP reader.

    Runs in a daemon thread; ``port`` is the bound port (0 picks a free one). For tests and for
    games whose plugin is a script that already has the frames.
    """

    def __init__(self, lines: Iterable, host: str = "127.0.0.1", port: int = 0, interval: float = 0.0):
        self._srv = socket.create_server((host, port))
        self._srv.settimeout(10.0)
        self.port = self._srv.getsockname()[1]
        self._lines = lines
        self._interval = interval
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self._srv.accept()
        except OSError:
            return
        with conn:
            for item in self._lines:
                data = item if isinstance(item, bytes) else json.dumps(item).encode() + b"\n"
                try:
                    conn.sendall(data)
                except OSError:
                    return
                if self._interval:
                    time.sleep(self._interval)

    def close(self) -> None:
        self._srv.close()
        self._thread.join(timeout=5.0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
