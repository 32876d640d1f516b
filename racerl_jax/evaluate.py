"""``scripts/evaluate.py``: N laps of a saved agent with its deterministic policy, on the surrogate or
on the game, scored beside the classical baseline and the minimum-lap-time reference.

The agent is what a training run saved (its ``best_agent/``, or a step of ``checkpoints/``),
restored by ``racerl_jax.saved_agent``; nothing is unpickled. Every setting
that shapes the drive comes from that saved config: the pedals, the car model, the surrogate file
(its car, track, control period and input delay), the reward, the game's addresses. On the
surrogate the laps are driven in the env the run's own evaluations drove (``train_racing.
build_setup``'s evaluation env: start line, no randomisation); on the game through
``RealGameEnv`` at the run's control period. The baseline driver (``surrogate.baseline``, planned
for the run's car: the fitted car of a surrogate file) drives the same laps on the same backend.

Laps: every drive starts from rest on the start line; a lap completed leads straight into the
next (a flying lap); a lap that ends any other way (off the track, stuck, wrong way, the game
lost) is a failed lap, and the next starts again from rest. A game that puts the car anywhere but
on the line first drives an untimed out-lap to the line, which is not one of the N. The drive
stops after N laps or at the step budget; laps not reached count as not clean, so the clean-lap
rate is clean laps / N.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from racerl_jax.checkpoint import CONFIG_FILE
from racerl_jax.config_io import name_value_overrides
from racerl_jax.crossq import AgentState
from racerl_jax.laps import LapBook, json_safe, plot_driver, plot_lap_times, score, summary_line
from racerl_jax.saved_agent import _FORMS, AgentError, SavedAgent, load_agent
from racerl_jax.train_loop import driving_action
from racerl_jax.racing_setup import SLOW_PACE, slow_lap_steps
from racerl_jax.train_racing import TrainConfig, build_setup, env_config
from surrogate.baseline import BaselineParams, baseline_action, baseline_params_for
from surrogate.tuning import baseline_driver
from surrogate.car import CarParams
from surrogate.env import EnvConfig, EnvParams, RacingEnv, env_action, game_controls
from surrogate.track import Track, select_track

REPORT_FILE = "report.json"
# Step budget when none is given: the laps at this fraction of the reference pace (as training's
# evaluation sizes its drives).
DRIVERS = ("agent", "baseline")
# The env's own time limit, out of the way: the step budget ends a drive, and the lap it cuts short
# counts as not reached (not clean), like the laps after it.
NO_TIME_LIMIT = 2**30

log = logging.getLogger(__name__)


class EvaluateError(AgentError):
    """A bad option, agent or game: the message says what is wrong and how to fix it. ``code`` is
    the command's exit status (2: the command line, 1: the game or the files it names)."""


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What ``scripts/evaluate.py`` does. Empty strings and None mean "the run's setting"."""

    agent: str
    laps: int = 5
    backend: str = "surrogate"
    mode: str = ""  # --backend real: lockstep | realtime; "" = the run's
    address: str = ""  # the game's lockstep (or hello/track) address; "" = the run's
    telemetry_address: str = ""
    action_address: str = ""
    game_seed: int | None = None  # every game episode reset with it; None = the run's, else 0
    track: str = ""  # a track file or bundled name in place of the run's (see --track)
    max_steps: int = 0  # control steps per driver; 0 = racing_setup.slow_lap_steps for the laps
    out: str = ""  # "" = <run dir>/eval-<backend>-<time>
    seed: int = 0
    baseline_param: tuple[str, ...] = ()  # NAME=VALUE overrides of surrogate.baseline.BaselineParams
    baseline_tuning: str = ""  # a tuning.json of drive_baseline.py --tune: the baseline drives it
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "baseline_param", tuple(self.baseline_param))
        if not self.agent:
            raise EvaluateError("--agent is required: a run dir, its best_agent/ or a checkpoint under checkpoints/")
        if self.laps < 1:
            raise EvaluateError(f"--laps {self.laps}: give the number of laps to drive, >= 1")
        if self.backend not in ("surrogate", "real"):
            raise EvaluateError(f"--backend {self.backend!r}: expected surrogate or real")
        if self.mode not in ("", "lockstep", "realtime"):
            raise EvaluateError(f"--mode {self.mode!r}: expected lockstep or realtime")
        if self.backend == "surrogate" and (self.mode or self.address or self.telemetry_address
                                            or self.action_address or self.game_seed is not None):
            raise EvaluateError("--mode, --address, --telemetry-address, --action-address and --game-seed are for "
                                "the game: add --backend real, or leave them out")
        if self.max_steps < 0:
            raise EvaluateError(f"--max-steps {self.max_steps}: give a step budget >= 1, or 0 for enough for the laps")
        if self.game_seed is not None and self.game_seed < 0:
            raise EvaluateError(f"--game-seed {self.game_seed}: give a seed >= 0")
        self.baseline_overrides()
        if self.baseline_tuning and not Path(self.baseline_tuning).is_file():
            raise EvaluateError(f"--baseline-tuning {self.baseline_tuning}: no such file; give the tuning.json "
                                "that scripts/drive_baseline.py --tune saved in its run directory")

    def baseline_overrides(self) -> dict[str, float]:
        try:
            return name_value_overrides("--baseline-param", self.baseline_param, BaselineParams)
        except ValueError as e:
            raise EvaluateError(str(e)) from None


# ----------------------------------------------------------------------------- drivers on the surrogate


def _agent_action(agent: AgentState, env: RacingEnv, obs: jax.Array, state: Any, key: jax.Array) -> jax.Array:
    low, high = np.asarray(env.action_low, np.float32), np.asarray(env.action_high, np.float32)
    return driving_action(agent, obs, low, high, key)


def _baseline_action(args: tuple[Track, BaselineParams], env: RacingEnv, obs: jax.Array, state: Any,
                     key: jax.Array) -> jax.Array:
    track, bp = args
    return env_action(baseline_action(track, state.pos, env.telemetry(state.car), bp), env.config.pedals)


POLICIES = {"agent": _agent_action, "baseline": _baseline_action}


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _drive_chunk(env: RacingEnv, policy: Callable, steps: int, policy_args: Any, params: EnvParams, obs: jax.Array,
                 state: Any, key: jax.Array):
    """``steps`` control periods of one car from (obs, state), auto-resetting on the start line:
    the carry and a row per step (the pose the step started from, the game controls applied, the
    step's outcome)."""

    def body(carry, k):
        obs, state = carry
        ka, ks = jax.random.split(k)
        action = policy(policy_args, env, obs, state, ka)
        obs2, state2, r, term, trunc, info = env.step(ks, state, action, params)
        row = dict(x=state.car.x, y=state.car.y, speed=info["speed"], action=game_controls(action, env.config.pedals),
                   lap_completed=info["lap_completed"], lap_time=info["lap_time"], lap_clean=info["lap_clean"],
                   off_track=info["off_track"], stuck=info["stuck"], ref_deviation=info["ref_deviation"],
                   progress=info["progress"],
                   terminated=term, truncated=trunc, episode_steps=state.steps + 1)
        return (obs2, state2), row

    (obs, state), rows = jax.lax.scan(body, (obs, state), jax.random.split(key, steps))
    return obs, state, rows


def _surrogate_end_reason(row: dict[str, Any]) -> str | None:
    if not (row["terminated"] or row["truncated"]):
        return None
    if row["off_track"]:
        return "off_track"
    if row["stuck"]:
        return "stuck"
    return "wrong_way" if row["terminated"] else "time_limit"


def drive_surrogate(env: RacingEnv, params: EnvParams, policy: str, policy_args: Any, book: LapBook, max_steps: int,
                    key: jax.Array, on_progress: Callable[[LapBook, float], None], chunk: int = 500
                    ) -> dict[str, np.ndarray]:
    """Drive until ``book`` has its laps or ``max_steps``, in jitted chunks (progress between them)."""
    k_reset, key = jax.random.split(key)
    obs, state = env.reset(k_reset, params)
    book.new_episode(0.0)
    parts: list[dict[str, np.ndarray]] = []
    driven = 0
    while driven < max_steps and not book.done:
        n = min(chunk, max_steps - driven)
        key, k = jax.random.split(key)
        obs, state, rows = _drive_chunk(env, POLICIES[policy], n, policy_args, params, obs, state, k)
        rows = {k: np.asarray(v) for k, v in rows.items()}
        used = n
        for i in range(n):
            row = {k: v[i] for k, v in rows.items()}
            row["done"] = bool(row["terminated"] or row["truncated"])
            row["end_reason"] = _surrogate_end_reason(row)
            if book.add(row):
                used = i + 1
                break
            if row["done"]:
                book.new_episode(0.0)
        part = {k: v[:used] for k, v in rows.items()}
        part["done"] = part["terminated"] | part["truncated"]
        part["dt"] = np.full(used, env.config.dt, np.float64)
        parts.append(part)
        driven += used
        on_progress(book, driven * env.config.dt)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ----------------------------------------------------------------------------- drivers on the game


def drive_game(env: Any, act: Callable[[np.ndarray], np.ndarray], book: LapBook, max_steps: int, seed: int | None,
               on_progress: Callable[[LapBook, float], None]) -> dict[str, np.ndarray]:
    """Drive a ``RealGameEnv`` with ``act(obs) -> env action`` until ``book`` has its laps or
    ``max_steps``, resetting the game after every episode."""
    keys = ("x", "y", "speed", "action", "lap_completed", "lap_time", "lap_clean", "off_track", "ref_deviation",
            "progress", "done", "dt", "end_reason")
    rows: dict[str, list] = {k: [] for k in keys}
    obs, _ = env.reset(seed=seed)
    book.new_episode(env.lap_start_s)
    game_s = 0.0
    for _ in range(max_steps):
        frame = env.last_frame  # the pose the step starts from, as on the surrogate
        obs, r, term, trunc, info = env.step(act(obs))
        done = bool(term or trunc)
        t_next = info.get("game_t", frame["t"])
        dt = max(float(t_next) - float(frame["t"]), 0.0)
        game_s += dt
        row = {"x": frame["x"], "y": frame["y"], "speed": info.get("speed", frame["speed"]),
               "action": info["applied_action"], "lap_completed": bool(info.get("lap_completed")),
               "lap_time": info.get("lap_time") if info.get("lap_time") is not None else np.nan,
               "lap_clean": bool(info.get("lap_clean")), "off_track": bool(info.get("off_track")),
               "ref_deviation": info.get("ref_deviation", np.nan), "progress": info.get("progress", 0.0),
               "done": done, "dt": dt, "end_reason": info.get("end_reason")}
        for k in keys:
            rows[k].append(row[k])
        over = book.add(row)
        on_progress(book, game_s)
        if over:
            break
        if done:
            obs, _ = env.reset(seed=seed)
            book.new_episode(env.lap_start_s)
    out = {k: np.asarray(rows[k], np.float64).reshape(-1)
           for k in ("x", "y", "speed", "lap_time", "ref_deviation", "progress", "dt")}
    out.update({k: np.asarray(rows[k], bool).reshape(-1) for k in ("lap_completed", "lap_clean", "off_track", "done")})
    out["action"] = np.asarray(rows["action"], np.float32).reshape(-1, 3)
    return out


# ----------------------------------------------------------------------------- the command


def _progress(name: str, laps: int, enabled: bool):
    from tqdm import tqdm

    bar = tqdm(total=laps, desc=name, unit="lap", file=sys.stderr, disable=not enabled, dynamic_ncols=True)

    def update(book: LapBook, driven_s: float) -> None:
        bar.update(len(book.laps) - bar.n)
        clean = sum(lap.clean for lap in book.laps)
        bar.set_postfix_str(f"{clean} clean, {book.steps} steps, {driven_s:.0f} s driven", refresh=False)

    return bar, update


def _out_dir(cfg: EvalConfig, run_dir: Path) -> Path:
    out = Path(cfg.out) if cfg.out else run_dir / f"eval-{cfg.backend}-{time.strftime('%Y%m%d-%H%M%S')}"
    if (out / REPORT_FILE).exists():
        raise EvaluateError(f"--out {out} already holds a {REPORT_FILE}; give a new --out (or leave it out for a "
                            "new directory in the run dir)")
    return out


def _run_settings(cfg: EvalConfig, saved: SavedAgent) -> TrainConfig:
    """The run's settings with what this evaluation changes (--track on the surrogate; on the game
    --track is the game's centre line, handed to the game env as such)."""
    tc = saved.config
    if cfg.backend == "real":
        return tc
    if cfg.track:
        if tc.surrogate and cfg.backend == "surrogate":
            raise EvaluateError(f"--track {cfg.track}: the run trained on the surrogate file {tc.surrogate}, which "
                                "holds its own track; leave --track out (or evaluate on the game: --backend real)")
        # A run over several tracks is driven on the one asked for, alone.
        tc = dataclasses.replace(tc, track=cfg.track, tracks=(), eval_tracks=(), tracks_refresh_env_steps=0)
    elif tc.tracks:
        raise EvaluateError(f"the run trained on several tracks ({', '.join(tc.tracks)}): give --track NAME|FILE, "
                            "the one to drive (a bundled name, a CSV file)")
    elif cfg.backend == "surrogate" and tc.backend == "real" and not tc.track and not tc.surrogate:
        raise EvaluateError("the run trained on the game, on the track the game served: there is no surrogate of it; "
                            "evaluate with --backend real, or give --track FILE (the game's centre line)")
    return tc


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """The whole command: returns the report (also written to report.json in the out dir)."""
    t0 = time.monotonic()
    saved = load_agent(cfg.agent)
    tc = _run_settings(cfg, saved)
    out = _out_dir(cfg, saved.run_dir)
    print(f"agent: {saved.checkpoint} ({saved.source}, {saved.step} env steps); run {saved.run_dir}: "
          f"{tc.pedals} pedals, {tc.model} model" + (f", surrogate {tc.surrogate}" if tc.surrogate else ""), flush=True)
    precision = None if tc.matmul_precision == "default" else tc.matmul_precision
    with jax.default_matmul_precision(precision):
        if cfg.backend == "surrogate":
            report = _evaluate_surrogate(cfg, tc, saved, out)
        else:
            report = _evaluate_game(cfg, tc, saved, out)
    report["wall_s"] = time.monotonic() - t0
    (out / REPORT_FILE).write_text(json.dumps(json_safe(report), indent=2) + "\n")
    _print_report(report, out)
    print(summary_line(report["agent"]), flush=True)
    return report


def _baseline(cfg: EvalConfig, car: CarParams, track: Track, env_cfg: EnvConfig) -> tuple[Track, BaselineParams]:
    """The baseline driver as it drives: planned for ``car`` (with ``--baseline-param``), or the tuned
    driver of ``--baseline-tuning`` (its speed profile and line on ``track``, its gains)."""
    bp = dataclasses.replace(baseline_params_for(car), **cfg.baseline_overrides())
    try:
        return baseline_driver(track, bp, cfg.baseline_tuning, env_cfg.car_half_width, env_cfg.reference)
    except ValueError as e:
        raise EvaluateError(str(e), code=1) from None


def _header(cfg: EvalConfig, tc: TrainConfig, saved: SavedAgent, track_name: str, limit_s: float, dt: float,
            delay_steps: int, max_steps: int, bp: BaselineParams) -> dict[str, Any]:
    return {
        "agent_path": str(saved.checkpoint), "agent_source": saved.source, "agent_env_steps": saved.step,
        "run_dir": str(saved.run_dir), "backend": cfg.backend, "track": track_name, "model": tc.model,
        "pedals": tc.pedals, "surrogate": tc.surrogate or None, "control_period_s": dt, "delay_steps": delay_steps,
        "laps_asked": cfg.laps, "max_steps": max_steps, "limit_s": limit_s, "seed": cfg.seed,
        "baseline_params": {f.name: float(getattr(bp, f.name)) for f in dataclasses.fields(bp)},
        "baseline_tuning": cfg.baseline_tuning or None,
    }


def _max_steps(cfg: EvalConfig, limit_s: float, length_m: float, env_cfg: EnvConfig) -> int:
    return cfg.max_steps or slow_lap_steps(limit_s, length_m, env_cfg, cfg.laps)


def _finish_driver(name: str, rows: dict[str, np.ndarray], book: LapBook, track: Track, dt: float, limit_s: float,
                   out: Path) -> dict[str, Any]:
    res = score(rows, book, limit_s)
    label = "CrossQ agent" if name == "agent" else "baseline driver"
    png = plot_driver(track, rows, book, dt, label, limit_s, out / f"{name}_lap.png")
    res["plot"] = str(png) if png else None
    np.savez_compressed(out / f"{name}_drive.npz", **{k: v for k, v in rows.items() if v.dtype != object})
    return res


def _evaluate_surrogate(cfg: EvalConfig, tc: TrainConfig, saved: SavedAgent, out: Path) -> dict[str, Any]:
    from surrogate.track_io import TrackFileError

    fitted = saved.fitted("evaluate")
    try:
        setup = build_setup(tc)
    except (TrackFileError, FileNotFoundError) as e:
        raise EvaluateError(f"the run's track does not load: {e} (paths in {CONFIG_FILE} are relative to where "
                            "training ran: evaluate from there)", code=1) from None
    car = fitted.car if fitted else CarParams()
    dt = setup.eval_env.config.dt
    env = RacingEnv(dataclasses.replace(setup.eval_env.config, max_episode_steps=NO_TIME_LIMIT))
    params = setup.eval_params
    track = select_track(params.tracks, 0)
    max_steps = _max_steps(cfg, setup.limit_s, float(track.length), env.config)
    base_track, bp = _baseline(cfg, car, track, env.config)
    report = _header(cfg, tc, saved, setup.track_name, setup.limit_s, dt, env.config.delay_steps, max_steps, bp)
    out.mkdir(parents=True, exist_ok=True)
    print(f"surrogate: track {setup.track_name}, {tc.model} model, control period {dt:g} s, input delay "
          f"{env.config.delay_steps} steps; minimum-lap-time reference {setup.limit_s:.2f} s; {cfg.laps} laps "
          f"({max_steps} steps at most) per driver", flush=True)
    for name, args in (("agent", saved.agent), ("baseline", (base_track, bp))):
        book = LapBook(cfg.laps, float(track.length))
        bar, update = _progress(name, cfg.laps, cfg.progress)
        rows = drive_surrogate(env, params, name, args, book, max_steps, jax.random.PRNGKey(cfg.seed), update)
        bar.close()
        report[name] = _finish_driver(name, rows, book, track, dt, setup.limit_s, out)
    report["plots"] = _plots(report, out, setup.limit_s)
    return report


def _evaluate_game(cfg: EvalConfig, tc: TrainConfig, saved: SavedAgent, out: Path) -> dict[str, Any]:
    from bridge import protocol as P
    from bridge.client import BridgeUnavailable
    from racerl_jax.real_env import RealEnvConfig, RealGameEnv, telemetry_from
    from surrogate.track import project_global
    from surrogate.track_io import TrackFileError

    fitted = saved.fitted("evaluate")
    car = fitted.car if fitted else CarParams()
    mode = cfg.mode or tc.game_mode
    # The run's own track only where it trained on the game (a surrogate run's track is the
    # surrogate's; the game serves its own).
    track_file = cfg.track or (tc.track if tc.backend == "real" and tc.track else None)
    game_seed = cfg.game_seed if cfg.game_seed is not None else (tc.game_seed if tc.game_seed >= 0 else 0)
    env_cfg = dataclasses.replace(env_config(tc, fitted, start="line"), max_episode_steps=NO_TIME_LIMIT)
    real = RealEnvConfig(mode=mode, address=cfg.address or tc.address,
                         telemetry_address=cfg.telemetry_address or tc.telemetry_address,
                         action_address=cfg.action_address or tc.action_address, track_file=track_file,
                         reset_seed=game_seed, env=env_cfg, reward=tc.reward_weights(), car=car)
    try:
        env = RealGameEnv(real)
    except (BridgeUnavailable, TimeoutError) as e:
        raise EvaluateError(f"no game answers ({e}); start the game's plugin in {mode} mode, or give its --address "
                            f"(lockstep/hello: {real.address}, real time also --telemetry-address/--action-address)",
                            code=1) from None
    except (TrackFileError, P.ProtocolError, ValueError) as e:
        raise EvaluateError(f"the game cannot be driven: {e}", code=1) from None
    try:
        limit = float(env.reference.lap_time_s)
        dt = env_cfg.dt
        max_steps = _max_steps(cfg, limit, float(env.track.length), env_cfg)
        base_track, bp = _baseline(cfg, car, env.track, env_cfg)
        report = _header(cfg, tc, saved, env.track_data.name, limit, dt, 0, max_steps, bp)
        # What a step is on the game: whole ticks in lockstep (the run's period rounded to them).
        game_dt = env.ticks * env.hello["dt"] if mode == "lockstep" and env.hello else dt
        report.update(game=env.hello.get("game") if env.hello else None, mode=mode, ticks_per_step=env.ticks,
                      game_control_period_s=game_dt, game_seed=game_seed)
        out.mkdir(parents=True, exist_ok=True)
        print(f"game {report['game']!r} ({mode}), track {env.track_data.name}: control period {game_dt:g} s"
              + (f" ({env.ticks} ticks)" if mode == "lockstep" else "")
              + f"; minimum-lap-time reference {limit:.2f} s; {cfg.laps} laps "
              f"({max_steps} steps at most) per driver", flush=True)

        low, high = env.action_space.low, env.action_space.high
        agent, key = saved.agent, jax.random.PRNGKey(cfg.seed)
        agent_fn = jax.jit(lambda obs: driving_action(agent, obs, low, high, key))
        base_fn = jax.jit(lambda pos, tel: env_action(baseline_action(base_track, pos, tel, bp), tc.pedals))
        # Compiled before the game runs: in real time a first step that compiles would be late.
        t = env.track
        tel0 = telemetry_from({"x": t.x[0], "y": t.y[0], "yaw": t.heading[0], "speed": 0.0, "accel_long": 0.0,
                               "accel_lat": 0.0, "yaw_rate": 0.0})
        jax.block_until_ready(agent_fn(jnp.zeros(env.observation_space.shape, jnp.float32)))
        jax.block_until_ready(base_fn(project_global(t, tel0.x, tel0.y, tel0.yaw), tel0))
        acts = {"agent": lambda obs: np.asarray(agent_fn(jnp.asarray(obs))),
                "baseline": lambda obs: np.asarray(base_fn(env.track_pos, env.last_telemetry))}
        for name in DRIVERS:
            book = LapBook(cfg.laps, float(env.track.length))
            bar, update = _progress(name, cfg.laps, cfg.progress)
            try:
                rows = drive_game(env, acts[name], book, max_steps, game_seed, update)
            except BridgeUnavailable as e:
                raise EvaluateError(f"the game stopped answering while the {name} drove ({e}); restart it and "
                                    "evaluate again", code=1) from None
            finally:
                bar.close()
            report[name] = _finish_driver(name, rows, book, env.track, game_dt, limit, out)
        stats = env.client_stats
        report["bridge_stats"] = dataclasses.asdict(stats) if dataclasses.is_dataclass(stats) else None
        report["plots"] = _plots(report, out, limit)
        return report
    finally:
        env.close()


def _plots(report: dict[str, Any], out: Path, limit_s: float) -> list[str]:
    results = {name: report[name] for name in DRIVERS}
    plots = [report[name]["plot"] for name in DRIVERS if report[name]["plot"]]
    plots.append(str(plot_lap_times(results, limit_s, out / "lap_times.png")))
    return plots


def _fmt(v: float | None, unit: str = " s") -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.2f}{unit}"


