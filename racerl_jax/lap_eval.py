"""Evaluation laps of a training run: the deterministic policy from the start line, on the
surrogate (one jitted call) or on the game, scored against the minimum-lap-time reference of the
same car and track; the run's best clean lap and the agent that drove it are kept in the run dir."""

from __future__ import annotations

import functools
import math
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from racerl_jax import crossq
from racerl_jax.checkpoint import Checkpointer, read_config
from racerl_jax.crossq import AgentState, CrossQConfig
from racerl_jax.train_loop import driving_action, scale_action
from racerl_jax.racing_setup import RacingSetup
from racerl_jax.train_config import TrainConfig
from surrogate.env import EnvConfig, EnvParams, RacingEnv
from surrogate.observation import ObsConfig
from surrogate.rollout import lap_metrics, trajectory_row
from surrogate.track import select_track

BEST_LAP_FILE = "best_lap.npz"
# The agent that drove the best clean lap: training can get worse after it, and the last
# checkpoint is not what a user wants to race with or fine-tune on the game.
BEST_AGENT_DIR = "best_agent"

# ----------------------------------------------------------------------------- evaluation


def make_lap_drive(env: RacingEnv, steps: int) -> Callable[[AgentState, EnvParams, jax.Array], dict[str, jax.Array]]:
    """Jitted ``drive(agent, params, key) -> trajectory`` (arrays over ``steps``): the
    deterministic policy (batch norm in eval mode) driving one car from the start line,
    auto-resetting there after a crash. The agent and env params are arguments, so evaluations
    (and later runs in the same process with the same env config) do not recompile."""
    return functools.partial(_drive_lap, env, steps)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _drive_lap(env: RacingEnv, steps: int, agent: AgentState, params: EnvParams, key: jax.Array) -> dict[str, jax.Array]:
    low, high = np.asarray(env.action_low, np.float32), np.asarray(env.action_high, np.float32)
    k0, k1 = jax.random.split(key)
    obs, state = env.reset(k0, params)

    def body(carry, k):
        obs, state = carry
        action = driving_action(agent, obs, low, high, k)
        obs2, state2, r, term, trunc, info = env.step(k, state, action, params)
        return (obs2, state2), trajectory_row(env, state, action, r, term, trunc, info)

    _, traj = jax.lax.scan(body, (obs, state), jax.random.split(k1, steps))
    return traj


def lap_slice(traj: dict[str, np.ndarray], i: int) -> slice:
    """The steps of the lap completed at step ``i``: from the previous line crossing or reset."""
    before = np.flatnonzero((traj["lap_completed"].astype(bool) | traj["done"].astype(bool))[:i])
    return slice(int(before[-1]) + 1 if before.size else 0, i + 1)


class LapEvaluator:
    """Scores evaluation laps: ``drive(agent)`` returns a trajectory of the deterministic policy
    from the start line (arrays over steps, as ``surrogate.rollout``'s), scored here against the
    reference lap time. It remembers the run's best clean lap (from the run dir's ``best_lap.npz``
    when resumed), whether the last evaluation beat it (``improved``), and the wall time of the
    first clean lap; writing the best lap and its agent is the training's (``save_best``)."""

    def __init__(self, drive: Callable[[AgentState], dict], limit_s: float, dt: float, run_dir: Path,
                 t_start: float, track: Any = None, track_name: str = "") -> None:
        from racerl_jax.run_log import EvalLapLog

        self.drive = drive
        # Every evaluation's drive (and the track once) for the live dashboard.
        self.lap_log = EvalLapLog(run_dir, dt, track, track_name, limit_s)
        self.limit_s = limit_s
        self.dt = dt
        self.run_dir = run_dir
        self.t_start = t_start
        self.best: dict[str, Any] | None = None
        self.first_clean_lap_min = float("nan")
        self.last_traj: dict[str, np.ndarray] | None = None
        self.improved = False  # the last evaluation drove a new best clean lap
        path = run_dir / BEST_LAP_FILE
        if path.exists():
            with np.load(path) as f:
                self.best = {k: f[k] for k in f.files}
            self.first_clean_lap_min = float(self.best["first_clean_lap_min"])

    @classmethod
    def on_surrogate(cls, setup: "RacingSetup", run_dir: Path, t_start: float, seed: int) -> "LapEvaluator":
        drive, key = make_lap_drive(setup.eval_env, setup.eval_steps), jax.random.PRNGKey(seed)
        return cls(lambda agent: drive(agent, setup.eval_params, key), setup.limit_s, setup.eval_env.config.dt,
                   run_dir, t_start, select_track(setup.eval_params.tracks, 0), setup.track_name)

    @property
    def best_lap_s(self) -> float:
        return float(self.best["lap_s"]) if self.best is not None else float("nan")

    def __call__(self, agent: AgentState) -> dict[str, float]:
        traj = {k: np.asarray(v) for k, v in self.drive(agent).items()}
        wall_min = (time.monotonic() - self.t_start) / 60.0
        self.last_traj = traj
        m = lap_metrics(traj)
        done_at = np.flatnonzero(traj["done"])
        first_episode = slice(0, int(done_at[0]) + 1 if done_at.size else len(traj["reward"]))
        lap_s = m["best_lap_s"]
        self.lap_log.write(traj, int(agent.env_steps), wall_min * 60.0, lap_s)
        self.improved = False
        if math.isfinite(lap_s):
            if math.isnan(self.first_clean_lap_min):
                self.first_clean_lap_min = wall_min
            if not lap_s >= self.best_lap_s:  # also true while best is NaN
                clean = np.flatnonzero(traj["lap_completed"] & traj["lap_clean"])
                i = int(clean[np.argmin(traj["lap_time"][clean])])
                seg = lap_slice(traj, i)
                self.best = {
                    "lap_s": np.float64(lap_s),
                    "env_steps": np.int64(agent.env_steps),
                    "wall_min": np.float64(wall_min),
                    "first_clean_lap_min": np.float64(self.first_clean_lap_min),
                    **{k: traj[k][seg] for k in ("x", "y", "speed", "action", "ref_deviation")},
                }
                self.improved = True
        limit = self.limit_s
        return {
            "lap_s": lap_s,
            "best_lap_s": self.best_lap_s,
            "limit_s": limit,
            "gap_pct": 100.0 * (lap_s / limit - 1.0),
            "laps": m["laps"],
            "clean_lap_rate": m["clean_lap_rate"],
            "ref_deviation_m": m["ref_deviation_m"],
            "action_change": m["action_change"],
            "pedal_overlap": m["pedal_overlap"],
            "return": float(np.sum(traj["reward"][first_episode])),
            "distance_m": float(np.sum(traj["speed"][first_episode]) * self.dt),
            "wall_min": wall_min,
        }


