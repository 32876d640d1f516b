"""Tuning the classical baseline driver to a car and track.

The untuned baseline follows the minimum-lap-time reference of a friction-circle car (the
minimum-curvature line and its speed profile) at a safety margin. The single-track car is not that
point mass, and the env's clean-lap rule (off track only once the whole car is past an edge) leaves
more room than the reference line uses, so the reference is neither what this car can drive nor
the fastest lap it may drive. Tuning finds out what it can: the cross-entropy method (CEM) over a
speed factor and a lateral line shift at knots evenly spaced along the track, and the controller's
gains, every candidate scored by driving the env itself (same physics, same lap timing, same
clean-lap rule as the agent's evaluation): a standing start from the line and a flying lap, off
track nowhere. Thousands of candidates drive at once, vmapped in one jit.

A tuning found on one car can lap on a knife edge: the same tuning driven again by a program that
rounds differently, or on a game whose car is a little off the fitted one, leaves the track. With
``robust_cars`` each candidate also drives that many cars drawn around the nominal one (every
parameter within ``robust_spread``, the draws fixed for the whole search) and is scored by its worst
drive: it must lap them all. And a tuning whose line reaches the clean-lap limit leaves a game's
track where the game's car runs a little wider: tuned on an env with an ``edge_margin`` (the track
that much narrower, as training narrows it), the tuned line keeps inside that narrower track
wherever it is driven (``DriverTuning.edge_margin``, saved with it).

The result is the score a user gets without RL, tuned for the car: the bar an agent has to beat.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from surrogate.baseline import BaselineParams, baseline_action
from surrogate.env import MAX_EDGE_MARGIN, EnvParams, RacingEnv, env_action
from surrogate.track import Track

# BaselineParams fields the tuning scales (by exp of a log factor); the order of DriverTuning.gain_log.
GAINS = ("lookahead_time", "yaw_rate_gain", "speed_gain", "speed_preview")
LAPS = 2  # the standing-start lap and one flying lap
# Score of a drive with no clean flying lap (or any off-track): this, less the laps' share
# driven, so CEM still ranks the failures by how far they got.
FAIL_SCORE = 1000.0
TUNING_FILE = "tuning.json"


@struct.dataclass
class DriverTuning:
    """What tuning changes in the baseline, all as offsets from the untuned driver (zeros = untuned)."""

    speed_log: jax.Array  # (K,) log factor on the reference speed at K knots evenly spaced along the track
    line_shift: jax.Array  # (K,) m, lateral shift (+ left) of the aimed-at line at the knots
    gain_log: jax.Array  # (len(GAINS),) log factors on the controller's gains
    # m: the track's edges were this much narrower where it was tuned (EnvConfig.edge_margin); its
    # line keeps inside them wherever it drives.
    edge_margin: float = struct.field(pytree_node=False, default=0.0)

    @property
    def knots(self) -> int:
        return int(self.speed_log.shape[-1])

    def to_vector(self) -> jax.Array:
        return jnp.concatenate([self.speed_log, self.line_shift, self.gain_log], axis=-1)

    @classmethod
    def from_vector(cls, v: jax.Array, knots: int, edge_margin: float = 0.0) -> "DriverTuning":
        return cls(speed_log=v[..., :knots], line_shift=v[..., knots:2 * knots], gain_log=v[..., 2 * knots:],
                   edge_margin=edge_margin)

    def to_dict(self) -> dict[str, Any]:
        return {"speed_log": np.asarray(self.speed_log).tolist(), "line_shift": np.asarray(self.line_shift).tolist(),
                "gain_log": dict(zip(GAINS, np.asarray(self.gain_log).tolist())), "edge_margin": self.edge_margin}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "tuning") -> "DriverTuning":
        try:
            speed = np.asarray(d["speed_log"], np.float32)
            shift = np.asarray(d["line_shift"], np.float32)
            gains = np.asarray([d["gain_log"][g] for g in GAINS], np.float32)
            margin = float(d.get("edge_margin", 0.0))  # tunings saved before they said: the real edges
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: not a driver tuning ({e!r}); expected speed_log and line_shift lists "
                             f"of one length and gain_log with {', '.join(GAINS)}") from None
        if speed.ndim != 1 or speed.shape != shift.shape or speed.size < 2:
            raise ValueError(f"{where}: speed_log ({speed.shape}) and line_shift ({shift.shape}) must be lists "
                             "of the same length >= 2 (one value per knot)")
        if not (np.all(np.isfinite(speed)) and np.all(np.isfinite(shift)) and np.all(np.isfinite(gains))):
            raise ValueError(f"{where}: NaN or infinite values; re-run the tuning")
        if not 0.0 <= margin <= MAX_EDGE_MARGIN:
            raise ValueError(f"{where}: edge_margin {margin} m; expected a distance in [0, {MAX_EDGE_MARGIN}]")
        return cls(jnp.asarray(speed), jnp.asarray(shift), jnp.asarray(gains), margin)


def untuned(knots: int) -> DriverTuning:
    """The reference line and speed profile at full pace, the baseline's own gains."""
    z = jnp.zeros((knots,), jnp.float32)
    return DriverTuning(z, z, jnp.zeros((len(GAINS),), jnp.float32))


