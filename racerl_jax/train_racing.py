"""``train_crossq.py``: CrossQ on the surrogate racing env (``--backend surrogate``) or on the game
(``--backend real``): the command itself, top to bottom: the run dir, the training driver
(``racerl_jax.train_loop``), the final evaluation, the plots, summary.json and the summary line.

Its parts: the settings and command line (``racerl_jax.train_config``), the envs
(``racerl_jax.racing_setup``), the evaluation laps and the best agent (``racerl_jax.lap_eval``), the
plots (``racerl_jax.run_plots``). Their names are also importable from here.
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax

from racerl_jax.checkpoint import CONFIG_FILE, write_json_atomic
from racerl_jax.collapse import CollapseConfig, CollapseGuard
from racerl_jax.crossq import AgentState
from racerl_jax.spot import EXIT_INTERRUPTED, INTERRUPTED, SpotConfig
from surrogate.baseline import baseline_params_for
from surrogate.car import CarParams
from surrogate.observation import ObsConfig  # noqa: F401  (re-exported)
from surrogate.track import select_track
from surrogate.surrogate_file import load_surrogate
from surrogate.tuning import baseline_driver
from racerl_jax.lap_eval import (  # noqa: F401  (the command's parts, importable from here)
    BEST_AGENT_DIR, BEST_LAP_FILE, BEST_TRACKS_FILE, TRACKS_DIR, LapEvaluator, MultiTrackEvaluator, lap_slice,
    make_game_lap_drive, make_lap_drive, save_best)
from racerl_jax.racing_setup import RacingSetup, build_setup, car_spread, env_config, slow_lap_steps  # noqa: F401
from racerl_jax.run_plots import (  # noqa: F401
    BEST_LAP_PNG, CURVE_PNG, TRACK_GAPS_PNG, plot_best_lap, plot_learning_curve, plot_track_gaps)
from racerl_jax.train_config import (  # noqa: F401
    _PER_INVOCATION, DEFAULT_REWARD, FITTED_EDGE_MARGIN, FITTED_GAME_REWARD, MATMUL_PRECISIONS, TrainConfig, _action_dims, crossq_config,
    resolve)
from racerl_jax.train_cli import build_parser, parse_args  # noqa: F401


# ----------------------------------------------------------------------------- the command


def prepare_run_dir(cfg: TrainConfig, run_dir: Path) -> None:
    """Refuse to mix runs: a run dir holding a run is continued only with --resume and the same
    settings (those that shape the state or the learning; the rest, ``_PER_INVOCATION``, may
    differ). ``train`` then writes them into the run's config.json under ``"command"``, beside the
    agent's resolved config."""
    path = run_dir / CONFIG_FILE
    if not path.exists():
        return
    if not cfg.resume:
        raise SystemExit(f"{run_dir} already holds a run ({CONFIG_FILE}); pass --resume to continue it or give a new --run-dir")
    saved = json.loads(path.read_text()).get("command", {})
    # Through from_dict, so settings added since the run was saved read as what that run did.
    old, new = TrainConfig.from_dict(saved).run_settings() if saved else {}, cfg.run_settings()
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        raise SystemExit(
            f"--resume: these settings differ from the run in {run_dir} ({CONFIG_FILE}): "
            + ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
            + "; use the run's settings or a new --run-dir"
        )
    if saved != new:
        # A run saved before a setting became per-invocation (or before a setting existed): its
        # config.json is brought to today's form, which says the same about what shaped the run.
        write_json_atomic(path, {**json.loads(path.read_text()), "command": new})


FINAL_RESERVE_S = 10.0  # the final evaluation and the plots, inside the budget


def run(cfg: TrainConfig, t_start: float | None = None) -> dict[str, Any]:
    """The whole command; returns the summary (also written to summary.json). ``t_start``
    (time.monotonic()) is when the command started, so the budget and the time to the first
    clean lap include imports and compilation."""
    t_start = time.monotonic() if t_start is None else t_start
    cfg = resolve(cfg)
    run_dir = Path(cfg.run_dir)
    prepare_run_dir(cfg, run_dir)
    precision = None if cfg.matmul_precision == "default" else cfg.matmul_precision
    with jax.default_matmul_precision(precision):
        if cfg.backend == "real":
            return _run_real(cfg, run_dir, t_start)
        return _run_surrogate(cfg, run_dir, t_start)


