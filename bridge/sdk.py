"""Game-side SDK: serve a game to trainers over protocol v1.

A plugin author subclasses :class:`GamePlugin` (``reset`` and ``step`` returning the car's state as
a dict of telemetry fields, optionally ``track`` and ``info``) and calls :func:`serve_lockstep` or
:func:`serve_realtime`. The SDK owns the sockets, the counters (``seq``, ``episode``, ``t``,
``ack``), the inputs echoed in each frame, and all validation in both directions: the game code
only ever sees valid actions, and a frame the game produces that breaks the contract (a NaN, a
negative speed) raises :class:`GameOutputError` instead of reaching a trainer.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

import zmq

from bridge import protocol as P

log = logging.getLogger(__name__)

DEFAULT_LOCKSTEP_ADDRESS = "tcp://127.0.0.1:5555"
DEFAULT_PUB_ADDRESS = "tcp://127.0.0.1:5556"
DEFAULT_PULL_ADDRESS = "tcp://127.0.0.1:5557"
DEFAULT_ACTION_TIMEOUT = 0.5


class GameOutputError(RuntimeError):
    """The game produced a frame that breaks the contract (a bug in the plugin, not the trainer)."""


class GamePlugin:
    """What a plugin author implements. Subclass and override ``reset`` and ``step``.

    Frame fields are the telemetry fields of the contract except the ones the SDK fills:
    required from the game are ``x``, ``y``, ``yaw`` (m, m, rad) and ``speed`` (m/s, >= 0); any of
    ``accel_long``, ``accel_lat``, ``yaw_rate``, ``lap``, ``lap_dist``, ``on_track``, ``done``,
    ``reason`` may be added. ``seq``, ``episode``, ``ack`` are always the SDK's; ``t`` and the
    applied ``steer``/``throttle``/``brake`` are filled by the SDK unless the game returns them
    (a game that clamps or smooths inputs should report what it applied).
    """

    #: game name reported in the hello reply
    name: str = "game"
    #: game seconds per tick
    dt: float = 0.02

    def reset(self, seed: int | None) -> dict:
        """Start a new episode (seed may be None) and return the first frame's fields."""
        raise NotImplementedError

    def step(self, action: Mapping[str, float], ticks: int) -> dict:
        """Apply the (validated) action for ``ticks`` ticks and return the frame fields after it."""
        raise NotImplementedError

    def track(self) -> dict | None:
        """Centre line and widths: dict(name, closed, x, y, w_left, w_right), or None if not served."""
        return None

    def info(self) -> dict:
        """Extra keys for the hello reply (car, version, ...). Trainers ignore keys they do not know."""
        return {}

    def close(self) -> None:
        """Release game resources when the server stops."""


# ----------------------------------------------------------------------------- security

@dataclass(frozen=True)
class CurveKeys:
    """CurveZMQ keys (Z85 bytes, as made by ``zmq.curve_keypair()``).

    Server side: ``secret_key`` and ``public_key`` are the server's own pair. Client side:
    ``secret_key``/``public_key`` are the client's pair and ``server_key`` is the server's public key.
    """
    public_key: bytes
    secret_key: bytes
    server_key: bytes | None = None

    @staticmethod
    def generate_pair() -> tuple[bytes, bytes]:
        """(public, secret), Z85-encoded."""
        return zmq.curve_keypair()


def is_loopback_address(address: str) -> bool:
    """True for tcp:// on a loopback host (127.0.0.0/8, ::1, localhost), ipc:// and inproc://."""
    parts = urlsplit(address)
    if parts.scheme in ("ipc", "inproc"):
        return True
    if parts.scheme != "tcp":
        raise ValueError(f"unsupported endpoint {address!r}: use tcp://HOST:PORT, ipc:// or inproc://")
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # '*', an interface name or a host name: treat as exposed


