"""Evaluation laps of a training run: the deterministic policy from the start line, on the
surrogate (one jitted call) or on the game, scored against the minimum-lap-time reference of the
same car and track; the run's best clean lap and the agent that drove it are kept in the run dir."""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from racerl_jax import crossq
from racerl_jax.checkpoint import Checkpointer, write_json_atomic
from racerl_jax.crossq import AgentState
from racerl_jax.train_loop import driving_action, scale_action
from racerl_jax.racing_setup import EvalTrack, RacingSetup
from surrogate.env import EnvParams, RacingEnv
from surrogate.rollout import lap_metrics, trajectory_row
from surrogate.track import Track, select_track, stack_tracks

BEST_LAP_FILE = "best_lap.npz"
# The agent that drove the best clean lap: training can get worse after it, and the last
# checkpoint is not what a user wants to race with or fine-tune on the game.
BEST_AGENT_DIR = "best_agent"
# Several tracks (--tracks): the best agent's figures (MultiTrackEvaluator.best), and each track's
# evaluations, best lap and plot in a folder of its own (tracks/<name>/, a run dir the dashboard reads).
BEST_TRACKS_FILE = "best_tracks.json"
TRACKS_DIR = "tracks"

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


def make_tracks_drive(env: RacingEnv, steps: int) -> Callable[[AgentState, EnvParams, Track, jax.Array], dict[str, jax.Array]]:
    """Jitted ``drive(agent, params, tracks, key) -> trajectories``: ``make_lap_drive``'s drive on
    each of the stacked ``tracks`` alone (``params`` with that one track), all in one call; the
    arrays get a leading axis over the tracks."""
    return functools.partial(_drive_laps, env, steps)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _drive_laps(env: RacingEnv, steps: int, agent: AgentState, params: EnvParams, tracks: Track,
                key: jax.Array) -> dict[str, jax.Array]:
    one = lambda track: _drive_lap(env, steps, agent, params.replace(tracks=jax.tree.map(lambda a: a[None], track)), key)  # noqa: E731
    return jax.vmap(one)(tracks)


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

    def write_best(self, run_dir: Path, agent: AgentState) -> None:
        """The best lap and the agent that drove it, into ``run_dir`` (``save_best``)."""
        save_best(run_dir, self.best, agent)

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


# Each track's figures in an evaluation of several tracks (metrics.jsonl: eval_<figure>/<track>).
PER_TRACK = ("lap_s", "best_lap_s", "gap_pct", "clean_lap_rate", "distance_m", "ref_deviation_m")
# ... and their means over the training tracks (and over the unseen ones, unseen_<figure>).
MEANS = ("laps", "clean_lap_rate", "ref_deviation_m", "action_change", "pedal_overlap", "return", "distance_m")