def _run_surrogate(cfg: TrainConfig, run_dir: Path, t_start: float) -> dict[str, Any]:
    from racerl_jax.train_loop import train

    setup = build_setup(cfg)
    run = (f"preset {cfg.preset}, {cfg.num_envs} envs, {cfg.updates_per_iter} updates/iteration, "
           f"budget {cfg.budget_minutes:g} min, run dir {run_dir}")
    if setup.multi:
        def listed(unseen: bool) -> str:
            return ", ".join(f"{t.name} {t.limit_s:.2f} s" for t in setup.eval_tracks if t.unseen == unseen) or "none"

        print(f"{cfg.model} model, minimum-lap-time references: training tracks {listed(False)}; unseen tracks "
              f"{listed(True)}; {run}", flush=True)
        evaluator: Any = MultiTrackEvaluator.on_surrogate(setup, run_dir, t_start, cfg.seed)
    else:
        print(f"track {setup.track_name}, {cfg.model} model: minimum-lap-time reference {setup.limit_s:.2f} s; {run}",
              flush=True)
        evaluator = LapEvaluator.on_surrogate(setup, run_dir, t_start, cfg.seed)
    if setup.refresh is not None:
        result = _train_refreshing(cfg, setup, _driver_options(cfg, run_dir, t_start, evaluator))
    else:
        result = train(
            setup.env,
            setup.params,
            crossq_config(cfg),
            total_env_steps=cfg.total_env_steps,
            num_envs=cfg.num_envs,
            updates_per_iter=cfg.updates_per_iter,
            seed=cfg.seed,
            chunk_iterations=cfg.chunk_iterations,
            demos=demonstrations(cfg, setup) if cfg.demos else None,
            demo_share=cfg.demo_share,
            **_driver_options(cfg, run_dir, t_start, evaluator),
        )
    track = select_track(setup.eval_params.tracks, 0)
    return _finish(cfg, run_dir, t_start, result, evaluator, track, setup.track_name, setup.limit_s)


def _train_refreshing(cfg: TrainConfig, setup: RacingSetup, driver: dict[str, Any]) -> Any:
    """``train_loop.train`` with the random:N tracks drawn afresh every --tracks-refresh-env-steps
    (``setup.refresh``), checked before each chunk: on a new draw every car starts a new episode
    (the old tracks are gone), as does every car of a resumed run. The draw is logged as
    ``tracks_draw``. Same shapes, so no recompilation."""
    from racerl_jax.train_loop import drive, init_train_carry, make_train_iteration

    agent_cfg = crossq_config(cfg)
    every = cfg.tracks_refresh_env_steps
    carry = init_train_carry(setup.env, setup.params, agent_cfg, cfg.num_envs, jax.random.PRNGKey(cfg.seed))
    now: dict[str, Any] = {"draw": None, "run": None}

    def run(carry: Any, iterations: int, lr_scale: float = 1.0, entropy_shift: float = 0.0) -> tuple[Any, dict]:
        env_steps = int(carry.agent.env_steps)
        draw = env_steps // every
        if draw != now["draw"]:
            params = setup.refresh(draw)
            if now["draw"] is not None or env_steps > 0:
                obs, state = _reset_all(setup.env, cfg.num_envs, jax.random.fold_in(carry.key, draw), params)
                zero = carry.episodes.running_return * 0
                carry = carry.replace(obs=obs, env_state=state, episodes=carry.episodes.replace(
                    running_return=zero, running_length=carry.episodes.running_length * 0))
            now.update(draw=draw, run=make_train_iteration(setup.env, params, agent_cfg, cfg.num_envs,
                                                           cfg.updates_per_iter))
        carry, stats = now["run"](carry, iterations, lr_scale, entropy_shift)
        return carry, {**stats, "tracks_draw": draw}

    meta = {"crossq": agent_cfg.to_dict(), "num_envs": cfg.num_envs, "updates_per_iter": cfg.updates_per_iter,
            "seed": cfg.seed}  # as train_loop.train writes it
    return drive(run, carry, cfg.num_envs, total_env_steps=cfg.total_env_steps, chunk_iterations=cfg.chunk_iterations,
                 run_meta=meta, **driver)


