"""Game-side SDK: serve a game to trainers over protocol v1.

A plugin author subclasses :class:`GamePlugin` (``reset`` and ``step`` returning the car's state as
a dict of telemetry fields, optionally ``track`` and ``info``) and calls :func:`serve_lockstep` or
:func:`serve_realtime`. The SDK owns the sockets, the counters (``seq``, ``episode``, ``t``,
``ack``), the inputs echoed in each frame, and all validation in both directions: the game code
only ever sees valid actions, and a frame the game produces that breaks the contract (a NaN, a
negative speed) never reaches a trainer.

Whatever the game's own code raises (``reset``, ``step``, ``track``, ``info``, or an invalid frame:
:class:`GameOutputError`) is caught: in lockstep the request is answered with error ``internal``
and the episode in progress is over (the next ``step`` gets ``no_episode``); in real time the
frame is dropped, counted in ``stats.game_errors``, and a new episode starts. The traceback is
logged once per place it was raised from (later ones are counted, with a summary line at most
once a minute). A serving loop ends only when asked to: ``stop``, ``close()``, or Ctrl-C.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
import traceback
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


class GameFaultLog:
    """Logs what the game's own code raised: the traceback once per place it was raised from
    (exception type, file, line), then only a count, with a summary line at most every
    ``summary_every_s`` seconds per place. A game that fails on every one of a flood of requests
    thus writes a handful of lines, not one traceback per request."""

    MAX_SITES = 256  # distinct places remembered; beyond that, counted under one key

    def __init__(self, logger: logging.Logger = log, summary_every_s: float = 60.0, clock=time.monotonic):
        self.log = logger
        self.summary_every_s = summary_every_s
        self.clock = clock
        self.counts: dict[tuple, int] = {}
        self._last_summary: dict[tuple, float] = {}
        self.total = 0

    @staticmethod
    def site(exc: BaseException) -> tuple:
        frames = traceback.extract_tb(exc.__traceback__)
        where = (frames[-1].filename, frames[-1].lineno) if frames else ("?", 0)
        return (type(exc).__name__, *where)

    def report(self, exc: BaseException, what: str) -> None:
        self.total += 1
        key = self.site(exc)
        if key not in self.counts and len(self.counts) >= self.MAX_SITES:
            key = ("(other)", "", 0)
        n = self.counts.get(key, 0) + 1
        self.counts[key] = n
        now = self.clock()
        if n == 1:
            self.log.error("the game raised while serving %s (%s: %s); answered/dropped and kept serving. "
                           "This traceback is logged once; repeats from the same place are counted:",
                           what, type(exc).__name__, _exc_text(exc), exc_info=(type(exc), exc, exc.__traceback__))
            self._last_summary[key] = now
        elif now - self._last_summary.get(key, now) >= self.summary_every_s:
            self._last_summary[key] = now
            self.log.error("the game raised %s at %s:%s again while serving %s: %d times so far",
                           key[0], key[1], key[2], what, n)


class GamePlugin:
    """What a plugin author implements. Subclass and override ``reset`` and ``step``.

    Frame fields are the telemetry fields of the contract except the ones the SDK fills:
    required from the game are ``x``, ``y``, ``yaw`` (m, m, rad) and ``speed`` (m/s, >= 0); any of
    ``accel_long``, ``accel_lat``, ``yaw_rate``, ``lap``, ``lap_dist``, ``on_track``, ``done``,
    ``reason`` may be added. ``seq``, ``episode``, ``ack`` are always the SDK's; ``t`` and the
    applied ``steer``/``throttle``/``brake`` are filled by the SDK unless the game returns them
    (a game that clamps or smooths inputs should report what it applied).

    The game only ever sees valid requests (``seed`` None or 0..2^32 - 1, ``ticks`` 1..1000, every
    control a finite number in range). Whatever these methods raise is caught: the request is
    answered with error ``internal`` (real time: the frame is dropped), the episode ends, the
    traceback is logged once per place it came from, and the plugin keeps serving.
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
    game_errors: int = 0  # the game's own code raised (lockstep: answered 'internal'; real time: frame dropped)


