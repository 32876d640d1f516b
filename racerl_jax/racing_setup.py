"""The envs a ``train_crossq.py`` run trains and evaluates on: the default car on a track (or on
several: ``--tracks``, with unseen ``--eval-tracks``), or a fitted surrogate
(``surrogate.surrogate_file``) with its control period, input delay and parameter spread."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from racerl_jax.learned_line import learned_reference, parse_reference_line
from racerl_jax.train_config import TrainConfig, random_count, track_entries
from surrogate.car import PARAM_NAMES, CarParams
from surrogate.env import EnvConfig, EnvParams, RacingEnv
from surrogate.env_params import build_track, car_limits, make_params
from surrogate.observation import SENSOR_NOISE_SPEEDS, ObsConfig
from surrogate.surrogate_file import FittedSurrogate, load_surrogate, speed_limit_for
from surrogate.track import Track, select_track, stack_tracks
from surrogate.track_io import DEFAULT_TRACK, TrackData, load_track
from surrogate.trackgen import random_track

# ----------------------------------------------------------------------------- envs


@dataclasses.dataclass
class EvalTrack:
    """One track an evaluation drives on its own, from its start line."""

    name: str
    track: Track  # one track (not stacked)
    limit_s: float  # the minimum-lap-time reference of the car on it
    unseen: bool  # from --eval-tracks: never trained on


@dataclasses.dataclass
class RacingSetup:
    env: RacingEnv
    params: EnvParams
    eval_env: RacingEnv
    eval_params: EnvParams  # with several tracks: the first training track's
    limit_s: float  # ... its reference
    eval_steps: int  # ... enough for the longest track
    track_name: str  # ... its name
    # With --tracks or --eval-tracks: every track an evaluation drives, the training tracks first, in
    # their order, then the unseen ones; empty for one --track (or a surrogate file's) alone.
    eval_tracks: list[EvalTrack] = dataclasses.field(default_factory=list)
    # With --tracks-refresh-env-steps: the training params of draw g of the random:N tracks (g = env
    # steps // the setting; draw 0 is ``params``).
    refresh: Callable[[int], EnvParams] | None = None

    @property
    def multi(self) -> bool:
        """Evaluated track by track (``eval_tracks``) and reported with the figures of several tracks."""
        return bool(self.eval_tracks)


# Evaluations and game episodes allow for laps at this fraction of the reference's pace.
SLOW_PACE = 0.6


def paced_lap_s(limit_s: float, length_m: float, env_cfg: EnvConfig) -> float:
    """The reference's lap time (``limit_s``), or a lap at the speed limiter (``env_cfg.speed_limit``)
    where that is slower: the pace a drive's step budget allows for."""
    return max(limit_s, length_m / env_cfg.speed_limit) if env_cfg.speed_limit else limit_s


def slow_lap_steps(limit_s: float, length_m: float, env_cfg: EnvConfig, laps: float = 1.0) -> int:
    """Control steps for ``laps`` laps at SLOW_PACE of ``paced_lap_s``: what an evaluation, a baseline
    drive or an episode on the game may take before it is cut."""
    return int(math.ceil(laps * paced_lap_s(limit_s, length_m, env_cfg) / SLOW_PACE / env_cfg.dt))


def env_config(cfg: TrainConfig, fitted: FittedSurrogate | None, start: str) -> EnvConfig:
    """The env a run trains, evaluates and drives the game with: a fitted surrogate's control
    period (the game's ticks per step) and input delay, or the defaults."""
    extra = fitted.env_timing() if fitted is not None else {}
    return EnvConfig(model=cfg.model or "dynamic", start=start, max_episode_steps=cfg.episode_steps,
                     pedals=cfg.pedals, obs=ObsConfig(imu=cfg.observe_imu, imu_filter_s=cfg.imu_filter_s),
                     speed_limit=speed_limit_for(cfg.speed_limit, fitted), reference=cfg.env_reference(), **extra)


def car_spread(cfg: TrainConfig, fitted: FittedSurrogate | None) -> float | dict[str, float]:
    """Domain randomisation: ``--car-spread`` for every parameter, and around a fitted car each
    parameter at least ``--fit-spread`` times its fit uncertainty (the file's ``spread``)."""
    if fitted is None or not fitted.spread or cfg.fit_spread == 0.0:
        return cfg.car_spread
    return {name: min(max(cfg.car_spread, cfg.fit_spread * fitted.spread.get(name, 0.0)), 0.5) for name in PARAM_NAMES}


def sensor_noise(fitted: FittedSurrogate | None, scale: float) -> dict | None:
    """The fitted game's telemetry noise by speed (the file's ``sensor_noise``) times ``scale``
    (``--sensor-noise`` or ``--actor-noise``); None without one."""
    if fitted is None or not fitted.sensor_noise or scale == 0.0:
        return None
    return {k: v if k == SENSOR_NOISE_SPEEDS else [scale * a for a in v] for k, v in fitted.sensor_noise.items()}


# ----------------------------------------------------------------------------- track sets

TRAIN_STREAM, EVAL_STREAM = 0, 1  # the random:N tracks of --tracks and of --eval-tracks are different draws