def demonstrations(cfg: TrainConfig, setup: RacingSetup) -> Any:
    """--demos: the baseline driver (planned for the car, or the tuning file's) drives the training envs
    (``racerl_jax.demos``); the same ones on a resume (the seed's key)."""
    from racerl_jax.demos import collect

    track = select_track(setup.params.tracks, 0)
    try:
        driver = baseline_driver(track, baseline_params_for(setup.params.car),
                                 None if cfg.demos == "baseline" else cfg.demos, setup.env.config.car_half_width,
                                 setup.env.config.reference)
    except ValueError as e:
        raise SystemExit(f"train_crossq.py --demos: {e}") from None
    t0 = time.monotonic()
    demos = collect(setup.env, setup.params, driver, cfg.num_envs, cfg.demo_env_steps,
                    jax.random.fold_in(jax.random.PRNGKey(cfg.seed), DEMO_STREAM), cfg.demo_noise, cfg.action_overshoot)
    print(f"demonstrations ({cfg.demos}, noise {cfg.demo_noise:g}): {demos.describe()}, in "
          f"{time.monotonic() - t0:.0f} s; {cfg.demo_share:.0%} of every batch drawn from them", flush=True)
    return demos.buffer


DEMO_STREAM = 0xDE40  # the demonstrations' key, apart from the training's


@functools.partial(jax.jit, static_argnums=(0, 1))
def _reset_all(env: Any, num_envs: int, key: jax.Array, params: Any) -> tuple[jax.Array, Any]:
    return jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, num_envs), params)


def _driver_options(cfg: TrainConfig, run_dir: Path, t_start: float, evaluator: LapEvaluator) -> dict[str, Any]:
    remaining = cfg.budget_minutes * 60.0 - (time.monotonic() - t_start) - FINAL_RESERVE_S
    return dict(max_wall_seconds=max(remaining, 1.0), run_dir=run_dir, eval_fn=keeping_best(evaluator, run_dir),
                eval_every_env_steps=cfg.eval_every_env_steps, checkpoint_every_env_steps=cfg.checkpoint_every_env_steps,
                checkpoint_every_seconds=60.0 * cfg.checkpoint_every_minutes,
                spot=SpotConfig(cfg.spot_metadata_url, cfg.spot_poll_seconds),
                resume=cfg.resume, extra_config={"command": cfg.run_settings()}, progress_metric="eval_lap_s",
                progress=cfg.progress, plot_curve=False, lr_schedule=cosine_decay(cfg.lr_final) if cfg.lr_final != 1.0 else None,
                entropy_schedule=entropy_schedule(cfg),
                guard=CollapseGuard(CollapseConfig(max_recoveries=3 if cfg.recover_collapse else 0)))


def keeping_best(evaluator: LapEvaluator | MultiTrackEvaluator, run_dir: Path) -> Callable[[AgentState], dict[str, float]]:
    """The driver's ``eval_fn``: the evaluator's scores, and when it drove a new best clean lap, that
    lap and the agent written to the run dir (the training keeps its best agent; the evaluator scores)."""

    def eval_fn(agent: AgentState) -> dict[str, float]:
        scores = evaluator(agent)
        if evaluator.improved:
            evaluator.write_best(run_dir, agent)
        return scores

    return eval_fn


def cosine_ramp(f: float) -> float:
    """0 at the start of the budget (f = 0), 1 at its end, on half a cosine: flat at both ends."""
    return 0.5 * (1.0 - math.cos(math.pi * f))


def cosine_decay(final: float) -> Callable[[float], float]:
    """The learning-rate factor over the spent share f of the budget: 1 at the start, ``final`` at
    the end, on half a cosine (flat at both ends: full steps while the policy finds its laps)."""
    return lambda f: 1.0 + (final - 1.0) * cosine_ramp(f)


def entropy_schedule(cfg: TrainConfig) -> Callable[[float], float] | None:
    """What is added to the agent's target entropy over the spent share f of the budget: 0 at the
    start, (final - start) x the action size at the end; None without --entropy-per-action-final."""
    if cfg.entropy_per_action_final is None:
        return None
    total = (cfg.entropy_per_action_final - cfg.entropy_per_action) * _action_dims(cfg)
    return lambda f: total * cosine_ramp(f)


