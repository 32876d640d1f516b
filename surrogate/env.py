"""The surrogate racing environment: pure functions over explicit state.

``RacingEnv.reset(key, params)`` and ``RacingEnv.step(key, state, action, params)`` act on ONE car;
``jax.vmap`` makes thousands. ``step`` resets finished episodes itself (auto-reset): the returned
observation and state then belong to the new episode and ``info["final_obs"]`` holds the last
observation of the one that ended. Static settings (model, control period, episode length) live
in ``EnvConfig``; everything that may vary per run or be randomised lives in ``EnvParams``.
"""
from __future__ import annotations

import dataclasses

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from surrogate.car import MODELS, PARAM_NAMES, PARAM_RANGES, CarParams, CarState, init_car_state, sample_car_params, speed
from surrogate.observation import (ObsConfig, Telemetry, filter_imu, imu_vector, noisy_observation, noisy_telemetry,
                                   observe_tables, with_imu)
from surrogate.laptime import LINES
from surrogate.residual import Residual, apply_residual
from surrogate.reward import RewardWeights, reward
from surrogate.track import (
    POINT_FIELDS, Track, TrackPos, TrackTables, arc_delta_tables, make_tables, project_tables,
)

ACTION_LOW = np.array([-1.0, 0.0, 0.0], np.float32)  # steer, throttle, brake: the bridge protocol's ranges
ACTION_HIGH = np.array([1.0, 1.0, 1.0], np.float32)
# How a policy works the pedals. "separate": the action is the protocol's [steer, throttle, brake].
# "combined": the action is [steer, pedal] in [-1, 1]^2, the pedal's positive half the throttle and
# its negative half the brake. A tanh-squashed policy never quite reaches the edges of its range, so
# with separate pedals it drives with the brake dragging a little all the time (measured on the
# best laps of 20-min runs: brake above 1% with throttle above 50% on 80-93% of the lap); with one
# pedal, zero brake is the middle of the range and the two can never be pressed together.
PEDALS = ("separate", "combined")


def game_controls(action, pedals: str, xp=jnp):
    """The game's controls [steer, throttle, brake] (the bridge protocol's ranges) from an action of
    an env with this ``pedals`` setting; ``xp=np`` on the host."""
    if pedals == "separate":
        return xp.clip(xp.asarray(action, xp.float32), ACTION_LOW, ACTION_HIGH)
    a = xp.clip(xp.asarray(action, xp.float32), -1.0, 1.0)
    return xp.stack([a[..., 0], xp.maximum(a[..., 1], 0.0), xp.maximum(-a[..., 1], 0.0)], axis=-1)


GOVERNOR_FADE = 2.0  # m/s below EnvConfig.speed_limit over which the throttle fades out
# The most brake the limiter applies, reached GOVERNOR_FADE m/s over the limit. A game's car can
# carry on past the limit after the throttle is cut (CarRacing's driven wheels spin up under full
# throttle and push on for a few ticks: 50.8 -> 56.6 m/s at a 50 m/s limit, then it coasted into the
# first corner at 56 and left the track, where the surrogate's car held 50). Half the pedal stays
# below CarRacing's wheel lock (0.9), so the car slows without sliding in a corner. Below the limit
# the brake is what the driver gave: a car that never passes it drives exactly as without this.
GOVERNOR_BRAKE = 0.5


def governed(controls, speed, limit: float, xp=jnp):
    """The game controls [steer, throttle, brake] with the speed limiter applied: the throttle times
    a factor falling from 1 at ``limit - GOVERNOR_FADE`` m/s to 0 at ``limit``; over the limit at
    least a brake rising from 0 to ``GOVERNOR_BRAKE`` over the next ``GOVERNOR_FADE`` m/s; the
    steering as it is. ``limit`` 0: the controls unchanged. ``xp=np`` on the host."""
    if not limit:
        return controls
    keep = xp.clip((limit - speed) / GOVERNOR_FADE, 0.0, 1.0)
    brake = GOVERNOR_BRAKE * xp.clip((speed - limit) / GOVERNOR_FADE, 0.0, 1.0)
    return xp.stack([controls[..., 0], controls[..., 1] * keep, xp.maximum(controls[..., 2], brake)], axis=-1)