def _print_report(report: dict[str, Any], out: Path) -> None:
    limit = report["limit_s"]
    for name in DRIVERS:
        r = report[name]
        times = ", ".join(f"{lap['time_s']:.2f}{'' if lap['clean'] else '*'}" if lap["time_s"] is not None
                          else lap["end"] for lap in r["laps"]) or "none"
        print(f"{name}: laps {times}; clean {r['clean_laps']}/{r['laps_asked']} (rate {r['clean_lap_rate']:.2f}), "
              f"mean {_fmt(r['mean_lap_s'])}, best {_fmt(r['best_lap_s'])} (gap {_fmt(r['gap_pct'], '%')}); "
              f"deviation from the reference line mean {_fmt(r['ref_deviation_mean_abs_m'], ' m')}, max "
              f"{_fmt(r['ref_deviation_max_abs_m'], ' m')}; mean |d steer| {_fmt(r['steer_change_mean'], '')}/step, "
              f"mean |d pedal| {_fmt(r['pedal_change_mean'], '')}/step, {_fmt(r['pedal_changes_per_min'], '')} "
              f"throttle/brake changes/min; off track {r['off_track_s']:.2f} s")
    print(f"minimum-lap-time reference: {limit:.2f} s; report: {out / REPORT_FILE}; plots: {' '.join(report['plots'])}")