def _run_real(cfg: TrainConfig, run_dir: Path, t_start: float) -> dict[str, Any]:
    """CrossQ on the game through the bridge (one car): the host loop, with evaluation laps of
    the deterministic policy driven on the game itself."""
    from racerl_jax.real_env import RealEnvConfig, RealGameEnv
    from racerl_jax.train_loop import HostLoop, train_host

    fitted = load_surrogate(cfg.surrogate) if cfg.surrogate else None
    car = fitted.car if fitted else CarParams()
    env_cfg = env_config(cfg, fitted, start="line")
    env = RealGameEnv(RealEnvConfig(
        mode=cfg.game_mode, address=cfg.address, telemetry_address=cfg.telemetry_address,
        action_address=cfg.action_address, track_file=cfg.track or None,
        reset_seed=cfg.game_seed if cfg.game_seed >= 0 else None, env=env_cfg, reward=cfg.reward_weights(), car=car,
    ))
    try:
        limit = float(env.reference.lap_time_s)
        name = env.track_data.name
        agent_cfg = crossq_config(cfg)
        print(f"game {env.hello.get('game')!r} ({cfg.game_mode}), track {name}: minimum-lap-time reference "
              f"{limit:.2f} s; preset {cfg.preset}, budget {cfg.budget_minutes:g} min, run dir {run_dir}", flush=True)
        loop = HostLoop(env, agent_cfg, seed=cfg.seed)
        eval_steps = cfg.eval_max_steps or slow_lap_steps(limit, float(env.track.length), env_cfg, cfg.eval_laps)
        evaluator = LapEvaluator(make_game_lap_drive(env, loop, eval_steps, cfg.seed), limit, env_cfg.dt, run_dir,
                                 t_start, env.track, name)
        result = train_host(loop, total_env_steps=cfg.total_env_steps, seed=cfg.seed,
                            chunk_env_steps=cfg.chunk_iterations, **_driver_options(cfg, run_dir, t_start, evaluator))
        return _finish(cfg, run_dir, t_start, result, evaluator, env.track, name, limit)
    finally:
        env.close()


def _finish(cfg: TrainConfig, run_dir: Path, t_start: float, result: Any, evaluator: LapEvaluator, track: Any,
            track_name: str, limit: float) -> dict[str, Any]:
    """Final evaluation, plots, summary.json and the summary line (without the evaluation and the
    best lap's plot when the run was interrupted)."""
    from racerl_jax.logs import METRICS_FILE, RunLogger

    multi = isinstance(evaluator, MultiTrackEvaluator)
    if multi:
        limit = evaluator.limit_s  # the training tracks' references added up
    agent = result.carry.agent
    env_steps, updates = int(agent.env_steps), int(agent.updates)
    interrupted = result.stop_reason in INTERRUPTED
    # Interrupted (a spot notice, a signal), the checkpoint is written and the seconds left belong to
    # exiting: no final evaluation (on the game it drives laps).
    final = None if interrupted else keeping_best(evaluator, run_dir)(agent)
    if final is not None:
        logger = RunLogger(run_dir)
        logger.log(env_steps, {"env_steps": env_steps, "updates": updates,
                               "wall_s": time.monotonic() - t_start, **{f"eval_{k}": v for k, v in final.items()}})
        logger.close()
        if multi:
            lap_png = " ".join(str(plot_best_lap(t.track, t.name, t.limit_s, ev, ev.run_dir / BEST_LAP_PNG))
                               for t, ev in zip(evaluator.tracks, evaluator.per))
        else:
            lap_png = plot_best_lap(track, track_name, limit, evaluator, run_dir / BEST_LAP_PNG)
    # The learning curve, once, here (the driver leaves it to the command); after the checkpoint, so
    # an interrupted run that is killed while it draws loses only the picture.
    curve = plot_learning_curve(run_dir / METRICS_FILE, run_dir / CURVE_PNG, limit)
    if multi:
        curve = f"{curve} {plot_track_gaps(run_dir / METRICS_FILE, run_dir / TRACK_GAPS_PNG, evaluator.tracks)}"

    best = evaluator.best_lap_s
    summary = {
        "first_clean_lap_min": evaluator.first_clean_lap_min,
        "best_lap_s": best,
        "limit_s": limit,
        "gap_pct": 100.0 * (best / limit - 1.0),
        "final_eval": final,
        "env_steps": env_steps,
        "updates": updates,
        "stop_reason": result.stop_reason,
        "collapses": result.collapses,
        "recoveries": result.recoveries,
        "wall_min": (time.monotonic() - t_start) / 60.0,
        "invocation": {k: v for k, v in cfg.to_dict().items() if k in _PER_INVOCATION},
    }
    if multi:
        summary.update(_tracks_summary(evaluator))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    best_agent = f"; best agent: {run_dir / BEST_AGENT_DIR}" if (run_dir / BEST_AGENT_DIR).is_dir() else ""
    if final is None:
        print(f"interrupted ({result.stop_reason}) after {env_steps} env steps, {updates} updates, "
              f"{summary['wall_min']:.1f} min; checkpoint written: {run_dir / 'checkpoints'}{best_agent}; exit status "
              f"{EXIT_INTERRUPTED}: run the same command with --resume to continue")
    else:
        print(f"stopped ({result.stop_reason}) after {env_steps} env steps, {updates} updates, "
              f"{summary['wall_min']:.1f} min; final evaluation: lap {final['lap_s']:.2f} s, clean-lap rate "
              f"{final['clean_lap_rate']:.2f}, deviation from the reference line {final['ref_deviation_m']:.2f} m, "
              f"action change {final['action_change']:.4f}")
        if multi:
            print("final evaluation by track (lap, gap to the reference): " + ", ".join(
                f"{t.name}{' (unseen)' if t.unseen else ''} {final[f'lap_s/{t.name}']:.2f} s {final[f'gap_pct/{t.name}']:.1f}%"
                for t in evaluator.tracks))
        print(f"plots: {curve} {lap_png}; checkpoints: {run_dir / 'checkpoints'}{best_agent}")
    print(summary_line(summary), flush=True)
    return summary


