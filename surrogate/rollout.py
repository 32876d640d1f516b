"""Driving a policy through the surrogate in one jitted ``lax.scan`` and scoring the laps:
lap times, clean-lap rate, deviation from the reference line, smoothness of the actions."""
from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from surrogate.env import EnvParams, EnvState, RacingEnv, batch_reset, game_controls

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