class _Refusal(Exception):
    """A contract error the SDK itself decides (no_episode, unsupported): never the game's fault."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _exc_text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - an exception whose own __str__ fails still gets a name
        return f"<{type(exc).__name__} whose message cannot be shown>"


def _error_reply(code: str, message: str) -> bytes:
    if len(message) > 500:
        message = message[:480] + f"... ({len(message)} chars)"
    return P.encode(P.error(code, message))


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
        self.faults = GameFaultLog()
        self._seq = 0
        self._episode = -1
        self._in_episode = False
        self._ticks = 0
        self._closed = False

    # -- one request
    def handle(self, data: bytes) -> tuple[bytes, bool]:
        """Answer one raw request. Returns (reply bytes, whether the trainer said close).

        Never raises (but for KeyboardInterrupt/SystemExit): a request that breaks the contract is
        answered with its error code; a valid one the game fails to serve with ``internal``."""
        self.stats.requests += 1
        try:
            req = P.validate_request(P.decode(data, self.max_bytes))
        except P.ProtocolError as e:
            return self._refuse(e.code, e.message), False
        try:
            return self._dispatch(req)
        except _Refusal as e:
            return self._refuse(e.code, e.message), False
        except Exception as e:  # noqa: BLE001 - the game's own code (or its output) failed
            return self._internal(req["type"], e), False

    def _refuse(self, code: str, message: str) -> bytes:
        self.stats.errors[code] = self.stats.errors.get(code, 0) + 1
        return _error_reply(code, message)

    def _internal(self, what: str, exc: Exception) -> bytes:
        self.stats.game_errors += 1
        self._in_episode = False  # the contract: the episode in progress, if any, is over
        self.faults.report(exc, f"a {what!r} request")
        detail = _exc_text(exc) if isinstance(exc, GameOutputError) else f"{type(exc).__name__}: {_exc_text(exc)}"
        more = "; the episode is over: send a reset" if what in ("reset", "step") else ""
        return self._refuse(P.INTERNAL, f"the game failed while serving {what!r}: {detail}{more}")

    def _dispatch(self, req: dict) -> tuple[bytes, bool]:
        t = req["type"]
        if t == "hello":
            reply = P.hello_reply(self.game.name, self.modes, self.game.dt, self._serves_track,
                                  **self.game.info())
            return P.encode(reply), False
        if t == "track":
            track = self.game.track() if self._serves_track else None
            if track is None:
                raise _Refusal(P.UNSUPPORTED, f"game {self.game.name!r} does not serve a track")
            if not isinstance(track, Mapping):
                raise GameOutputError(f"track() returned {type(track).__name__}, expected a dict of "
                                      f"name, closed, x, y, w_left, w_right")
            try:
                return P.encode(P.track_reply(**track)), False
            except P.ProtocolError as e:
                raise GameOutputError(f"the game produced an invalid track: {e.message}") from None
        if t == "close":
            return P.encode(P.bye()), True
        if "lockstep" not in self.modes:
            raise _Refusal(P.UNSUPPORTED, f"{t!r} is not served here: this game runs in real time "
                                          f"(telemetry on PUB, actions and resets on PULL)")
        if t == "reset":
            self._in_episode = False  # until the game has served the new episode's first frame
            fields = self.game.reset(req["seed"])
            reply = P.encode(self._frame(fields, P.NEUTRAL_ACTION, None, self._episode + 1, 0))
            self._in_episode = True
            return reply, False
        # step
        if not self._in_episode:
            why = ("step before any reset" if self._episode < 0 else
                   "the episode ended when the game failed (error 'internal')")
            raise _Refusal(P.NO_EPISODE, f"{why}: send a reset first")
        fields = self.game.step(req["action"], req["ticks"])
        return P.encode(self._frame(fields, req["action"], req["seq"], self._episode,
                                    self._ticks + req["ticks"])), False

    def _frame(self, fields: Mapping, action: Mapping, ack: int | None, episode: int, ticks: int) -> dict:
        """Build and validate the frame; only a valid one advances the counters."""
        frame = _game_frame(fields, {"seq": self._seq, "episode": episode, "ack": ack,
                                     "t": ticks * self.game.dt, **action})
        self._seq += 1
        self._episode, self._ticks = episode, ticks
        self.stats.frames += 1
        return frame

    # -- loop
    def serve(self, stop: threading.Event | None = None, poll_ms: int = 50) -> None:
        """Serve until ``stop`` is set (checked every poll_ms) or ``close()`` is called."""
        try:
            while not self._closed and not (stop is not None and stop.is_set()):
                if not self.sock.poll(poll_ms, zmq.POLLIN):
                    continue
                parts = self.sock.recv_multipart()
                if len(parts) != 1:  # one message is one frame; REP must still answer it
                    self.stats.requests += 1
                    reply = self._refuse(P.BAD_REQUEST, f"request has {len(parts)} frames; protocol v1 "
                                                        f"messages are one frame")
                else:
                    reply, _ = self.handle(parts[0])
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
        self.faults = GameFaultLog()
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
                parts = self.pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                if len(parts) != 1:
                    raise P.ProtocolError(P.BAD_REQUEST, f"message has {len(parts)} frames; protocol v1 "
                                                         f"messages are one frame")
                msg = P.validate_realtime_message(P.decode(parts[0], self.max_bytes))
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

    def _serve_info(self) -> None:
        for _ in range(100):  # bounded, like the inbox
            if not self.info.sock.poll(0, zmq.POLLIN):
                return
            parts = self.info.sock.recv_multipart()
            if len(parts) != 1:
                self.info.stats.requests += 1
                reply = self.info._refuse(P.BAD_REQUEST, f"request has {len(parts)} frames; protocol v1 "
                                                         f"messages are one frame")
            else:
                reply, _ = self.info.handle(parts[0])
            self.info.sock.send(reply)

    def tick(self) -> dict | None:
        """Process the inbox, advance the game one frame, publish and return the frame.

        If the game's code raises (or returns an invalid frame), nothing is published this frame:
        it is counted in ``stats.game_errors``, logged (traceback once per place), and the next
        frame starts a new episode (a failed reset is retried without its seed). Returns None then.
        """
        self._drain_inbox()
        if self.info is not None:
            self._serve_info()
        now = self.clock()
        resetting = self._pending_reset[0]
        try:
            if resetting:
                seed = self._pending_reset[1]
                self._pending_reset = (False, None)
                fields = self.game.reset(seed)
                episode, ticks, ep_start = self._episode + 1, 0, now
                applied = P.NEUTRAL_ACTION
            else:
                if self._ack is not None and now - self._last_action_at > self.action_timeout:
                    # Dead or stalled trainer: never leave the throttle on. Forget the seq watermark
                    # so a restarted trainer (seq from 0 again) is obeyed.
                    self._action, self._ack = dict(P.NEUTRAL_ACTION), None
                applied = self._action
                fields = self.game.step(dict(applied), 1)
                episode, ticks, ep_start = self._episode, self._ticks + 1, self._ep_start
            t = ticks * self.game.dt if self.pace else now - ep_start
            frame = _game_frame(fields, {"seq": self._seq, "episode": episode, "ack": self._ack, "t": t,
                                         **applied})
        except Exception as e:  # noqa: BLE001 - the game's own code (or its output) failed
            self.stats.game_errors += 1
            self.stats.dropped += 1
            self.faults.report(e, "a reset" if resetting else "a frame")
            self._pending_reset = (True, None)  # the episode is over, as in lockstep
            self._action, self._ack = dict(P.NEUTRAL_ACTION), None
            return None
        self._episode, self._ticks, self._ep_start = episode, ticks, ep_start
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