def _tracks_summary(evaluator: MultiTrackEvaluator) -> dict[str, Any]:
    """summary.json's figures of several tracks. The keys of one track's summary then describe the
    best agent (best mean gap over the training tracks) on all the training tracks: ``best_lap_s``
    its laps added up, ``limit_s`` their references added up, ``gap_pct`` between the two;
    ``first_clean_lap_min`` the first evaluation with a clean lap on every training track."""
    best = evaluator.best or {}
    laps = {**best.get("laps", {}), **best.get("unseen_laps", {})}
    return {
        "tracks": len(evaluator.train),
        "mean_gap_pct": evaluator.best_mean_gap_pct,
        "unseen_tracks": len(evaluator.unseen),
        "unseen_mean_gap_pct": float(best.get("unseen_mean_gap_pct", float("nan"))),
        "best_agent_env_steps": best.get("env_steps"),
        "per_track": {t.name: {"unseen": t.unseen, "limit_s": t.limit_s,
                               "best_agent_lap_s": float(laps.get(t.name, float("nan"))),
                               "best_agent_gap_pct": 100.0 * (float(laps.get(t.name, float("nan"))) / t.limit_s - 1.0),
                               "best_lap_s": ev.best_lap_s, "first_clean_lap_min": ev.first_clean_lap_min}
                      for t, ev in zip(evaluator.tracks, evaluator.per)},
    }


def summary_line(s: dict[str, Any]) -> str:
    """The last line printed; with several tracks (or unseen ones) it adds their figures after the
    keys of one track's line, which keep their place."""
    line = (f"first_clean_lap_min={s['first_clean_lap_min']:.2f} best_lap_s={s['best_lap_s']:.2f} "
            f"limit_s={s['limit_s']:.2f} gap_pct={s['gap_pct']:.1f}")
    if "tracks" in s:
        line += (f" tracks={s['tracks']} mean_gap_pct={s['mean_gap_pct']:.1f} "
                 f"unseen_mean_gap_pct={s['unseen_mean_gap_pct']:.1f}")
    return line


def main(argv: Sequence[str] | None = None, t_start: float | None = None) -> dict[str, Any]:
    return run(parse_args(argv), t_start=t_start)