def env_action(controls, pedals: str, xp=jnp):
    """An env action of this ``pedals`` setting from the game controls [steer, throttle, brake]
    (the inverse of ``game_controls``); ``xp=np`` on the host."""
    if pedals == "separate":
        return controls
    return xp.stack([controls[..., 0], controls[..., 1] - controls[..., 2]], axis=-1)


def action_bounds(pedals: str) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of the env action for this ``pedals`` setting."""
    if pedals == "separate":
        return ACTION_LOW, ACTION_HIGH
    return np.array([-1.0, -1.0], np.float32), np.array([1.0, 1.0], np.float32)


# The widest training edge margin (m): more would leave no track on a narrow circuit.
MAX_EDGE_MARGIN = 3.0
# The longest input delay the env models, in control steps.
MAX_DELAY_STEPS = 10

# Per-step facts the env reports beside the observation (both backends).
INFO_KEYS = ("lap_completed", "lap_time", "lap_clean", "off_track", "stuck", "progress", "speed", "ref_deviation")


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
    # Batched steps reset up to this fraction of the cars in a compact pass (see batch_step).
    reset_slot_frac: float = 0.125
    pedals: str = "separate"  # see PEDALS
    # Control periods between a command and the car feeling it (a game's input delay, fitted by
    # surrogate.fit): the car applies the game controls of ``delay_steps`` steps ago, zero at the
    # start of an episode. The reward and the observation still see the command just given.
    delay_steps: int = 0
    # A speed limiter (m/s; 0: none): the throttle the car gets fades out over the last
    # GOVERNOR_FADE m/s below it and the brake comes on above it, on the surrogate and on the game
    # alike (``governed``). What the
    # policy commanded still drives the reward and the observation. For a fitted surrogate that is
    # right only below some speed (CarRacing's fit: 0.3-1 m off 1 s ahead below 40 m/s, 5-11 m
    # above), a driver held below it drives the game as it drove the surrogate.
    speed_limit: float = 0.0
    # m: the track's edges this far further in for the off-track rule (a track narrower than the
    # game's). Training only: a driver that keeps this much room has it for a line the game's car
    # runs wider than the surrogate's; evaluations and the game keep 0. The observation, the
    # reference line and the reward's line are the real track's.
    edge_margin: float = 0.0
    # The reference line the observation points along, the baseline follows and evaluations time
    # against (``surrogate.laptime.LINES``): "curvature", the minimum-curvature line; "time", the
    # fastest between it and the shortest path for the car (capped at ``speed_limit``), which is
    # far shorter where the limiter, not the tyres, sets the pace.
    reference: str = "curvature"

    def __post_init__(self):
        if self.model not in MODELS:
            raise ValueError(f"EnvConfig.model = {self.model!r}; expected one of {sorted(MODELS)}")
        if self.start not in ("random", "line"):
            raise ValueError(f"EnvConfig.start = {self.start!r}; expected 'random' or 'line'")
        if not (0.0 < self.dt <= 0.2):
            raise ValueError(f"EnvConfig.dt = {self.dt} s; expected a control period in (0, 0.2]")
        if self.pedals not in PEDALS:
            raise ValueError(f"EnvConfig.pedals = {self.pedals!r}; expected one of {PEDALS}")
        if not (0.0 < self.reset_slot_frac <= 1.0):
            raise ValueError(f"EnvConfig.reset_slot_frac = {self.reset_slot_frac}; expected a fraction in (0, 1]")
        if self.substeps < 1:
            raise ValueError(f"EnvConfig.substeps = {self.substeps}; expected an integer >= 1")
        if not (self.speed_limit == 0.0 or self.speed_limit > GOVERNOR_FADE):
            raise ValueError(f"EnvConfig.speed_limit = {self.speed_limit} m/s; expected 0 (none) or above {GOVERNOR_FADE}")
        if not 0 <= self.delay_steps <= MAX_DELAY_STEPS:
            raise ValueError(f"EnvConfig.delay_steps = {self.delay_steps}; expected an integer in [0, {MAX_DELAY_STEPS}]")
        if self.reference not in LINES:
            raise ValueError(f"EnvConfig.reference = {self.reference!r}; expected one of {LINES}")
        if not 0.0 <= self.edge_margin <= MAX_EDGE_MARGIN:
            raise ValueError(f"EnvConfig.edge_margin = {self.edge_margin} m; expected a distance in [0, {MAX_EDGE_MARGIN}]")


@struct.dataclass
class EnvParams:
    """What a run may change without recompiling: tracks, car, randomisation, reward."""

    tracks: Track  # stacked, leading axis = number of tracks
    car: CarParams  # nominal car
    # Domain randomisation: each car parameter scaled by U(1-spread, 1+spread) at reset; one fraction
    # for all, or one per parameter (shape (len(PARAM_NAMES),), PARAM_NAMES order).
    car_spread: jax.Array
    start_speed_frac: jax.Array  # random starts get U(0, frac) * reference speed
    standing_start_prob: jax.Array  # ... or, with this probability, start from rest
    start_lateral_frac: jax.Array  # random starts get U(-frac, frac) * half-width of lateral offset
    reward: RewardWeights
    residual: Residual | None = None  # a fitted surrogate's learned correction to the car model
    # White noise on the observed telemetry, by speed (surrogate.observation.sensor_noise_table): what
    # a fitted game's sensors add. None: none (and no random draws: the env is what it was without it).
    sensor_noise: jax.Array | None = None
    # The same kind of table, seen by the actor alone (RacingEnv.actor_view): the env and the critics
    # keep the clean observation, so the noise does not make the critics' values noisy, and the clipped
    # double-Q minimum over noisy values pessimistic where the game's sensors chatter.
    actor_noise: jax.Array | None = None


@struct.dataclass
class Episode:
    """One episode's bookkeeping, shared by both backends: the car's place on the track, lap
    timing and the counters behind the end-of-episode rules. The car itself is not here: the
    surrogate simulates it, the real game owns it."""

    pos: TrackPos
    prev_action: jax.Array  # (3,)
    t: jax.Array  # s since the episode started
    steps: jax.Array
    s_start: jax.Array  # arc length where the episode started
    progress: jax.Array  # m along the track since the start (negative backwards)
    lap_start_t: jax.Array  # time the start line was last crossed forwards, -1 before the first crossing
    lap_clean: jax.Array  # no off-track since lap_start_t
    laps: jax.Array  # laps completed (timed, clean or not)
    stuck_t: jax.Array  # s spent below stuck_speed in a row
    imu: jax.Array  # (3,) the accelerations and yaw rate as observed (ObsConfig.imu_filter_s: low-passed)


def start_episode(pos: TrackPos, imu: jax.Array) -> Episode:
    """A new episode at ``pos``; ``imu``: the first readings (``imu_vector``), where the filter starts."""
    zero = jnp.float32(0.0)
    return Episode(
        pos=pos, prev_action=jnp.zeros((3,), jnp.float32), imu=jnp.asarray(imu, jnp.float32), t=zero, steps=jnp.int32(0),
        s_start=pos.s, progress=zero,
        # Starting on the line starts the first timed lap; elsewhere the first crossing does.
        lap_start_t=jnp.where(pos.s < 1e-3, zero, jnp.float32(-1.0)),
        lap_clean=jnp.bool_(True), laps=jnp.int32(0), stuck_t=zero,
    )


def advance_episode(cfg: EnvConfig, weights: RewardWeights, ep: Episode, pos: TrackPos, d_s, length,
                    w_left, w_right, ref_offset, speed_ms, action, dt, imu):
    """One control step of bookkeeping on a new track position: lap timing, the end-of-episode
    rules and the reward. ``d_s`` is the arc length gained since ``ep.pos``; ``w_left``,
    ``w_right`` and ``ref_offset`` are the track's values at ``pos``; ``dt`` the time elapsed
    (the control period in the surrogate, the game time that really passed in a game); ``imu`` the
    observed IMU after this step (``filter_imu``).
    Returns (episode, reward, terminated, truncated, info)."""
    progress = ep.progress + d_s
    # Lap timing: a forward crossing of the start line closes the running lap; the crossing
    # time is interpolated inside the step so lap times are not quantised to dt.
    old_laps = jnp.floor((ep.s_start + ep.progress) / length)
    new_laps = jnp.floor((ep.s_start + progress) / length)
    crossed = new_laps > old_laps
    backwards = new_laps < old_laps
    frac = jnp.clip((new_laps * length - (ep.s_start + ep.progress)) / jnp.maximum(d_s, 1e-6), 0.0, 1.0)
    t_cross = ep.t + frac * dt
    # On track while any part of the car is: the centre within the edges plus the half-width (less
    # a training margin).
    reach = cfg.car_half_width - cfg.edge_margin
    on = (pos.lateral >= -w_right - reach) & (pos.lateral <= w_left + reach)
    lap_done = crossed & (ep.lap_start_t >= 0.0)
    lap_time = jnp.where(lap_done, t_cross - ep.lap_start_t, jnp.nan)
    lap_clean = lap_done & ep.lap_clean & on

    stuck_t = jnp.where(speed_ms < cfg.stuck_speed, ep.stuck_t + dt, 0.0)
    off = ~on
    # (tolerance: stuck_time summed from float32 control periods)
    stuck = stuck_t >= cfg.stuck_time - 1e-4
    wrong_way = progress < -cfg.wrong_way_m
    terminated = (off & cfg.terminate_off_track) | wrong_way
    steps = ep.steps + 1
    truncated = ~terminated & (stuck | (steps >= cfg.max_episode_steps))

    ref_dev = pos.lateral - ref_offset
    r, terms = reward(weights, d_s, ref_dev, action, ep.prev_action, off, stuck)
    new = Episode(
        pos=pos, prev_action=action, t=ep.t + dt, steps=steps, s_start=ep.s_start, progress=progress,
        lap_start_t=jnp.where(crossed, t_cross, jnp.where(backwards, -1.0, ep.lap_start_t)),
        lap_clean=jnp.where(crossed, on, ep.lap_clean & on),
        laps=ep.laps + lap_done.astype(jnp.int32), stuck_t=stuck_t, imu=imu,
    )
    info = {"lap_completed": lap_done, "lap_time": lap_time, "lap_clean": lap_clean, "off_track": off,
            "progress": d_s, "speed": speed_ms, "ref_deviation": ref_dev, "stuck": stuck, "wrong_way": wrong_way,
            "reward_terms": terms}
    return new, r, terminated, truncated, info


def delayed(pending: jax.Array, action: jax.Array, delay: int) -> tuple[jax.Array, jax.Array]:
    """(the controls the car applies now, the queue after ``action`` joins it) for an input delay of
    ``delay`` control steps. Without a delay the queue is one unused row: checkpoints cannot hold
    empty arrays."""
    if delay == 0:
        return action, pending
    queue = jnp.concatenate([pending, action[..., None, :]], axis=-2)
    return queue[..., 0, :], queue[..., 1:, :]


@struct.dataclass
class EnvState:
    car: CarState
    car_params: CarParams  # this episode's (possibly randomised) car
    track_id: jax.Array
    episode: Episode
    pending: jax.Array  # (max(delay_steps, 1), 3) game controls given but not applied yet, oldest first

    @property
    def pos(self) -> TrackPos:
        return self.episode.pos

    @property
    def steps(self) -> jax.Array:
        return self.episode.steps


class RacingEnv:
    """Functional env: ``observation_size``, ``action_size``, ``action_low/high``, ``reset``, ``step``.
    Actions follow ``config.pedals``; the car, the reward and the observation's previous controls
    always see the game's [steer, throttle, brake] (``game_controls``)."""

    def __init__(self, config: EnvConfig = EnvConfig()):
        self.config = config
        self.observation_size = config.obs.size
        self.action_low, self.action_high = action_bounds(config.pedals)
        self.action_size = int(self.action_low.shape[0])
        self._car_step = MODELS[config.model]

    # Equal by config: jitted functions that take the env as a static argument (the training loop,
    # the lap evaluation) then compile once per config, not once per instance.
    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.config == self.config

    def __hash__(self) -> int:
        return hash((type(self), self.config))

    def telemetry(self, car: CarState) -> Telemetry:
        return Telemetry(car.x, car.y, car.yaw, speed(car), car.ax, car.ay, car.yaw_rate)

    def tables(self, params: EnvParams) -> TrackTables:
        """The tracks packed for the step's lookups (see ``surrogate.track.TrackTables``)."""
        return make_tables(params.tracks, self.config.projection_window)

    def actor_view(self, params: EnvParams, obs: jax.Array, key: jax.Array) -> jax.Array:
        """What the actor sees of observations ``obs`` (..., observation_size): with
        ``params.actor_noise`` the table's noise at each one's speed (``noisy_observation``), else
        ``obs`` itself. The training loop acts and trains the actor on this view, the critics on ``obs``."""
        if params.actor_noise is None:
            return obs
        return noisy_observation(obs, params.actor_noise, key, self.config.obs)

    def observe(self, params: EnvParams, state: EnvState) -> jax.Array:
        """The observation of ``state`` (without sensor noise on the speed; the IMU as last observed)."""
        tel = with_imu(self.telemetry(state.car), state.episode.imu)
        return observe_tables(self.tables(params), state.track_id, state.pos, tel, state.episode.prev_action,
                              self.config.obs)

    def _measure(self, car: CarState, noise: tuple | None) -> Telemetry:
        """What a game's telemetry would read of ``car``; ``noise``: (std, key) of the sensor noise, or None."""
        tel = self.telemetry(car)
        return tel if noise is None else noisy_telemetry(tel, *noise)

    @staticmethod
    def _noise(params: EnvParams, key: jax.Array | None, salt: int) -> tuple | None:
        # fold_in leaves ``key``'s own uses (the resets) drawing what they drew without noise.
        if params.sensor_noise is None or key is None:
            return None
        return params.sensor_noise, jax.random.fold_in(key, salt)

    def reset(self, key: jax.Array, params: EnvParams) -> tuple[jax.Array, EnvState]:
        return self._fresh(key, params, self.tables(params))

    def _reset_state(self, key: jax.Array, params: EnvParams, tables: TrackTables):
        """A new episode's state, the track fields at its position and what the telemetry reads there
        (sensor noise drawn from ``key``): its observation's inputs."""
        cfg = self.config
        k_track, k_idx, k_lat, k_speed, k_car = jax.random.split(key, 5)
        n_tracks = tables.points.shape[0]
        # randint over one value is always 0: skip drawing it.
        track_id = jnp.int32(0) if n_tracks == 1 else jax.random.randint(k_track, (), 0, n_tracks)
        m = tables.n_points
        if cfg.start == "line":
            idx = jnp.int32(0)
            lateral = jnp.float32(0.0)
            v0 = jnp.float32(0.0)
            row = tables.points[track_id, idx]
        else:
            idx = jax.random.randint(k_idx, (), 0, m)
            row = tables.points[track_id, idx]
            field = lambda name: row[POINT_FIELDS.index(name)]  # noqa: E731
            half = 0.5 * (field("w_left") + field("w_right"))
            lateral = jax.random.uniform(k_lat, (), minval=-1.0, maxval=1.0) * params.start_lateral_frac * half
            u_speed, u_stand = jax.random.uniform(k_speed, (2,))
            v0 = jnp.where(u_stand < params.standing_start_prob, 0.0,
                           u_speed * params.start_speed_frac * field("ref_speed"))
        h = row[POINT_FIELDS.index("heading")]
        x = row[POINT_FIELDS.index("x")] - jnp.sin(h) * lateral
        y = row[POINT_FIELDS.index("y")] + jnp.cos(h) * lateral
        car = init_car_state(x, y, h, v0)
        # Without randomisation the draw is a no-op (nominal * (1 + 0 * u)); skipping it saves a
        # PRNG call per reset.
        nominal = lambda: CarParams(**{  # noqa: E731
            name: jnp.clip(jnp.asarray(getattr(params.car, name), jnp.float32), *PARAM_RANGES[name]) for name in PARAM_NAMES
        })
        spread = params.car_spread
        if spread.ndim:  # one fraction per car parameter, in PARAM_NAMES order
            spread = {name: spread[i] for i, name in enumerate(PARAM_NAMES)}
        car_params = jax.lax.cond(
            jnp.all(params.car_spread == 0.0), nominal, lambda: sample_car_params(k_car, params.car, spread)
        )
        pos, here = project_tables(tables, track_id, x, y, h, idx, cfg.projection_window)
        # The IMU filter starts from the first (noisy) readings, as a game's first frame starts it.
        tel = self._measure(car, self._noise(params, key, 2))
        state = EnvState(car=car, car_params=car_params, track_id=track_id, episode=start_episode(pos, imu_vector(tel)),
                         pending=jnp.zeros((max(cfg.delay_steps, 1), 3), jnp.float32))
        return state, here, tel

    def _advance(self, tables: TrackTables, state: EnvState, action, params: EnvParams, noise_key=None):
        """One control step of one car without the auto-reset: (obs, state, reward, terminated,
        truncated, info) of the episode going on; ``noise_key`` draws its sensor noise, if any."""
        cfg = self.config
        action = game_controls(action, cfg.pedals)
        tid = state.track_id
        applied, pending = delayed(state.pending, governed(action, speed(state.car), cfg.speed_limit), cfg.delay_steps)
        car = self._car_step(state.car_params, state.car, applied, cfg.dt, cfg.substeps)
        car = apply_residual(params.residual, car, applied, cfg.dt)
        pos, here = project_tables(tables, tid, car.x, car.y, car.yaw, state.pos.idx, cfg.projection_window)
        d_s = arc_delta_tables(tables, tid, state.pos.s, pos.s)
        tel = self._measure(car, self._noise(params, noise_key, 1))
        imu = filter_imu(cfg.obs, state.episode.imu, tel, cfg.dt)
        episode, r, terminated, truncated, ep_info = advance_episode(
            cfg, params.reward, state.episode, pos, d_s, tables.length[tid], here.field("w_left"),
            here.field("w_right"), here.field("ref_offset"), speed(car), action, cfg.dt, imu)
        next_state = EnvState(car=car, car_params=state.car_params, track_id=tid, episode=episode, pending=pending)
        obs = observe_tables(tables, tid, pos, with_imu(tel, imu), action, cfg.obs, here)
        info = {"final_obs": obs, **{k: ep_info[k] for k in INFO_KEYS}}
        return obs, next_state, r, terminated, truncated, info

    def _fresh(self, key, params: EnvParams, tables: TrackTables):
        state, here, tel = self._reset_state(key, params, tables)
        obs = observe_tables(tables, state.track_id, state.pos, tel, state.episode.prev_action, self.config.obs, here)
        return obs, state

    def step(self, key, state: EnvState, action, params: EnvParams):
        tables = self.tables(params)
        obs, next_state, r, terminated, truncated, info = self._advance(tables, state, action, params, key)
        done = terminated | truncated
        reset_obs, reset_state = self._fresh(key, params, tables)
        new_state = jax.tree_util.tree_map(lambda a, b: jnp.where(done, a, b), reset_state, next_state)
        return jnp.where(done, reset_obs, obs), new_state, r, terminated, truncated, info

    def batch_step(self, key, state: EnvState, action, params: EnvParams):
        """``step`` for a batch of cars (``action`` of shape (N, action_size)) from one key.

        Vmapping ``step`` computes a reset for every car on every step, a third of the step's
        time, though only a few cars finish at once. Here only the finished cars are reset: up to
        ``reset_slots(N)`` of them are gathered, reset together and scattered back; a step where
        more finish resets every car, as ``step`` does. Either way each finished car gets a fresh
        episode drawn from the same distribution (from different keys than ``step`` would use)."""
        tables = self.tables(params)
        n = action.shape[0]
        noise_keys = None if params.sensor_noise is None else jax.random.split(jax.random.fold_in(key, 3), n)
        obs, next_state, r, terminated, truncated, info = jax.vmap(
            self._advance, in_axes=(None, 0, 0, None, None if noise_keys is None else 0))(
            tables, state, action, params, noise_keys)
        done = terminated | truncated
        fresh = jax.vmap(self._fresh, in_axes=(0, None, None))
        k = self.reset_slots(n)

        def reset_some():
            (idx,) = jnp.nonzero(done, size=k, fill_value=n)  # slots past the finished cars point past the end
            new_obs, new = fresh(jax.random.split(key, k), params, tables)
            put = lambda a, b: a.at[idx].set(b, mode="drop")  # noqa: E731
            return put(obs, new_obs), jax.tree_util.tree_map(put, next_state, new)

        def reset_all():
            new_obs, new = fresh(jax.random.split(key, n), params, tables)
            pick = lambda a, b: jnp.where(done.reshape((n,) + (1,) * (a.ndim - 1)), a, b)  # noqa: E731
            return pick(new_obs, obs), jax.tree_util.tree_map(pick, new, next_state)

        if k >= n:
            new_obs, new_state = reset_all()
        else:
            new_obs, new_state = jax.lax.cond(jnp.sum(done) <= k, reset_some, reset_all)
        return new_obs, new_state, r, terminated, truncated, info

    def reset_slots(self, num_envs: int) -> int:
        """How many finished cars ``batch_step`` resets in its compact pass."""
        return max(1, int(np.ceil(self.config.reset_slot_frac * num_envs)))


def batch_reset(env: RacingEnv, key, params: EnvParams, num_envs: int):
    """Reset ``num_envs`` cars at once (vmapped)."""
    return jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, num_envs), params)
