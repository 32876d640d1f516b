"""The surrogate racing environment: pure functions over explicit state.

``RacingEnv.reset(key, params)`` and ``RacingEnv.step(key, state, action, params)`` act on ONE car;
``jax.vmap`` makes thousands. ``step`` resets finished episodes itself (auto-reset): the returned
observation and state then belong to the new episode and ``info["final_obs"]`` holds the last
observation of the one that ended. Static settings (model, control period, episode length) live
in ``EnvConfig``; everything that may vary per run or be randomised lives in ``EnvParams``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from surrogate import laptime
from surrogate.car import MODELS, CarParams, CarState, init_car_state, sample_car_params, speed, validate_car_params
from surrogate.observation import ObsConfig, Telemetry, observe
from surrogate.reward import RewardWeights, reward
from surrogate.track import Track, TrackPos, arc_delta, interp, make_track, on_track, project, select_track, stack_tracks
from surrogate.track_io import DEFAULT_TRACK, TrackData, load_track

ACTION_LOW = np.array([-1.0, 0.0, 0.0], np.float32)  # steer, throttle, brake: the bridge protocol's ranges
ACTION_HIGH = np.array([1.0, 1.0, 1.0], np.float32)


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    """Static settings of the env (changing one recompiles)."""

    model: str = "dynamic"  # "kinematic" or "dynamic"
    dt: float = 0.05  # s, control period
    substeps: int = 4  # integration substeps per control period
    max_episode_steps: int = 2000  # time limit (truncation)
    start: str = "random"  # "random": anywhere on the track, "line": on the start line
    terminate_off_track: bool = True
    car_half_width: float = 0.9  # m: off track once the whole car is past an edge
    stuck_speed: float = 1.0  # m/s
    stuck_time: float = 3.0  # s below stuck_speed ends the episode (truncation)
    wrong_way_m: float = 50.0  # m driven backwards ends the episode (termination)
    projection_window: int = 16  # track segments searched per step
    n_track_points: int = 2048
    obs: ObsConfig = ObsConfig()

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"EnvConfig.model = {self.model!r}; expected one of {sorted(MODELS)}")
        if self.start not in ("random", "line"):
            raise ValueError(f"EnvConfig.start = {self.start!r}; expected 'random' or 'line'")
        if not (0.0 < self.dt <= 0.2):
            raise ValueError(f"EnvConfig.dt = {self.dt} s; expected a control period in (0, 0.2]")
        if self.substeps < 1:
            raise ValueError(f"EnvConfig.substeps = {self.substeps}; expected an integer >= 1")


@struct.dataclass
class EnvParams:
    """What a run may change without recompiling: tracks, car, randomisation, reward."""

    tracks: Track  # stacked, leading axis = number of tracks
    car: CarParams  # nominal car
    car_spread: jax.Array  # domain randomisation: each car parameter scaled by U(1-spread, 1+spread) at reset
    start_speed_frac: jax.Array  # random starts get U(0, frac) * reference speed
    start_lateral_frac: jax.Array  # random starts get U(-frac, frac) * half-width of lateral offset
    reward: RewardWeights


@struct.dataclass
class EnvState:
    car: CarState
    car_params: CarParams  # this episode's (possibly randomised) car
    track_id: jax.Array
    pos: TrackPos
    prev_action: jax.Array  # (3,)
    t: jax.Array  # s since the episode started
    steps: jax.Array
    s_start: jax.Array  # arc length where the episode started
    progress: jax.Array  # m along the track since the start (negative backwards)
    lap_start_t: jax.Array  # time the start line was last crossed forwards, -1 before the first crossing
    lap_clean: jax.Array  # no off-track since lap_start_t
    laps: jax.Array  # laps completed (timed, clean or not)
    stuck_steps: jax.Array  # consecutive steps below stuck_speed


class RacingEnv:
    """Functional env: ``observation_size``, ``action_size``, ``action_low/high``, ``reset``, ``step``."""

    action_size = 3
    action_low = ACTION_LOW
    action_high = ACTION_HIGH

    def __init__(self, config: EnvConfig = EnvConfig()):
        self.config = config
        self.observation_size = config.obs.size
        self._car_step = MODELS[config.model]

    def telemetry(self, car: CarState) -> Telemetry:
        return Telemetry(car.x, car.y, car.yaw, speed(car), car.ax, car.ay, car.yaw_rate)

    def observe(self, params: EnvParams, state: EnvState) -> jax.Array:
        track = select_track(params.tracks, state.track_id)
        return observe(track, state.pos, self.telemetry(state.car), state.prev_action, self.config.obs)

    def reset(self, key: jax.Array, params: EnvParams) -> tuple[jax.Array, EnvState]:
        cfg = self.config
        k_track, k_idx, k_lat, k_speed, k_car = jax.random.split(key, 5)
        n_tracks = params.tracks.x.shape[0]
        track_id = jax.random.randint(k_track, (), 0, n_tracks)
        track = select_track(params.tracks, track_id)
        m = track.x.shape[0]
        if cfg.start == "line":
            idx = jnp.int32(0)
            lateral = jnp.float32(0.0)
            v0 = jnp.float32(0.0)
        else:
            idx = jax.random.randint(k_idx, (), 0, m)
            half = 0.5 * (track.w_left[idx] + track.w_right[idx])
            lateral = jax.random.uniform(k_lat, (), minval=-1.0, maxval=1.0) * params.start_lateral_frac * half
            v0 = jax.random.uniform(k_speed, ()) * params.start_speed_frac * track.ref_speed[idx]
        h = track.heading[idx]
        x = track.x[idx] - jnp.sin(h) * lateral
        y = track.y[idx] + jnp.cos(h) * lateral
        car = init_car_state(x, y, h, v0)
        car_params = sample_car_params(k_car, params.car, params.car_spread)
        pos = project(track, x, y, h, idx, cfg.projection_window)
        zero = jnp.float32(0.0)
        state = EnvState(
            car=car,
            car_params=car_params,
            track_id=track_id,
            pos=pos,
            prev_action=jnp.zeros((3,), jnp.float32),
            t=zero,
            steps=jnp.int32(0),
            s_start=pos.s,
            progress=zero,
            # Starting on the line starts the first timed lap; elsewhere the first crossing does.
            lap_start_t=jnp.where(pos.s < 1e-3, zero, jnp.float32(-1.0)),
            lap_clean=jnp.bool_(True),
            laps=jnp.int32(0),
            stuck_steps=jnp.int32(0),
        )
        return self.observe(params, state), state

    def step(self, key, state: EnvState, action, params: EnvParams):
        cfg = self.config
        action = jnp.clip(jnp.asarray(action, jnp.float32), ACTION_LOW, ACTION_HIGH)
        track = select_track(params.tracks, state.track_id)
        car = self._car_step(state.car_params, state.car, action, cfg.dt, cfg.substeps)
        pos = project(track, car.x, car.y, car.yaw, state.pos.idx, cfg.projection_window)
        d_s = arc_delta(track, state.pos.s, pos.s)
        progress = state.progress + d_s
        t = state.t + cfg.dt

        # Lap timing: a forward crossing of the start line closes the running lap; the crossing
        # time is interpolated inside the step so lap times are not quantised to dt.
        old_laps = jnp.floor((state.s_start + state.progress) / track.length)
        new_laps = jnp.floor((state.s_start + progress) / track.length)
        crossed = new_laps > old_laps
        backwards = new_laps < old_laps
        frac = jnp.clip((new_laps * track.length - (state.s_start + state.progress)) / jnp.maximum(d_s, 1e-6), 0.0, 1.0)
        t_cross = state.t + frac * cfg.dt
        on = on_track(track, pos, margin=-cfg.car_half_width)
        lap_done = crossed & (state.lap_start_t >= 0.0)
        lap_time = jnp.where(lap_done, t_cross - state.lap_start_t, jnp.nan)
        lap_clean = lap_done & state.lap_clean & on
        lap_start_t = jnp.where(crossed, t_cross, jnp.where(backwards, -1.0, state.lap_start_t))
        clean_so_far = jnp.where(crossed, on, state.lap_clean & on)

        v = speed(car)
        stuck_steps = jnp.where(v < cfg.stuck_speed, state.stuck_steps + 1, 0)
        off = ~on
        stuck = stuck_steps >= round(cfg.stuck_time / cfg.dt)
        wrong_way = progress < -cfg.wrong_way_m
        terminated = (off & cfg.terminate_off_track) | wrong_way
        steps = state.steps + 1
        truncated = ~terminated & (stuck | (steps >= cfg.max_episode_steps))

        ref_dev = pos.lateral - interp(track, track.ref_offset, pos.s)
        r, terms = reward(params.reward, d_s, ref_dev, action, state.prev_action, off, stuck)

        next_state = EnvState(
            car=car,
            car_params=state.car_params,
            track_id=state.track_id,
            pos=pos,
            prev_action=action,
            t=t,
            steps=steps,
            s_start=state.s_start,
            progress=progress,
            lap_start_t=lap_start_t,
            lap_clean=clean_so_far,
            laps=state.laps + lap_done.astype(jnp.int32),
            stuck_steps=stuck_steps,
        )
        obs = observe(track, pos, self.telemetry(car), action, cfg.obs)
        done = terminated | truncated
        reset_obs, reset_state = self.reset(key, params)
        new_state = jax.tree_util.tree_map(lambda a, b: jnp.where(done, a, b), reset_state, next_state)
        new_obs = jnp.where(done, reset_obs, obs)
        info = {
            "final_obs": obs,
            "lap_completed": lap_done,
            "lap_time": lap_time,
            "lap_clean": lap_clean,
            "off_track": off,
            "progress": d_s,
            "speed": v,
            "ref_deviation": ref_dev,
        }
        return new_obs, new_state, r, terminated, truncated, info


def reference_for(data: TrackData, car: CarParams, cfg: EnvConfig):
    """Reference line (min-curvature) and speed profile for this car, on the env's track points."""
    ref = laptime.reference_line(data, laptime.LapLimits.from_car(car), vehicle_width=2.0 * cfg.car_half_width)
    # Carry the per-point reference over to the env's own resampling by arc-length fraction:
    # both parametrise the same closed curve.
    seg = np.hypot(np.diff(data.x, append=data.x[0]), np.diff(data.y, append=data.y[0]))
    frac_data = np.concatenate([[0.0], np.cumsum(seg)[:-1]]) / seg.sum()
    frac_env = np.arange(cfg.n_track_points) / cfg.n_track_points
    per = lambda a: np.interp(frac_env, frac_data, a, period=1.0)  # noqa: E731
    return per(ref.offsets), per(ref.speed), ref