# ----------------------------------------------------------------------------- command line


def build_parser():
    import argparse

    d = EvalConfig(agent="-")
    p = argparse.ArgumentParser(
        prog="evaluate.py",
        description="Drive a saved agent's deterministic policy for N laps from the start line, on the surrogate "
        "or on the game, beside the baseline driver and the minimum-lap-time reference; writes report.json and "
        "plots. The last line printed is clean_lap_rate=... mean_lap_s=... best_lap_s=... limit_s=... gap_pct=...",
    )
    p.add_argument("--agent", required=True, help=f"the agent: {_FORMS}")
    p.add_argument("--laps", type=int, default=d.laps, help="laps to drive, each driver")
    p.add_argument("--backend", choices=["surrogate", "real"], default=d.backend,
                   help="surrogate: the env the run evaluated on; real: the game through the bridge")
    p.add_argument("--mode", choices=["lockstep", "realtime"], default=None,
                   help="--backend real: how to drive the game (default: the run's)")
    p.add_argument("--address", default=None, help="--backend real: the plugin's lockstep (or hello/track) address "
                   "(default: the run's)")
    p.add_argument("--telemetry-address", default=None, help="--backend real, realtime: the plugin's PUB")
    p.add_argument("--action-address", default=None, help="--backend real, realtime: the plugin's PULL")
    p.add_argument("--game-seed", type=int, default=None,
                   help="--backend real: every game episode reset with this seed (default: the run's, else 0; "
                   "CarRacing: 0 keeps the track it serves)")
    p.add_argument("--track", default="", help="a track (bundled name or TUM CSV) in place of the run's: on the "
                   "game, its centre line when it serves none")
    # argparse formats help strings with %: the percent sign is doubled.
    p.add_argument("--max-steps", type=int, default=d.max_steps,
                   help=f"control steps per driver at most (0: the laps at {SLOW_PACE:.0%}% of the reference pace, "
                        "or of the run's --speed-limit where that is slower)")
    p.add_argument("--out", default=d.out, help="where report.json and the plots go (default: "
                   "<run dir>/eval-<backend>-<time>)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--baseline-param", action="append", default=[], metavar="NAME=VALUE",
                   help="a baseline driver setting (surrogate.baseline.BaselineParams), repeatable; e.g. "
                   "speed_margin=0.6 for a car weaker than the one it plans for")
    p.add_argument("--baseline-tuning", default=d.baseline_tuning, metavar="TUNING_JSON",
                   help="the baseline drives this tuning (drive_baseline.py --tune's tuning.json, tuned on the same "
                        "track) instead of its plan for the car")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def parse_args(argv=None) -> EvalConfig:
    p = build_parser()
    a = vars(p.parse_args(argv))
    a["progress"] = not a.pop("no_progress")
    a["baseline_param"] = tuple(a["baseline_param"])
    for k in ("mode", "address", "telemetry_address", "action_address"):
        a[k] = a[k] or ""
    try:
        return EvalConfig(**a)
    except AgentError as e:
        p.error(str(e))


def main(argv=None) -> int:
    """The command: 0 when it ran (whatever the laps were), 2 for a bad command line or agent, 1 when
    the game or the run's files fail; errors are one line, not a traceback."""
    cfg = parse_args(argv)
    try:
        evaluate(cfg)
    except AgentError as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return e.code
    return 0