class MultiTrackEvaluator:
    """Evaluation laps on several tracks (``--tracks``, ``--eval-tracks``): each track driven alone
    from its start line by one ``LapEvaluator`` (its drive, best lap and dashboard files in
    ``tracks/<name>/``), all of them in one jitted call. Scores: each track's (``PER_TRACK``, keyed
    ``<figure>/<track>``), and over the training tracks ``lap_s`` (their laps added up), ``limit_s``
    (their references added up), ``gap_pct`` between the two, ``mean_gap_pct`` (the mean of their
    gaps), ``clean_tracks`` and the means of ``MEANS``; the same over the unseen tracks, prefixed
    ``unseen_``. A figure over tracks is NaN unless every one of them drove a clean lap.

    The best agent is the one with the lowest ``mean_gap_pct`` over the training tracks, counted
    only in an evaluation where every training track had a clean lap (the unseen tracks do not
    choose it: they stay unseen); ``best`` holds its figures (``best_tracks.json``), and
    ``first_clean_lap_min`` is the first evaluation with a clean lap on every training track."""

    def __init__(self, drive: Callable[[AgentState], dict], tracks: list[EvalTrack], dt: float, run_dir: Path,
                 t_start: float) -> None:
        self.drive = drive
        self.tracks = tracks
        self.dt = dt
        self.run_dir = run_dir
        self.t_start = t_start
        self.train = [i for i, t in enumerate(tracks) if not t.unseen]
        self.unseen = [i for i, t in enumerate(tracks) if t.unseen]
        self._trajs: dict[str, np.ndarray] = {}
        self.per = [LapEvaluator(functools.partial(self._traj, i), t.limit_s, dt, run_dir / TRACKS_DIR / t.name,
                                 t_start, t.track, t.name) for i, t in enumerate(tracks)]
        self.limit_s = sum(tracks[i].limit_s for i in self.train)
        self.best: dict[str, Any] | None = None
        self.first_clean_lap_min = float("nan")
        self.improved = False
        path = run_dir / BEST_TRACKS_FILE
        if path.exists():
            self.best = json.loads(path.read_text())
            self.first_clean_lap_min = float(self.best["first_clean_lap_min"])

    @classmethod
    def on_surrogate(cls, setup: "RacingSetup", run_dir: Path, t_start: float, seed: int) -> "MultiTrackEvaluator":
        drive, key = make_tracks_drive(setup.eval_env, setup.eval_steps), jax.random.PRNGKey(seed)
        tracks = stack_tracks([t.track for t in setup.eval_tracks])
        return cls(lambda agent: drive(agent, setup.eval_params, tracks, key), setup.eval_tracks,
                   setup.eval_env.config.dt, run_dir, t_start)

    def _traj(self, i: int, agent: AgentState) -> dict[str, np.ndarray]:
        return {k: v[i] for k, v in self._trajs.items()}

    @property
    def best_lap_s(self) -> float:
        return float(self.best["lap_s"]) if self.best is not None else float("nan")

    @property
    def best_mean_gap_pct(self) -> float:
        return float(self.best["mean_gap_pct"]) if self.best is not None else float("nan")

    def __call__(self, agent: AgentState) -> dict[str, float]:
        self._trajs = {k: np.asarray(v) for k, v in self.drive(agent).items()}
        scores = []
        for ev in self.per:
            scores.append(ev(agent))
            if ev.improved:  # each track's best lap, for its plot and a resumed run (no agent: the run keeps one)
                np.savez(ev.run_dir / BEST_LAP_FILE, **ev.best)
        self._trajs = {}
        wall_min = (time.monotonic() - self.t_start) / 60.0
        train = self._over(self.train, scores)
        self.improved = False
        if math.isfinite(train["mean_gap_pct"]):
            if math.isnan(self.first_clean_lap_min):
                self.first_clean_lap_min = wall_min
            if not train["mean_gap_pct"] >= self.best_mean_gap_pct:  # also true while best is None
                self.best = {
                    **{k: train[k] for k in ("mean_gap_pct", "lap_s", "limit_s", "gap_pct")},
                    "unseen_mean_gap_pct": self._over(self.unseen, scores)["mean_gap_pct"] if self.unseen else float("nan"),
                    "env_steps": int(agent.env_steps), "wall_min": wall_min,
                    "first_clean_lap_min": self.first_clean_lap_min,
                    "laps": {self.tracks[i].name: scores[i]["lap_s"] for i in self.train},
                    "unseen_laps": {self.tracks[i].name: scores[i]["lap_s"] for i in self.unseen},
                }
                self.improved = True
        out = {**train, "best_lap_s": self.best_lap_s, "best_mean_gap_pct": self.best_mean_gap_pct}
        if self.unseen:
            out.update({f"unseen_{k}": v for k, v in self._over(self.unseen, scores).items()})
        out["wall_min"] = wall_min
        for t, s in zip(self.tracks, scores):
            out.update({f"{k}/{t.name}": s[k] for k in PER_TRACK})
        return out

    def _over(self, idx: list[int], scores: list[dict[str, float]]) -> dict[str, float]:
        """The figures over these tracks (see the class)."""
        laps = [scores[i]["lap_s"] for i in idx]
        clean = all(math.isfinite(v) for v in laps)
        lap = float(sum(laps)) if clean else float("nan")
        limit = sum(self.tracks[i].limit_s for i in idx)
        out = {"lap_s": lap, "limit_s": limit, "gap_pct": 100.0 * (lap / limit - 1.0),
               "mean_gap_pct": float(np.mean([scores[i]["gap_pct"] for i in idx])) if clean else float("nan"),
               "clean_tracks": float(sum(math.isfinite(v) for v in laps))}
        with np.errstate(all="ignore"):
            out.update({k: float(np.nanmean([scores[i][k] for i in idx])) if any(
                math.isfinite(scores[i][k]) for i in idx) else float("nan") for k in MEANS})
        return out

    def write_best(self, run_dir: Path, agent: AgentState) -> None:
        """The best agent's figures (``best_tracks.json``) and the agent (``best_agent/``)."""
        write_json_atomic(run_dir / BEST_TRACKS_FILE, self.best)
        with Checkpointer(run_dir / BEST_AGENT_DIR, max_to_keep=1) as ckpt:
            ckpt.save(int(agent.env_steps), agent)


def save_best(run_dir: Path, best: dict[str, Any], agent: AgentState) -> None:
    """The best clean lap (``best_lap.npz``, a ``LapEvaluator.best``) and the agent that drove it
    (``best_agent/``), where a resumed run and ``saved_agent.load_agent`` find them."""
    np.savez(run_dir / BEST_LAP_FILE, **best)
    with Checkpointer(run_dir / BEST_AGENT_DIR, max_to_keep=1) as ckpt:
        ckpt.save(int(agent.env_steps), agent)


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