def build_track(data: TrackData, car: CarParams, cfg: EnvConfig) -> tuple[Track, laptime.Reference]:
    offsets, speeds, ref = reference_for(data, car, cfg)
    return make_track(data, n_points=cfg.n_track_points, ref_offset=offsets, ref_speed=speeds), ref


def make_params(
    tracks: list[str | Path | TrackData] | None = None,
    car: CarParams | None = None,
    config: EnvConfig = EnvConfig(),
    car_spread: float = 0.0,
    start_speed_frac: float = 0.5,
    start_lateral_frac: float = 0.3,
    reward_weights: RewardWeights | None = None,
) -> tuple[EnvParams, list[laptime.Reference]]:
    """Env parameters for track names/files/data (bundled default if none) and a car; also the
    lap-time references of each track for that car."""
    car = validate_car_params(car if car is not None else CarParams())
    datas = [t if isinstance(t, TrackData) else load_track(t) for t in (tracks or [DEFAULT_TRACK])]
    built = [build_track(d, car, config) for d in datas]
    params = EnvParams(
        tracks=stack_tracks([b[0] for b in built]),
        car=car,
        car_spread=jnp.float32(car_spread),
        start_speed_frac=jnp.float32(start_speed_frac),
        start_lateral_frac=jnp.float32(start_lateral_frac),
        reward=reward_weights if reward_weights is not None else RewardWeights(),
    )
    return params, [b[1] for b in built]


def batch_reset(env: RacingEnv, key, params: EnvParams, num_envs: int):
    """Reset ``num_envs`` cars at once (vmapped)."""
    return jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, num_envs), params)


def batch_step(env: RacingEnv, key, state: EnvState, action, params: EnvParams):
    """Step a batch of cars (vmapped); ``action`` has shape (N, 3)."""
    n = action.shape[0]
    return jax.vmap(env.step, in_axes=(0, 0, 0, None))(jax.random.split(key, n), state, action, params)