def random_tracks(seed: int, n: int, stream: int = TRAIN_STREAM, generation: int = 0, first: int = 0) -> list[TrackData]:
    """``n`` procedural tracks (``surrogate.trackgen.random_track``), the same for the same run seed,
    stream (training or unseen), draw (``generation``) and index (from ``first``)."""
    prefix = "random" if stream == TRAIN_STREAM else "random-eval"
    return [random_track(np.random.default_rng(np.random.SeedSequence([stream, generation, i, seed & 0xFFFFFFFF])),
                         name=f"{prefix}-{i}") for i in range(first, first + n)]


def load_entries(entries: Sequence[str], seed: int, stream: int = TRAIN_STREAM, generation: int = 0,
                 option: str = "--tracks") -> list[TrackData]:
    """The tracks of --tracks (or --eval-tracks) entries: files and bundled names loaded, folders
    listed (``track_entries``), random:N drawn (``random_tracks``)."""
    out: list[TrackData] = []
    drawn = 0
    for entry in track_entries(entries, option):
        n = random_count(entry, option)
        if n:
            out.extend(random_tracks(seed, n, stream, generation, first=drawn))
            drawn += n
        else:
            out.append(load_track(entry))
    return out


def unique_names(names: Sequence[str]) -> list[str]:
    """The names with a suffix (-2, -3, ...) on repeats: files of the same name from two folders."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


# ----------------------------------------------------------------------------- the setup


def build_setup(cfg: TrainConfig) -> RacingSetup:
    """Training env (random starts) and evaluation env (start line, no randomisation), both on
    the same car and tracks, and the minimum-lap-time reference of each track computed once.
    With --tracks the training params hold them all (each episode draws one) and ``eval_tracks``
    lists them and the --eval-tracks; with one --track it is empty."""
    fitted = load_surrogate(cfg.surrogate) if cfg.surrogate else None
    car = fitted.car if fitted else CarParams()
    if cfg.tracks:
        train: list = load_entries(cfg.tracks, cfg.seed)
    else:
        train = [fitted.track if fitted else cfg.track or DEFAULT_TRACK]
    unseen = load_entries(cfg.eval_tracks, cfg.seed, EVAL_STREAM, option="--eval-tracks")
    env_cfg = env_config(cfg, fitted, start="random")
    references = None
    if parse_reference_line(cfg.reference_line):  # one track (TrainConfig refuses laps: with --tracks)
        train = [t if isinstance(t, TrackData) else load_track(t) for t in train]
        references = [learned_reference(cfg.reference_line, train[0], car_limits(car, env_cfg),
                                        2.0 * env_cfg.car_half_width)]
        references += [None] * len(unseen)
    params, refs = make_params(train + unseen, car=car, config=env_cfg, car_spread=car_spread(cfg, fitted),
                               reward_weights=cfg.reward_weights(), standing_start_prob=cfg.standing_starts,
                               residual=fitted.residual if fitted else None,
                               sensor_noise=sensor_noise(fitted, cfg.sensor_noise),
                               actor_noise=sensor_noise(fitted, cfg.actor_noise), references=references)
    limits = [float(r.lap_time_s) for r in refs]
    eval_steps = cfg.eval_max_steps or max(
        slow_lap_steps(lim, float(select_track(params.tracks, i).length), env_cfg, cfg.eval_laps)
        for i, lim in enumerate(limits))
    eval_cfg = dataclasses.replace(env_cfg, start="line", max_episode_steps=eval_steps)
    eval_params = params.replace(car_spread=jnp.zeros_like(params.car_spread))
    names = unique_names([t.name if isinstance(t, TrackData) else Path(str(t)).stem for t in train + unseen])
    train_cfg = dataclasses.replace(env_cfg, edge_margin=cfg.train_edge_margin())
    setup = RacingSetup(RacingEnv(train_cfg), params, RacingEnv(eval_cfg), eval_params, limits[0], eval_steps, names[0])
    if not (cfg.tracks or unseen):
        return setup
    n = len(train)
    setup.params = params.replace(tracks=_slice(params.tracks, 0, n))
    setup.eval_params = eval_params.replace(tracks=_slice(params.tracks, 0, 1))
    setup.eval_tracks = [EvalTrack(name, select_track(params.tracks, i), limit, i >= n)
                         for i, (name, limit) in enumerate(zip(names, limits))]
    if cfg.tracks_refresh_env_steps:
        setup.refresh = _refresher(cfg, setup.params, env_cfg)
    return setup


def _slice(tracks: Track, start: int, stop: int) -> Track:
    return jax.tree_util.tree_map(lambda a: a[start:stop], tracks)


def _refresher(cfg: TrainConfig, params: EnvParams, env_cfg: EnvConfig) -> Callable[[int], EnvParams]:
    """``refresh(g)``: the training params with the random:N tracks of --tracks replaced by draw g
    (the other tracks kept as they are); about a second a track on a CPU (the reference line)."""
    slots = []  # per training track: is it a random one
    for entry in track_entries(cfg.tracks):
        n = random_count(entry)
        slots.extend([True] * n if n else [False])

    def refresh(generation: int) -> EnvParams:
        if generation == 0:
            return params
        fresh = iter(load_entries([e for e in cfg.tracks if random_count(e)], cfg.seed, TRAIN_STREAM, generation))
        tracks = [build_track(next(fresh), params.car, env_cfg)[0] if is_random else select_track(params.tracks, i)
                  for i, is_random in enumerate(slots)]
        return params.replace(tracks=stack_tracks(tracks))

    return refresh