def starting_point(knots: int, base: BaselineParams) -> DriverTuning:
    """Where tuning starts: the untuned baseline's pace (its ``speed_margin`` of the reference), which
    laps cleanly where the untuned baseline does; full reference pace on the reference line (which
    touches the edges) leaves the track on the bundled ones."""
    t = untuned(knots)
    return t.replace(speed_log=jnp.full((knots,), math.log(base.speed_margin), jnp.float32))


def save_tuning(path: str | Path, tuning: DriverTuning, meta: dict[str, Any] | None = None) -> Path:
    path = Path(path)
    path.write_text(json.dumps({**(meta or {}), **tuning.to_dict()}, indent=1))
    return path


def load_tuning(path: str | Path, track_length_m: float | None = None, reference: str | None = None) -> DriverTuning:
    """A saved tuning; with ``track_length_m``, refused (ValueError) when it was tuned on a track of
    another length: its profiles are spread over the track by fraction of a lap; with ``reference``
    (``EnvConfig.reference``), refused when it was tuned on another reference line: its line is a
    shift from the reference line (tunings saved before they said which line: not checked)."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read a driver tuning ({e}); give a {TUNING_FILE} written by "
                         "scripts/drive_baseline.py --tune") from None
    tuned = DriverTuning.from_dict(d, where=str(path))
    length = d.get("track_length_m")
    if track_length_m is not None and isinstance(length, (int, float)) and abs(length / track_length_m - 1.0) > 0.01:
        raise ValueError(f"{path}: tuned on a track of {length:.0f} m, this one is {track_length_m:.0f} m; tune on "
                         "this track (drive_baseline.py --tune, with --surrogate for a game's fitted car)")
    tuned_on = d.get("reference")
    if reference is not None and isinstance(tuned_on, str) and tuned_on != reference:
        raise ValueError(f"{path}: tuned on the {tuned_on} reference line, this run follows the {reference} line; tune "
                         "again for it (drive_baseline.py --tune --reference-line as the run's)")
    return tuned


def _knot_profile(values: jax.Array, n_points: int) -> jax.Array:
    """Periodic linear interpolation of K knot values onto n_points evenly spaced track points."""
    k = values.shape[-1]
    u = jnp.arange(n_points, dtype=jnp.float32) * (k / n_points)
    i0 = jnp.floor(u).astype(jnp.int32)
    t = u - i0
    return values[i0 % k] * (1.0 - t) + values[(i0 + 1) % k] * t


def apply_tuning(track: Track, base: BaselineParams, tuning: DriverTuning, car_half_width: float
                 ) -> tuple[Track, BaselineParams]:
    """The track as the tuned driver reads it (its speed profile and line) and its gains. The line
    may reach the clean-lap limit of the track it was tuned on: the centre of the car
    ``car_half_width`` past an edge, less the tuning's ``edge_margin``."""
    n = track.ref_speed.shape[0]
    tuned_track = track.replace(ref_speed=track.ref_speed * jnp.exp(_knot_profile(tuning.speed_log, n)),
                                ref_offset=track.ref_offset + _knot_profile(tuning.line_shift, n))
    gains = {g: getattr(base, g) * jnp.exp(tuning.gain_log[i]) for i, g in enumerate(GAINS)}
    return tuned_track, base.replace(speed_margin=1.0, edge_margin=tuning.edge_margin - car_half_width, **gains)


