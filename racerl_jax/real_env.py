"""The real game as a ``gymnasium.Env``, over the bridge (protocol v1), in lockstep or real time.

Observation and reward come from the SAME functions as the surrogate's (``surrogate.observation.
observe`` and ``surrogate.reward.reward``) on a track built the same way (``surrogate.env.
build_track``), with the surrogate's ``EnvConfig`` settings for the off-track / stuck / wrong-way /
time-limit ends: a policy trained on the surrogate sees the same inputs here, and only the physics
differs. The per-step computation (projection, bookkeeping, reward, observation) is one jitted
function, compiled once; the track is an argument, so a new track does not recompile.

Lockstep: ``bridge.client.LockstepClient``; one env step = ``ticks`` game ticks, chosen so the
control period matches ``EnvConfig.dt``. Real time: ``bridge.client.RealtimeClient`` with a fixed
control period of ``EnvConfig.dt`` and ``bridge.safety.SafetyLayer`` between the policy and the
game (clamps, rate limits, stale-telemetry watchdog, NaN guard, emergency stop).

Faults never hang and never reach the agent: a plugin that is lost, restarted or silent truncates
the episode and the next ``reset`` starts afresh. ``info["end_reason"]`` says why an episode
ended: off_track, wrong_way, stuck, time_limit (the surrogate's rules), ``game:<reason>`` (the game
ended it), plugin_lost (timeout, restart or invalid reply; the client reconnected),
plugin_unavailable, plugin_restarted (real time), stale_telemetry, episode_changed,
nan_observation, ``estop: ...``. Frames that break the contract are dropped by the clients; a non-finite observation truncates instead of
being returned.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from typing import Any

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import zmq

from bridge import protocol as P
from bridge.client import BridgeUnavailable, LockstepClient, RealtimeClient
from bridge.recorder import time_derivative
from bridge.safety import SafetyConfig, SafetyLayer
from bridge.sdk import DEFAULT_LOCKSTEP_ADDRESS, DEFAULT_PUB_ADDRESS, DEFAULT_PULL_ADDRESS, CurveKeys
from racerl_jax.gym_envs import gym_spaces
from surrogate.car import CarParams, validate_car_params
from surrogate.env import (ACTION_HIGH, ACTION_LOW, EnvConfig, Episode, RacingEnv, advance_episode, game_controls, governed,
                           start_episode)
from surrogate.env_params import build_track
from surrogate.observation import Telemetry, filter_imu, imu_vector, observe, observe_tables, with_imu
from surrogate.reward import RewardWeights
from surrogate.track import Track, TrackPos, arc_delta, on_track, project_global, project_tables, sample_points, single_tables
from surrogate.track_io import TrackData, TrackFileError, load_track, validate_track

log = logging.getLogger(__name__)

MOTION_FIELDS = ("accel_long", "accel_lat", "yaw_rate")
# Game end reasons that are a time limit or a finished run rather than a failure: the value of the
# state is not zero there, so they truncate (bootstrap) instead of terminating.
TRUNCATING_REASONS = ("finish", "time_limit", "timeout")


@dataclasses.dataclass(frozen=True)
class RealEnvConfig:
    """How to reach the game and what to build on it."""

    mode: str = "lockstep"  # "lockstep" or "realtime"
    #: lockstep REP address; in real time the optional hello/track REP ("" when the game has none)
    address: str = DEFAULT_LOCKSTEP_ADDRESS
    telemetry_address: str = DEFAULT_PUB_ADDRESS  # real time: the plugin's PUB
    action_address: str = DEFAULT_PULL_ADDRESS  # real time: the plugin's PULL
    #: TUM-format CSV of the game's centre line (world frame of the telemetry), or a bundled name;
    #: required when the game serves no track, and preferred over the served one when given
    track_file: str | None = None
    env: EnvConfig = EnvConfig()  # observation, control period, episode-end rules: the surrogate's
    reward: RewardWeights = dataclasses.field(default_factory=RewardWeights)
    car: CarParams | None = None  # car the reference line and speed profile are computed for
    #: every episode is reset with this seed (None: the seed given to reset, else a random one).
    #: For a game whose seed picks the track, like CarRacing: 0 keeps the track it serves.
    reset_seed: int | None = None
    timeout_s: float = 2.0  # lockstep reply timeout (then lazy pirate: reconnect, new episode)
    retries: int = 3  # lockstep reset attempts before BridgeUnavailable
    reset_timeout_s: float = 5.0  # real time: wait this long for the new episode's first frame
    safety: SafetyConfig = SafetyConfig()  # real time only
    curve: CurveKeys | None = None
    client_name: str = "racerl-jax"

    def __post_init__(self):
        if self.mode not in P.MODES:
            raise ValueError(f"RealEnvConfig.mode = {self.mode!r}; expected one of {P.MODES}")
        if not self.timeout_s > 0 or not self.reset_timeout_s > 0:
            raise ValueError("RealEnvConfig.timeout_s and reset_timeout_s must be > 0 seconds")
        if self.retries < 0:
            raise ValueError(f"RealEnvConfig.retries = {self.retries}; expected an integer >= 0")


# ----------------------------------------------------------------------------- jitted step


def telemetry_from(values: dict) -> Telemetry:
    """A ``Telemetry`` (float32 scalars) from a dict with x, y, yaw, speed and the motion fields."""
    f = lambda k: jnp.float32(values[k])  # noqa: E731
    return Telemetry(f("x"), f("y"), f("yaw"), f("speed"), f("accel_long"), f("accel_lat"), f("yaw_rate"))


@functools.partial(jax.jit, static_argnums=0)
def start(cfg: EnvConfig, track: Track, tel: Telemetry) -> tuple[jax.Array, Episode]:
    """First observation and bookkeeping of an episode: global projection, as after a teleport."""
    ep = start_episode(project_global(track, tel.x, tel.y, tel.yaw), imu_vector(tel))
    return observe(track, ep.pos, tel, ep.prev_action, cfg.obs), ep


@functools.partial(jax.jit, static_argnums=0)
def transition(cfg: EnvConfig, track: Track, weights: RewardWeights, ep: Episode, tel: Telemetry,
               action: jax.Array, dt: jax.Array):
    """One control step on a measured pose: (obs, episode, reward, terminated, truncated, info),
    through the surrogate's own bookkeeping (``surrogate.env.advance_episode``). Two things a real
    game forces: ``dt`` is the game time that really elapsed (frames can be late or skipped), and a
    projection that lost the car (more than a window's travel between frames) falls back to the
    global search."""
    action = jnp.clip(jnp.asarray(action, jnp.float32), ACTION_LOW, ACTION_HIGH)
    # The track packed once for this step's lookups, as the batched env does.
    tables = single_tables(track, cfg.projection_window)
    near, here = project_tables(tables, 0, tel.x, tel.y, tel.yaw, ep.pos.idx, cfg.projection_window)
    half = 0.5 * (here.field("w_left") + here.field("w_right"))
    lost = jnp.abs(near.lateral) > 2.0 * half + 5.0
    pos = jax.lax.cond(lost, lambda: project_global(track, tel.x, tel.y, tel.yaw), lambda: near)
    here = sample_points(tables, 0, pos.s)
    imu = filter_imu(cfg.obs, ep.imu, tel, dt)
    new, r, terminated, truncated, info = advance_episode(
        cfg, weights, ep, pos, arc_delta(track, ep.pos.s, pos.s), track.length, here.field("w_left"),
        here.field("w_right"), here.field("ref_offset"), tel.speed, action, dt, imu)
    obs = observe_tables(tables, 0, pos, with_imu(tel, imu), action, cfg.obs, here)
    return obs, new, r, terminated, truncated, {**info, "projection_lost": lost}


# A car that starts an episode this close to the line its laps count from (either side) drives a
# timed standing lap to its first crossing; further away, that first crossing only starts the timing.
GAME_LINE_TOLERANCE_M = 20.0


# ----------------------------------------------------------------------------- derived telemetry


class MotionDeriver:
    """Fills ``accel_long``, ``accel_lat``, ``yaw_rate`` where the game does not send them, with the
    same finite differences as ``bridge.recorder.read_run`` (backward differences of speed and
    unwrapped yaw over game time; accel_lat = speed * yaw_rate). Online there is no next frame, so
    an episode's first frame gets 0 (the recorder uses the next step's difference there)."""

    def __init__(self):
        self._prev: dict | None = None
        self._last = {k: 0.0 for k in MOTION_FIELDS}

    def __call__(self, frame: dict, first: bool = False) -> tuple[dict, tuple[str, ...]]:
        missing = tuple(k for k in MOTION_FIELDS if frame.get(k) is None)
        out = {k: frame[k] for k in MOTION_FIELDS if k not in missing}
        prev = None if first else self._prev
        if "yaw_rate" in missing:
            out["yaw_rate"] = self._diff(prev, frame, "yaw_rate", lambda f: f["yaw"], unwrap=True)
        if "accel_long" in missing:
            out["accel_long"] = self._diff(prev, frame, "accel_long", lambda f: f["speed"])
        if "accel_lat" in missing:
            out["accel_lat"] = frame["speed"] * out["yaw_rate"]
        self._prev = frame
        self._last = dict(out)
        return out, missing

    def _diff(self, prev, frame, key, get, unwrap=False):
        if prev is None:
            return 0.0
        v = np.array([get(prev), get(frame)], np.float64)
        if unwrap:
            v = np.unwrap(v)
        d = time_derivative(v, np.array([prev["t"], frame["t"]], np.float64))[-1]
        # the same frame again (t unchanged): keep the last estimate rather than a NaN
        return float(d) if np.isfinite(d) else self._last[key]


# ----------------------------------------------------------------------------- track


def track_data_from_reply(reply: dict, source: str) -> TrackData:
    """``TrackData`` from a validated ``track`` reply (closed loops only)."""
    if not reply.get("closed", True):
        raise TrackFileError(f"{source}: the game serves an open track ('closed': false); the surrogate's track "
                             "model is a closed loop: give a closed centre line as a track file instead")
    arr = lambda k: np.asarray(reply[k], np.float64)  # noqa: E731
    return validate_track(TrackData(str(reply.get("name") or "game"), arr("x"), arr("y"), arr("w_right"),
                                    arr("w_left")), source=source)


# ----------------------------------------------------------------------------- the env


class RealGameEnv(gym.Env):
    """One car in the real game. ``step`` returns ``(obs, reward, terminated, truncated, info)``
    exactly as ``racerl_jax.gym_envs.SurrogateEnv`` does, plus bridge details in ``info``:
    ``end_reason`` (why the episode ended, None while it runs), ``derived`` (telemetry fields
    computed here because the game did not send them), ``game_t`` (game time of the frame; its
    ``episode`` and ``seq`` are in the reset info and ``last_frame``), ``applied_action`` (what
    was sent, which is also the observation's previous action), ``safety`` (overrides: clamps,
    rate limits, NaN guard), and in real time ``late_s`` (how late the step was taken), ``age_s``
    and ``fresh`` (of the frame acted on)."""

    metadata = {"render_modes": []}

    def __init__(self, config: RealEnvConfig = RealEnvConfig(), *, clock=time.monotonic):
        self.config = config
        self.env_config = config.env
        self.observation_space, self.action_space = gym_spaces(RacingEnv(config.env))
        self._clock = clock
        self._ctx = zmq.Context()
        self._lockstep: LockstepClient | None = None
        self._rt: RealtimeClient | None = None
        self.safety: SafetyLayer | None = None
        self.hello: dict | None = None
        self.ticks = 1
        try:
            self._connect()
            self.track, self.reference = self._build_track()
            self._warm_up()
        except BaseException:
            self.close()
            raise
        self._deriver = MotionDeriver()
        self._episode: Episode | None = None
        self._frame: dict | None = None
        # The game's own lap count (its frames' ``lap``), where it sends one: see _game_lap.
        self._game_laps: int | None = None
        self._game_lap_t0: float | None = None  # game time the running lap started; None: an out lap
        self._game_lap_clean = True
        self._lap_start_s = 0.0
        self._obs: np.ndarray | None = None
        self._tel: Telemetry | None = None
        self._frame_at = -math.inf
        self.episodes = 0

    # -- setup
    def _info_client(self) -> LockstepClient:
        c = self.config
        return LockstepClient(c.address, timeout=c.timeout_s, retries=c.retries, curve=c.curve,
                              client_name=c.client_name, context=self._ctx)

    def _connect(self) -> None:
        c = self.config
        if c.mode == "lockstep":
            self._lockstep = self._info_client()
            self.hello = self._hello(self._lockstep)
            if "lockstep" not in self.hello["modes"]:
                raise ValueError(f"game {self.hello['game']!r} at {c.address} serves modes {self.hello['modes']}, "
                                 "not lockstep: use RealEnvConfig(mode='realtime')")
            ratio = c.env.dt / self.hello["dt"]
            self.ticks = max(1, math.floor(ratio + 0.5))
            if abs(self.ticks * self.hello["dt"] - c.env.dt) > 1e-3 * c.env.dt:
                log.warning("control period %.4f s is not a whole number of game ticks (%.4f s): stepping %d ticks "
                            "(%.4f s)", c.env.dt, self.hello["dt"], self.ticks, self.ticks * self.hello["dt"])
        else:
            if c.address:
                info = self._info_client()
                try:
                    self.hello = self._hello(info)
                    self._lockstep = info  # kept only to ask for the track
                except (BridgeUnavailable, P.ProtocolError) as e:
                    info.close(say_bye=False)
                    log.warning("no hello from %s (%s); going on without it", c.address, e)
            self._rt = RealtimeClient(c.telemetry_address, c.action_address, period=c.env.dt, curve=c.curve,
                                      context=self._ctx, clock=self._clock)
            self.safety = SafetyLayer(c.safety, clock=self._clock)

    def _hello(self, client: LockstepClient) -> dict:
        # retried like a reset: the game may still be starting (the client reopens its socket each time)
        for attempt in range(self.config.retries + 1):
            try:
                return client.hello()
            except TimeoutError as e:
                err = e
        raise BridgeUnavailable(f"no game answers at {self.config.address} ({err}, {self.config.retries + 1} "
                                "attempts); start the game's plugin, or check the address")

    def _build_track(self):
        c = self.config
        if c.track_file:
            data = load_track(c.track_file)
        elif self.hello is not None and self.hello["track"]:
            reply = self._lockstep.track()
            data = track_data_from_reply(reply, f"track served by {self.hello['game']!r} at {c.address}")
        else:
            why = (f"game {self.hello['game']!r} does not serve its track (hello says track: false)" if self.hello
                   else f"no hello/track service at {c.address or '(none given)'}")
            raise ValueError(f"{why}: give a track file of its centre line (TUM CSV, x_m,y_m,w_tr_right_m,"
                             "w_tr_left_m, in the telemetry's world frame) as RealEnvConfig.track_file / --track FILE")
        if self._rt is not None and self._lockstep is not None:
            self._lockstep.close()  # real time: the info socket is no longer needed
            self._lockstep = None
        self.track_data = data
        car = validate_car_params(c.car if c.car is not None else CarParams())
        return build_track(data, car, c.env)

    def _warm_up(self) -> None:
        # Compile both jitted functions now: in real time a first step that compiles would see a
        # stale frame (and the watchdog would rightly end the episode).
        t = self.track
        tel = telemetry_from({"x": t.x[0], "y": t.y[0], "yaw": t.heading[0], "speed": 0.0, "accel_long": 0.0,
                              "accel_lat": 0.0, "yaw_rate": 0.0})
        _, episode = start(self.env_config, t, tel)
        jax.block_until_ready(transition(self.env_config, t, self.config.reward, episode, tel, jnp.zeros(3, jnp.float32),
                                         jnp.float32(self.env_config.dt)))

    # -- helpers
    def _telemetry(self, frame: dict, first: bool) -> tuple[Telemetry, tuple[str, ...]]:
        motion, derived = self._deriver(frame, first)
        self._tel = telemetry_from({**frame, **motion})
        return self._tel, derived

    @property
    def last_frame(self) -> dict | None:
        """The newest valid telemetry frame the env used (a copy)."""
        return None if self._frame is None else dict(self._frame)

    @property
    def last_telemetry(self) -> Telemetry | None:
        """That frame as the observation function reads it (derived motion fields filled in)."""
        return self._tel

    @property
    def track_pos(self) -> TrackPos | None:
        """The car's position on the track during an episode (None between episodes)."""
        return None if self._episode is None else self._episode.pos

    def track_reply(self) -> dict:
        """The centre line in use, in the shape of a protocol ``track`` reply (for recordings)."""
        d = self.track_data
        return {"name": d.name, "closed": True, "x": d.x.tolist(), "y": d.y.tolist(), "w_left": d.w_left.tolist(),
                "w_right": d.w_right.tolist()}

    @property
    def lap_start_s(self) -> float:
        """Where the car stood at the start of the episode (the last reset), in metres from the start
        line that its laps count from (negative: before it): the game's line where the game counts
        laps (its ``lap_dist``, else the pose on the trainer's track), the trainer's track's
        otherwise. On such a game a start within GAME_LINE_TOLERANCE_M of the line is on it (0): its
        first lap is timed from the start (``_game_lap``)."""
        return self._lap_start_s

    def _start_s(self, frame: dict, pos: TrackPos) -> float:
        s = float(pos.s)
        game = frame.get("lap") is not None
        if game and frame.get("lap_dist") is not None:
            s = float(frame["lap_dist"])
        length = float(self.track.length)
        s %= length
        s = s - length if s > 0.5 * length else s
        return 0.0 if game and abs(s) <= GAME_LINE_TOLERANCE_M else s

    def _game_lap(self, frame: dict, info: dict) -> None:
        """A game that counts its laps (``lap`` in its frames) is the judge of when one is complete:
        its line may not be where the trainer's track map starts, and a game may end the episode at
        its line (CarRacing does, about 11 m before the first point of the centre line it serves),
        before the car reaches the map's. The lap is timed on the game's clock from the previous
        count, or from the episode's start where the car started on the line (a standing lap);
        clean when no step of it was off the track. Overrides the map's lap in ``info``."""
        off = bool(info["off_track"])
        self._game_lap_clean = self._game_lap_clean and not off
        counted = int(frame["lap"]) > self._game_laps
        timed = counted and self._game_lap_t0 is not None
        info["lap_completed"] = timed
        info["lap_time"] = float(frame["t"]) - self._game_lap_t0 if timed else None
        info["lap_clean"] = timed and self._game_lap_clean
        self._game_laps = int(frame["lap"])
        if counted:
            self._game_lap_t0, self._game_lap_clean = float(frame["t"]), not off

    def _info(self, frame: dict, derived, **extra) -> dict:
        # The game's episode and seq counters are in last_frame and the reset info only: in step infos
        # they would make two identical seeded episodes look different.
        info = {"game_t": frame["t"], "derived": tuple(derived), "game_on_track": frame.get("on_track"),
                "end_reason": None}
        info.update(extra)
        return info

    def _first_frame(self, seed: int | None) -> dict:
        if self._lockstep is not None and self._rt is None:
            return self._lockstep.reset(seed).frame
        try:
            self._rt.poll_frame()  # take the newest frame first: a restarted plugin counts episodes from 0
            frame = self._rt.reset(seed, timeout=self.config.reset_timeout_s)
        except TimeoutError as e:
            raise BridgeUnavailable(f"no telemetry from the game at {self.config.telemetry_address} after a "
                                    f"reset ({e}); is the real-time plugin running?") from None
        self._frame_at = self._clock()
        self.safety.reset()
        return frame

    # -- gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if self.safety is not None and self.safety.stopped:
            raise RuntimeError("the emergency stop is latched: call release_estop() before starting an episode")
        # A seed passed here goes to the game as is; otherwise one from the env's generator, so a
        # seeded env replays the same sequence of game episodes.
        if self.config.reset_seed is not None:
            game_seed = self.config.reset_seed
        else:
            game_seed = seed if seed is not None else int(self.np_random.integers(2**31 - 1))
        frame = self._first_frame(game_seed)
        tel, derived = self._telemetry(frame, first=True)
        obs, self._episode = start(self.env_config, self.track, tel)
        obs = np.asarray(obs)
        if not np.all(np.isfinite(obs)):
            raise P.ProtocolError(P.BAD_TELEMETRY, f"the first frame of episode {frame['episode']} gives a "
                                                   "non-finite observation; check the game's pose and the track")
        start_on = bool(on_track(self.track, self._episode.pos, margin=-self.env_config.car_half_width))
        if not start_on:
            log.warning("episode %d starts off the track (%.1f m from the centre line): does the track match the "
                        "game's? (a game whose seed picks the track, like CarRacing, serves only one of them)",
                        frame["episode"], float(self._episode.pos.lateral))
        self._frame, self._obs = frame, obs
        self._game_laps = frame.get("lap")
        self._lap_start_s = self._start_s(frame, self._episode.pos)
        self._game_lap_t0 = frame["t"] if self._lap_start_s == 0.0 else None
        self._game_lap_clean = start_on
        self.episodes += 1
        return obs.copy(), self._info(frame, derived, episode=frame["episode"], seq=frame["seq"],
                                      start_on_track=start_on)

    def _ended(self, reason: str, frame: dict | None, **extra):
        """Truncate without a transition: the last valid observation, no reward."""
        self._episode = None
        f = frame if frame is not None else self._frame
        info = self._info(f, (), **extra)
        info["end_reason"] = reason
        return self._obs.copy(), 0.0, False, True, info

    def step(self, action):
        if self._episode is None:
            raise RuntimeError("RealGameEnv.step called before reset(), or after the episode ended; call reset()")
        a = np.asarray(action, np.float64)
        if a.shape != self.action_space.shape:
            names = "[steer, throttle, brake]" if self.env_config.pedals == "separate" else "[steer, pedal]"
            raise ValueError(f"action has shape {a.shape}; expected {self.action_space.shape}: {names} "
                             f"(RealEnvConfig.env.pedals={self.env_config.pedals!r})")
        a = game_controls(a, self.env_config.pedals, xp=np).astype(np.float64)  # NaN stays NaN for the guards
        a = governed(a, float(self._frame["speed"]), self.env_config.speed_limit, xp=np)  # as the surrogate's car
        extra: dict[str, Any] = {}
        if self._rt is None:
            if not np.all(np.isfinite(a)):
                a, extra["safety"] = np.zeros(3), ("nan_action",)
            extra["applied_action"] = a.astype(np.float32)
            try:
                reply = self._lockstep.step(dict(zip(P.CONTROLS, map(float, a))), self.ticks)
            except BridgeUnavailable as e:
                log.warning("game lost: %s", e)
                return self._ended("plugin_unavailable", None, **extra)
            if reply.restarted:
                # The plugin timed out, restarted, or sent an invalid reply; the client reconnected and
                # already started a new episode, so ours is over.
                return self._ended("plugin_lost", reply.frame, **extra)
            frame = reply.frame
        else:
            frame, a, extra = self._realtime_step(a)
            if frame is None:  # the watchdog, the e-stop or a restarted plugin ended the episode
                return self._ended(extra.pop("end_reason"), None, **extra)
        if frame["episode"] != self._frame["episode"]:  # the game started a new episode on its own
            return self._ended("episode_changed", frame, **extra)
        tel, derived = self._telemetry(frame, first=False)
        dt = jnp.float32(max(frame["t"] - self._frame["t"], 0.0))
        obs, episode, r, term, trunc, jinfo = transition(self.env_config, self.track, self.config.reward, self._episode,
                                                      tel, jnp.asarray(a, jnp.float32), dt)
        obs = np.asarray(obs)
        if not np.all(np.isfinite(obs)) or not np.isfinite(float(r)):
            return self._ended("nan_observation", frame, **extra)
        self._episode, self._frame, self._obs = episode, frame, obs
        term, trunc = bool(term), bool(trunc)
        info = self._info(frame, derived, **extra)
        for k, v in jinfo.items():
            info[k] = {n: float(x) for n, x in v.items()} if isinstance(v, dict) else np.asarray(v).item()
        if self._game_laps is not None and frame.get("lap") is not None:
            self._game_lap(frame, info)
        if not info["lap_completed"]:
            info["lap_time"] = None  # not NaN: NaN != NaN would make identical steps look different
        if term:
            off = info["off_track"] and self.env_config.terminate_off_track
            info["end_reason"] = "off_track" if off else "wrong_way"
        elif trunc:
            info["end_reason"] = "stuck" if info["stuck"] else "time_limit"
        if frame.get("done") and not (term or trunc):
            reason = frame.get("reason") or "game_done"
            info["end_reason"] = f"game:{reason}"
            term, trunc = reason not in TRUNCATING_REASONS, reason in TRUNCATING_REASONS
        if term or trunc:
            self._episode = None
        return obs.copy(), float(r), term, trunc, info

    def _realtime_step(self, a: np.ndarray):
        """Safety filter, send, wait for the control period; (frame or None, applied action, info extras)."""
        # The watchdog asks whether telemetry still flows, so it looks at the newest frame received,
        # not the one the policy saw: a slow first step (jit compile) is late, not stale.
        if self._rt.poll_frame() is not None:
            self._frame_at = self._clock()
        age = self._clock() - self._frame_at
        safe = self.safety.filter(dict(zip(P.CONTROLS, map(float, a))), frame_age_s=age, observation=self._obs)
        applied = np.asarray([safe.action[k] for k in P.CONTROLS], np.float32)
        extra = {"safety": tuple(safe.reasons), "applied_action": applied}
        if safe.truncate:
            self._rt.send_action(safe.action)
            extra["end_reason"] = safe.reasons[0] if safe.reasons else "safety"
            return None, applied, extra
        rs = self._rt.step(safe.action)
        extra.update(late_s=rs.late_s, age_s=rs.age_s, fresh=rs.fresh)
        if rs.frame is not None:
            self._frame_at = self._clock() - rs.age_s
        if rs.frame is None or not rs.age_s <= self.config.safety.stale_after_s:
            # The watchdog: no fresh telemetry in time. Neutral at once, end the episode.
            self._rt.send_action(P.NEUTRAL_ACTION)
            self.safety.stats.stale += 1
            extra["end_reason"] = "stale_telemetry"
            return None, applied, extra
        if rs.frame["seq"] < self._frame["seq"]:  # seq never goes back while a plugin runs
            extra["end_reason"] = "plugin_restarted"
            return None, applied, extra
        return rs.frame, applied, extra

    # -- emergency stop (real time): brakes at once, ends the episode, and keeps braking until released
    def estop(self, reason: str = "emergency stop") -> None:
        if self.safety is None:
            raise RuntimeError("the emergency stop is a real-time feature; in lockstep the game waits for each step")
        self.safety.estop(reason)
        # held from a thread: the caller may stop stepping, and the plugin's action_timeout would
        # otherwise turn a single brake message into neutral (rolling) half a second later
        self._rt.hold(self.safety.config.estop_action)

    def release_estop(self) -> None:
        if self.safety is not None:
            self.safety.release()
            self._rt.release_hold()

    @property
    def client_stats(self):
        return (self._rt or self._lockstep).stats

    def close(self) -> None:
        for c in (self._lockstep, self._rt):
            if c is not None:
                try:
                    c.close()
                except zmq.ZMQError:
                    pass
        self._lockstep = self._rt = None
        if not self._ctx.closed:
            self._ctx.destroy(linger=0)