def bind_socket(sock: zmq.Socket, address: str, curve: CurveKeys | None) -> None:
    """Bind, refusing a non-loopback address unless CurveZMQ keys are given."""
    if curve is not None:
        if not zmq.has("curve"):
            raise RuntimeError("this libzmq was built without CurveZMQ; install pyzmq wheels from PyPI")
        sock.curve_server = True
        sock.curve_secretkey = curve.secret_key
        sock.curve_publickey = curve.public_key
    elif not is_loopback_address(address):
        raise PermissionError(
            f"refusing to bind {address!r} without encryption: a non-loopback address needs CurveZMQ "
            f"keys (pass curve=CurveKeys(public, secret) from zmq.curve_keypair()), or bind 127.0.0.1")
    sock.bind(address)


def _game_frame(game_fields: Mapping[str, Any], counters: dict) -> dict:
    """Merge the game's fields with the SDK's counters and validate the result."""
    if not isinstance(game_fields, Mapping):
        raise GameOutputError(f"game returned {type(game_fields).__name__}, expected a dict of telemetry fields")
    frame = {"type": "telemetry", "v": P.VERSION}
    for k in ("t", "steer", "throttle", "brake"):
        frame[k] = counters[k]
    frame.update({k: v for k, v in game_fields.items() if k in P.TELEMETRY_FIELDS})
    for k in ("seq", "episode", "ack"):
        frame[k] = counters[k]
    try:
        return P.validate_telemetry(frame)
    except P.ProtocolError as e:
        raise GameOutputError(f"the game produced an invalid frame: {e.message}. Fix the plugin's "
                              f"reset()/step() so every field is a finite number in range") from None


# ----------------------------------------------------------------------------- lockstep

@dataclass
class ServerStats:
    requests: int = 0
    errors: dict = field(default_factory=dict)  # code -> count
    frames: int = 0
    dropped: int = 0  # real time: invalid or stale incoming messages


class LockstepServer:
    """REP server: one request, one reply; the game never advances between requests."""

    def __init__(self, game: GamePlugin, address: str = DEFAULT_LOCKSTEP_ADDRESS, *,
                 curve: CurveKeys | None = None, max_bytes: int = P.DEFAULT_MAX_BYTES,
                 context: zmq.Context | None = None, modes: tuple[str, ...] = ("lockstep",)):
        self.game = game
        self.max_bytes = max_bytes
        self.modes = modes
        self.stats = ServerStats()
        self._ctx = context or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.REP)
        self.sock.linger = 0
        try:
            bind_socket(self.sock, address, curve)
        except BaseException:
            self.sock.close()
            raise
        self.address = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        # Whether the game serves a track is fixed; the track itself may change with each reset
        # (a new layout per seed), so the reply is built when asked.
        self._serves_track = game.track() is not None
        self._seq = 0
        self._episode = -1
        self._ticks = 0
        self._closed = False

    # -- one request
    def handle(self, data: bytes) -> tuple[bytes, bool]:
        """Answer one raw request. Returns (reply bytes, whether the trainer said close)."""
        self.stats.requests += 1
        try:
            req = P.validate_request(P.decode(data, self.max_bytes))
            return self._dispatch(req)
        except P.ProtocolError as e:
            self.stats.errors[e.code] = self.stats.errors.get(e.code, 0) + 1
            return P.encode(P.error(e.code, e.message)), False

    def _dispatch(self, req: dict) -> tuple[bytes, bool]:
        t = req["type"]
        if t == "hello":
            reply = P.hello_reply(self.game.name, self.modes, self.game.dt, self._serves_track,
                                  **self.game.info())
            return P.encode(reply), False
        if t == "track":
            track = self.game.track() if self._serves_track else None
            if track is None:
                raise P.ProtocolError(P.UNSUPPORTED, f"game {self.game.name!r} does not serve a track")
            return P.encode(P.track_reply(**track)), False
        if t == "close":
            return P.encode(P.bye()), True
        if "lockstep" not in self.modes:
            raise P.ProtocolError(P.UNSUPPORTED, f"{t!r} is not served here: this game runs in real time "
                                                 f"(telemetry on PUB, actions and resets on PULL)")
        if t == "reset":
            fields = self.game.reset(req["seed"])
            self._episode += 1
            self._ticks = 0
            return P.encode(self._frame(fields, P.NEUTRAL_ACTION, None)), False
        # step
        if self._episode < 0:
            raise P.ProtocolError(P.NO_EPISODE, "step before any reset: send a reset first")
        fields = self.game.step(req["action"], req["ticks"])
        self._ticks += req["ticks"]
        return P.encode(self._frame(fields, req["action"], req["seq"])), False

    def _frame(self, fields: Mapping, action: Mapping, ack: int | None) -> dict:
        frame = _game_frame(fields, {"seq": self._seq, "episode": self._episode, "ack": ack,
                                     "t": self._ticks * self.game.dt, **action})
        self._seq += 1
        self.stats.frames += 1
        return frame

    # -- loop
    def serve(self, stop: threading.Event | None = None, poll_ms: int = 50) -> None:
        """Serve until ``stop`` is set (checked every poll_ms) or ``close()`` is called."""
        try:
            while not self._closed and not (stop is not None and stop.is_set()):
                if not self.sock.poll(poll_ms, zmq.POLLIN):
                    continue
                reply, _ = self.handle(self.sock.recv())
                self.sock.send(reply)
        finally:
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.sock.close(linger=0)
            self.game.close()