def baseline_driver(track: Track, base: BaselineParams, tuning_file: str | Path | None, car_half_width: float,
                    reference: str | None = None) -> tuple[Track, BaselineParams]:
    """The baseline driver as it drives on ``track`` (whose reference line is ``reference``):
    ``base`` as planned, or with ``tuning_file`` that tuning (``load_tuning``'s ValueError for a
    missing file, another track or another line)."""
    if not tuning_file:
        return track, base
    return apply_tuning(track, base, load_tuning(tuning_file, float(track.length), reference), car_half_width)


def tuned_policy(env: RacingEnv, track: Track, base: BaselineParams, tuning: DriverTuning) -> Callable:
    """``policy(obs, state, key) -> env action`` of the tuned driver (for ``surrogate.rollout``)."""
    tr, bp = apply_tuning(track, base, tuning, env.config.car_half_width)

    def policy(obs, state, key):
        return env_action(baseline_action(tr, state.pos, env.telemetry(state.car), bp), env.config.pedals)

    return policy


def is_lap_time(score: float) -> bool:
    """Whether a score is a flying lap time rather than a failed drive's FAIL_SCORE - laps driven."""
    return score < FAIL_SCORE - LAPS


def drive_steps(limit_s: float, dt: float) -> int:
    """Control periods for a standing-start lap and a flying lap at a pessimistic 75% of the reference pace."""
    return int(math.ceil(LAPS * limit_s / 0.75 / dt))