def save_best(run_dir: Path, best: dict[str, Any], agent: AgentState) -> None:
    """The best clean lap (``best_lap.npz``, a ``LapEvaluator.best``) and the agent that drove it
    (``best_agent/``), where a resumed run and ``load_best_agent`` find them."""
    np.savez(run_dir / BEST_LAP_FILE, **best)
    with Checkpointer(run_dir / BEST_AGENT_DIR, max_to_keep=1) as ckpt:
        ckpt.save(int(agent.env_steps), agent)


def load_best_agent(run_dir: str | Path) -> AgentState:
    """The agent that drove the run's best clean evaluation lap, restored into the networks that
    the run's config.json describes."""
    run_dir = Path(run_dir)
    saved = read_config(run_dir)
    config = CrossQConfig.from_dict(saved["crossq"])
    if not (run_dir / BEST_AGENT_DIR).is_dir():
        raise FileNotFoundError(f"{run_dir / BEST_AGENT_DIR} not found: the run has not driven a clean evaluation lap yet")
    action_size = RacingEnv(EnvConfig(pedals=TrainConfig.from_dict(saved["command"]).pedals)).action_size
    template = crossq.init_agent(jax.random.PRNGKey(0), ObsConfig().size, action_size, config)
    with Checkpointer(run_dir / BEST_AGENT_DIR, max_to_keep=1) as ckpt:
        return ckpt.restore(template)


def make_game_lap_drive(env: Any, loop: Any, steps: int, seed: int) -> Callable[[AgentState], dict]:
    """``drive(agent)`` for ``LapEvaluator`` on a non-JAX env (the game): the deterministic policy
    from a reset for up to ``steps`` steps or the end of the episode, as a trajectory of arrays.
    The host loop's interrupted training episode is restarted afterwards."""
    low, high = env.action_space.low, env.action_space.high
    key = jax.random.PRNGKey(seed)

    def drive(agent: AgentState) -> dict[str, np.ndarray]:
        rows: dict[str, list] = {k: [] for k in ("x", "y", "speed", "action", "reward", "lap_completed", "lap_time",
                                                 "lap_clean", "off_track", "ref_deviation", "done")}
        obs, _ = env.reset()
        for _ in range(steps):
            a = np.asarray(crossq.act(agent, jnp.asarray(obs)[None], key, deterministic=True))[0]
            frame = env.last_frame  # the pose the step starts from, as surrogate.rollout.trajectory_row keeps
            obs, r, term, trunc, info = env.step(scale_action(a, low, high, agent.config.action_overshoot, xp=np))
            done = term or trunc
            for k, v in (("x", frame["x"]), ("y", frame["y"]), ("speed", info.get("speed", frame["speed"])),
                         ("action", info["applied_action"]), ("reward", r), ("lap_completed", bool(info.get("lap_completed"))),
                         ("lap_time", info.get("lap_time") or np.nan), ("lap_clean", bool(info.get("lap_clean"))),
                         ("off_track", bool(info.get("off_track"))), ("ref_deviation", info.get("ref_deviation", np.nan)),
                         ("done", done)):
                rows[k].append(v)
            if done:
                break
        loop.restart()
        return {k: np.asarray(v) for k, v in rows.items()}

    return drive