# ----------------------------------------------------------------------------- real time

class RealtimeServer:
    """PUB telemetry at the game's rate, PULL actions/resets; neutral action after action_timeout.

    ``pace=True``: the SDK keeps the frame period ``1/rate_hz`` on the wall clock and calls
    ``game.step(action, 1)`` once per period (a sim we drive). ``pace=False``: ``game.step`` itself
    blocks until the game's next frame (a game with its own clock), and the SDK does not sleep.
    Optionally ``info_address`` binds a REP socket answering hello/track/close (reset and step are
    ``unsupported`` there) so a real-time trainer can learn dt and the track.
    """

    def __init__(self, game: GamePlugin, pub_address: str = DEFAULT_PUB_ADDRESS,
                 pull_address: str = DEFAULT_PULL_ADDRESS, *, rate_hz: float | None = None, pace: bool = True,
                 action_timeout: float = DEFAULT_ACTION_TIMEOUT, curve: CurveKeys | None = None,
                 max_bytes: int = P.DEFAULT_MAX_BYTES, info_address: str | None = None,
                 context: zmq.Context | None = None, clock=time.monotonic):
        self.game = game
        self.rate_hz = rate_hz if rate_hz is not None else 1.0 / game.dt
        self.pace = pace
        self.action_timeout = action_timeout
        self.max_bytes = max_bytes
        self.clock = clock
        self.stats = ServerStats()
        self._ctx = context or zmq.Context.instance()
        self._socks: list[zmq.Socket] = []
        try:
            self.pub = self._socket(zmq.PUB, pub_address, curve)
            self.pull = self._socket(zmq.PULL, pull_address, curve)
            self.info: LockstepServer | None = None
            if info_address is not None:
                self.info = LockstepServer(game, info_address, curve=curve, max_bytes=max_bytes,
                                           context=self._ctx, modes=("realtime",))
        except BaseException:
            for s in self._socks:
                s.close(linger=0)
            raise
        self.pub_address = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pull_address = self.pull.getsockopt_string(zmq.LAST_ENDPOINT)
        self._seq = 0
        self._episode = -1
        self._ep_start = 0.0
        self._ticks = 0
        self._action = dict(P.NEUTRAL_ACTION)
        self._ack: int | None = None
        self._last_action_at = -float("inf")
        self._pending_reset: tuple[bool, int | None] = (True, None)
        self._closed = False

    def _socket(self, kind: int, address: str, curve: CurveKeys | None) -> zmq.Socket:
        s = self._ctx.socket(kind)
        s.linger = 0
        self._socks.append(s)
        if kind == zmq.PUB:
            s.sndhwm = 16  # a slow subscriber gets the newest frames, not a growing backlog
        bind_socket(s, address, curve)
        return s

    def _drain_inbox(self, limit: int = 1000) -> None:
        # bounded, so a flood of messages cannot stall the game's frames
        for _ in range(limit):
            try:
                data = self.pull.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = P.validate_realtime_message(P.decode(data, self.max_bytes))
            except P.ProtocolError as e:
                self.stats.dropped += 1
                self.stats.errors[e.code] = self.stats.errors.get(e.code, 0) + 1
                log.debug("dropped real-time message: %s", e)
                continue
            if msg["type"] == "reset":
                # A new episode starts from neutral, and a new trainer's seq may restart from 0;
                # actions queued after this reset still apply to the new episode.
                self._pending_reset = (True, msg["seed"])
                self._action, self._ack = dict(P.NEUTRAL_ACTION), None
            elif self._ack is None or msg["seq"] > self._ack:
                self._action = {k: msg[k] for k in P.CONTROLS}
                self._ack = msg["seq"]
                self._last_action_at = self.clock()
            else:
                self.stats.dropped += 1  # older seq than the last applied: the contract drops it

    def tick(self) -> dict:
        """Process the inbox, advance the game one frame, publish and return the frame."""
        self._drain_inbox()
        if self.info is not None:
            while self.info.sock.poll(0, zmq.POLLIN):
                reply, _ = self.info.handle(self.info.sock.recv())
                self.info.sock.send(reply)
        now = self.clock()
        if self._pending_reset[0]:
            seed = self._pending_reset[1]
            self._pending_reset = (False, None)
            fields = self.game.reset(seed)
            self._episode += 1
            self._ticks = 0
            self._ep_start = now
            applied = P.NEUTRAL_ACTION
        else:
            if self._ack is not None and now - self._last_action_at > self.action_timeout:
                # Dead or stalled trainer: never leave the throttle on. Forget the seq watermark so
                # a restarted trainer (seq from 0 again) is obeyed.
                self._action, self._ack = dict(P.NEUTRAL_ACTION), None
            applied = self._action
            fields = self.game.step(dict(applied), 1)
            self._ticks += 1
        t = self._ticks * self.game.dt if self.pace else now - self._ep_start
        frame = _game_frame(fields, {"seq": self._seq, "episode": self._episode, "ack": self._ack, "t": t,
                                     **applied})
        self._seq += 1
        self.stats.frames += 1
        self.pub.send(P.encode(frame))
        return frame

    def serve(self, stop: threading.Event | None = None, duration: float | None = None) -> None:
        """Publish frames until ``stop`` is set, ``duration`` wall seconds pass, or close()."""
        period = 1.0 / self.rate_hz
        start = next_t = time.monotonic()
        try:
            while not self._closed and not (stop is not None and stop.is_set()):
                if duration is not None and time.monotonic() - start >= duration:
                    break
                self.tick()
                if self.pace:
                    next_t += period
                    delay = next_t - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    else:
                        next_t = time.monotonic()  # fell behind: do not burst to catch up
        finally:
            self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for s in self._socks:
                s.close(linger=0)
            if self.info is not None:
                self.info.close()  # also closes the game
            else:
                self.game.close()


def serve_lockstep(game: GamePlugin, address: str = DEFAULT_LOCKSTEP_ADDRESS, **kw: Any) -> None:
    """Serve ``game`` in lockstep until interrupted (Ctrl-C) or the process ends."""
    server = LockstepServer(game, address, **kw)
    log.info("serving %s in lockstep on %s", game.name, server.address)
    try:
        server.serve()
    except KeyboardInterrupt:
        pass


def serve_realtime(game: GamePlugin, pub_address: str = DEFAULT_PUB_ADDRESS,
                   pull_address: str = DEFAULT_PULL_ADDRESS, **kw: Any) -> None:
    """Serve ``game`` in real time until interrupted (Ctrl-C) or the process ends."""
    server = RealtimeServer(game, pub_address, pull_address, **kw)
    log.info("serving %s in real time: telemetry on %s, actions on %s", game.name,
             server.pub_address, server.pull_address)
    try:
        server.serve()
    except KeyboardInterrupt:
        pass