def score(env: RacingEnv, params: EnvParams, track: Track, base: BaselineParams, tuning: DriverTuning,
          steps: int, key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(score, flying lap s) of one tuning: drive from the line (the env's config must start there);
    the score is the flying lap time when both laps are clean, else FAIL_SCORE less the laps' share
    driven before the first off-track. Lower is better. The start is deterministic; ``key`` draws
    the car where ``params.car_spread`` randomises it."""
    if env.config.start != "line":
        raise ValueError("tuning scores laps from the start line: build the env with EnvConfig(start='line')")
    policy = tuned_policy(env, track, base, tuning)
    key = jax.random.PRNGKey(0) if key is None else key
    _, state = env.reset(key, params)
    length = track.length

    def body(carry, _):
        state, laps, failed, driven, flying = carry
        action = policy(None, state, key)
        _, state, _, term, trunc, info = env.step(key, state, action, params)
        live = (laps < LAPS) & ~failed
        failed = failed | (live & (info["off_track"] | term | trunc))
        driven = driven + jnp.where(live & ~failed, info["progress"], 0.0)
        done_lap = live & ~failed & info["lap_completed"]
        flying = jnp.where(done_lap & (laps == LAPS - 1) & info["lap_clean"], info["lap_time"], flying)
        return (state, laps + done_lap.astype(jnp.int32), failed, driven, flying), None

    init = (state, jnp.int32(0), jnp.bool_(False), jnp.float32(0.0), jnp.float32(jnp.nan))
    (_, laps, failed, driven, flying), _ = jax.lax.scan(body, init, None, length=steps)
    ok = (laps >= LAPS) & ~failed & jnp.isfinite(flying)
    return jnp.where(ok, flying, FAIL_SCORE - driven / length), jnp.where(ok, flying, jnp.nan)


@struct.dataclass
class _CEM:
    mean: jax.Array
    std: jax.Array
    best: jax.Array  # the best vector so far, re-entered in every population (elitism)
    best_score: jax.Array


def robust_score(env: RacingEnv, params: EnvParams, track: Track, base: BaselineParams, tuning: DriverTuning,
                 steps: int, robust_cars: int = 0, robust_spread: float = 0.03, seed: int = 0) -> jax.Array:
    """The worst ``score`` of one tuning over the nominal car and ``robust_cars`` cars drawn with every
    parameter within ``robust_spread`` of it (draws fixed by ``seed``)."""
    spreads = jnp.concatenate([jnp.zeros((1,)), jnp.full((robust_cars,), robust_spread)]).astype(jnp.float32)
    keys = jnp.concatenate([jax.random.PRNGKey(0)[None], jax.random.split(jax.random.PRNGKey(seed + 1), robust_cars)])
    drive = lambda sp, k: score(env, params.replace(car_spread=sp), track, base, tuning, steps, k)[0]  # noqa: E731
    return jax.vmap(drive)(spreads, keys).max()


def tune(env: RacingEnv, params: EnvParams, track: Track, base: BaselineParams, limit_s: float, knots: int = 24,
         population: int = 512, generations: int = 60, seed: int = 0, robust_cars: int = 0,
         robust_spread: float = 0.03,
         on_generation: Callable[[int, float], None] | None = None) -> tuple[DriverTuning, list[float]]:
    """CEM over the tuning vector: each generation drives ``population`` candidates at once (vmapped,
    one jit) and refits the sampling Gaussian to the best sixteenth. The search starts from
    ``starting_point``; returns the best tuning found (never worse than that start, which is scored
    first) and the best score after each generation; ``on_generation(g, best_score)`` reports progress.
    With ``robust_cars`` a candidate's score is its worst over the nominal car and that many drawn
    around it (``robust_score``). Scored on ``env``'s track, its edges ``edge_margin`` narrower: the
    tuning keeps that margin."""
    if knots < 2 or population < 4 or generations < 1 or robust_cars < 0 or not 0.0 <= robust_spread < 1.0:
        raise ValueError(f"tune: knots={knots} (>= 2), population={population} (>= 4), generations="
                         f"{generations} (>= 1), robust_cars={robust_cars} (>= 0) and robust_spread="
                         f"{robust_spread} (in [0, 1)) are needed")
    steps = drive_steps(limit_s, env.config.dt)
    margin = env.config.edge_margin  # the track it is scored on: its edges this much narrower
    n_elite = max(2, population // 16)
    dim = 2 * knots + len(GAINS)
    # Initial spread: 5% of speed, a metre of line, 30% on the gains.
    std0 = jnp.concatenate([jnp.full((knots,), 0.05), jnp.full((knots,), 1.0), jnp.full((len(GAINS),), 0.3)])

    def score_vec(v):
        return robust_score(env, params, track, base, DriverTuning.from_vector(v, knots, margin), steps, robust_cars,
                            robust_spread, seed)

    @jax.jit
    def generation(c: _CEM, key) -> _CEM:
        pop = c.mean + c.std * jax.random.normal(key, (population, dim))
        pop = pop.at[0].set(c.best)
        scores = jax.vmap(score_vec)(pop)
        order = jnp.argsort(scores)
        elite = pop[order[:n_elite]]
        better = scores[order[0]] < c.best_score
        # Smoothed refit: a plain refit collapses the spread within a few generations.
        return _CEM(mean=elite.mean(0), std=0.7 * c.std + 0.3 * elite.std(0) + 1e-3,
                    best=jnp.where(better, pop[order[0]], c.best),
                    best_score=jnp.where(better, scores[order[0]], c.best_score))

    start = starting_point(knots, base).to_vector()
    # The start enters the first population as the best so far (one compiled program, not two).
    c = _CEM(mean=start, std=std0, best=start, best_score=jnp.float32(jnp.inf))
    history = []
    for g, key in enumerate(jax.random.split(jax.random.PRNGKey(seed), generations)):
        c = generation(c, key)
        history.append(float(c.best_score))
        if on_generation is not None:
            on_generation(g, history[-1])
    return DriverTuning.from_vector(c.best, knots, margin), history
