"""Driving a policy through the surrogate in one jitted ``lax.scan`` and scoring the laps:
lap times, clean-lap rate, deviation from the reference line, smoothness of the actions."""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from surrogate.env import EnvParams, EnvState, RacingEnv, batch_reset, game_controls
from surrogate.track import Track, interp, project_path, reference_xy

# policy(obs, state, key) -> action; the baseline reads the state, a learned agent the obs.
Policy = Callable[[jax.Array, EnvState, jax.Array], jax.Array]


def batch_rollout(env: RacingEnv, params: EnvParams, action_fn: Callable, num_envs: int, steps: int,
                  record: Callable | None = None):
    """Jitted ``run(key) -> ((obs, state), records)``: ``num_envs`` cars driven for ``steps`` control
    periods in one ``lax.scan`` (auto-resetting). ``action_fn(obs, state, key)`` gives the (N, 3)
    actions; ``record(obs, state, reward, terminated, truncated, info)`` what to keep of each step
    (default: all of it), stacked over time."""
    record = record or (lambda *step: step)

    @jax.jit
    def run(key):
        k0, k1 = jax.random.split(key)
        obs, state = batch_reset(env, k0, params, num_envs)

        def body(carry, k):
            obs, state = carry
            ka, ks = jax.random.split(k)
            obs2, state2, r, term, trunc, info = env.batch_step(ks, state, action_fn(obs, state, ka), params)
            return (obs2, state2), record(obs2, state2, r, term, trunc, info)

        return jax.lax.scan(body, (obs, state), jax.random.split(k1, steps))

    return run


def trajectory_row(env: RacingEnv, state: EnvState, action: jax.Array, reward: jax.Array, terminated: jax.Array,
                   truncated: jax.Array, info: dict) -> dict[str, jax.Array]:
    """What a trajectory keeps of one step (``lap_metrics`` and the lap plots read it): the pose
    the step started from, the applied action and the step's outcome."""
    return dict(
        x=state.car.x, y=state.car.y, speed=info["speed"], action=game_controls(action, env.config.pedals),
        reward=reward, lap_completed=info["lap_completed"], lap_time=info["lap_time"], lap_clean=info["lap_clean"],
        off_track=info["off_track"], ref_deviation=info["ref_deviation"], done=terminated | truncated,
    )


def rollout(env: RacingEnv, params: EnvParams, policy: Policy, key: jax.Array, steps: int) -> dict[str, np.ndarray]:
    """Drive one car for ``steps`` control periods (auto-resetting) and return its trajectory,
    arrays over time: x, y, speed, action, lap_completed, lap_time, lap_clean, off_track,
    ref_deviation, done."""

    @jax.jit
    def run(key):
        k0, k1 = jax.random.split(key)
        obs, state = env.reset(k0, params)

        def body(carry, k):
            obs, state = carry
            ka, ke = jax.random.split(k)
            action = policy(obs, state, ka)
            obs2, state2, r, term, trunc, info = env.step(ke, state, action, params)
            return (obs2, state2), trajectory_row(env, state, action, r, term, trunc, info)

        _, traj = jax.lax.scan(body, (obs, state), jax.random.split(k1, steps))
        return traj

    return {k: np.asarray(v) for k, v in run(key).items()}


def lap_metrics(traj: dict[str, np.ndarray]) -> dict[str, float]:
    """Scores of a trajectory from ``rollout``; NaN where no lap was completed."""
    done_laps = traj["lap_completed"].astype(bool)
    times = traj["lap_time"][done_laps]
    clean = traj["lap_clean"][done_laps].astype(bool)
    clean_times = times[clean]
    # Smoothness counts only changes within an episode, not the jump at a reset.
    act = traj["action"]
    same_ep = ~traj["done"][:-1]
    d = np.sum(np.square(np.diff(act, axis=0)), axis=1)[same_ep]
    return {
        "laps": float(done_laps.sum()),
        "clean_laps": float(clean.sum()),
        "clean_lap_rate": float(clean.mean()) if clean.size else float("nan"),
        "best_lap_s": float(clean_times.min()) if clean_times.size else float("nan"),
        "last_lap_s": float(times[-1]) if times.size else float("nan"),
        "ref_deviation_m": float(np.sqrt(np.mean(np.square(traj["ref_deviation"])))),
        "action_change": float(d.mean()) if d.size else float("nan"),
        # Share of steps on both pedals at once (each above 5%): wasted effort a real driver avoids.
        "pedal_overlap": float(np.mean((act[:, 1] > 0.05) & (act[:, 2] > 0.05))) if act.size else float("nan"),
        "off_track_steps": float(traj["off_track"].sum()),
    }


def lap_trace(track: Track, x: np.ndarray, y: np.ndarray, dt: float) -> dict[str, np.ndarray]:
    """Where a driven stretch (poses ``x``, ``y`` one control period ``dt`` apart, in driving order)
    gains and loses time against the reference: per pose its distance along the centre line from
    the first pose (``distance``, m, unwrapped across the start line), the reference speed there
    (``ref_speed``, m/s) and ``delta`` (s), the driven time minus the time the reference lap (the
    minimum-lap-time speed profile on the reference line) takes between the same two points; > 0
    is time lost. ``ref_lap_s`` is the reference's time for a whole lap on this track's points."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.size < 2:
        raise ValueError(f"lap_trace: x and y must be 1-D of the same length >= 2, got shapes {x.shape} and {y.shape}")
    if not dt > 0:
        raise ValueError(f"lap_trace: dt = {dt!r}; give the control period in seconds (> 0)")
    s_pts, length = np.asarray(track.s, np.float64), float(track.length)
    v_ref = np.maximum(np.asarray(track.ref_speed, np.float64), 0.1)
    # Pose by pose near the one before, as the env does: through a crossing the car keeps its branch.
    pos = project_path(track, x, y)
    s = np.unwrap(np.asarray(pos.s, np.float64), period=length)
    # The reference's time point to point on its own line, at the mean of the two points' speeds.
    rx, ry = (np.asarray(a, np.float64) for a in reference_xy(track))
    seg = np.hypot(np.roll(rx, -1) - rx, np.roll(ry, -1) - ry)
    t_seg = seg / (0.5 * (v_ref + np.roll(v_ref, -1)))
    ref_lap = float(t_seg.sum())
    t_knots = np.concatenate([[0.0], np.cumsum(t_seg)])
    s_knots = np.append(s_pts, length)

    def t_ref(dist: np.ndarray) -> np.ndarray:
        laps, rem = np.divmod(dist, length)
        return laps * ref_lap + np.interp(rem, s_knots, t_knots)

    t_car = np.arange(x.size) * dt
    return {
        "distance": s - s[0],
        "ref_speed": np.asarray(interp(track, track.ref_speed, pos.s), np.float64),
        "delta": t_car - (t_ref(s) - t_ref(s[:1])),
        "ref_lap_s": np.float64(ref_lap),
    }
