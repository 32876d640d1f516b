"""Drive the classical baseline (pure pursuit + reference speed profile) on a track in the surrogate,
print its lap times beside the minimum-lap-time reference for the same car, and save a lap plot.

    python scripts/drive_baseline.py [--track flowing|technical|oval|PATH.csv] [--laps 2] [--model dynamic]
    python scripts/drive_baseline.py --tune [--generations 60] [--population 512]   # tune it to the car first
    python scripts/drive_baseline.py --tuning runs/baseline-oval-<time>/tuning.json  # drive a saved tuning
    python scripts/drive_baseline.py --surrogate runs/fit-game/surrogate.json --tune  # the fitted car on its track

``--surrogate`` drives a fitted game's car on the game's track (``train_surrogate.py``'s file: its car,
residual, control period and input delay), and ``--tune`` tunes the driver to that car.

``--tune`` fits the driver's speed profile, line and gains to the car and track (the cross-entropy
method, ``surrogate.tuning``) and saves them as ``tuning.json`` in the run directory, which
``evaluate.py --baseline-tuning`` drives beside an agent, on the surrogate or on the game.
``--robust-cars N`` makes every candidate lap N more cars drawn around the car (each parameter
within ``--robust-spread``) too: a fitted car is an estimate, and a tuning that laps only the
estimate leaves the game's track. With ``--surrogate`` it tunes on edges ``--edge-margin`` (1 m)
narrower, as training does, and the tuned line keeps that room wherever it is driven.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from racerl_jax.plots import plot_lap
from racerl_jax.racing_setup import paced_lap_s, slow_lap_steps
from surrogate.baseline import BaselineParams, baseline_action, baseline_params_for
from surrogate.car import CarParams
from surrogate.env import GOVERNOR_FADE, MAX_EDGE_MARGIN, EnvConfig, RacingEnv
from surrogate.env_params import make_params
from surrogate.rollout import lap_metrics, rollout
from surrogate.laptime import LINE_NAMES
from surrogate.surrogate_file import (FITTED_EDGE_MARGIN, SurrogateFileError, edge_margin_for, line_for, load_surrogate,
                                     speed_limit_for)
from surrogate.track import select_track
from surrogate.track_io import DEFAULT_TRACK
from surrogate import tuning as tuning_lib


@dataclasses.dataclass
class Config:
    track: str = DEFAULT_TRACK
    laps: int = 2
    model: str = "dynamic"
    speed_margin: float = BaselineParams.speed_margin
    run_dir: str = ""
    seed: int = 0
    tune: bool = False
    generations: int = 60
    population: int = 512
    knot_spacing: float = 50.0
    robust_cars: int = 0
    robust_spread: float = 0.03
    tuning: str = ""
    surrogate: str = ""
    speed_limit: float | None = None  # as train_crossq.py's: with --surrogate a margin under the fit's trusted speed
    reference_line: str | None = None  # as train_crossq.py's: with --surrogate min-time, else min-curvature
    edge_margin: float | None = None  # --tune on edges this much narrower, as train_crossq.py's training


def parse() -> Config:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Config()
    p.add_argument("--track", default=d.track, help="bundled track name or path to a TUM-format CSV")
    p.add_argument("--laps", type=int, default=d.laps, help="laps to drive from a standing start")
    p.add_argument("--model", default=d.model, choices=["dynamic", "kinematic"])
    p.add_argument("--speed-margin", type=float, default=d.speed_margin, help="fraction of the reference speed to aim at")
    p.add_argument("--run-dir", default=d.run_dir, help="where to save the plot (default runs/baseline-<track>-<time>)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--tune", action="store_true", help="tune the speed profile, line and gains to the car first")
    p.add_argument("--generations", type=int, default=d.generations, help="--tune: CEM generations")
    p.add_argument("--population", type=int, default=d.population, help="--tune: candidates driven per generation")
    p.add_argument("--knot-spacing", type=float, default=d.knot_spacing,
                   help="--tune: metres between the knots of the speed and line profiles")
    p.add_argument("--robust-cars", type=int, default=d.robust_cars,
                   help="--tune: cars drawn around the car that every candidate must lap too (0: the car alone)")
    p.add_argument("--robust-spread", type=float, default=d.robust_spread,
                   help="--tune: each parameter of those cars within this fraction of the car's")
    p.add_argument("--tuning", default=d.tuning, help="drive with a tuning.json saved by an earlier --tune")
    p.add_argument("--surrogate", default=d.surrogate, metavar="FILE",
                   help="a fitted surrogate (train_surrogate.py's surrogate.json): its car on its track, instead of "
                        "the default car on --track")
    p.add_argument("--speed-limit", type=float, default=d.speed_limit, metavar="M/S",
                   help="a speed limiter, as train_crossq.py's (0: none; default: with --surrogate the speed the fit "
                        "is trusted to, less a margin, else none)")
    p.add_argument("--reference-line", choices=sorted(LINE_NAMES), default=d.reference_line,
                   help="the line the driver follows and the limit is timed on, as train_crossq.py's (default: "
                        "min-time with --surrogate, else min-curvature); a tuning is tuned on, and for, one line")
    p.add_argument("--edge-margin", type=float, default=d.edge_margin, metavar="M",
                   help="--tune on the track's edges this much narrower, as train_crossq.py trains (default: "
                        f"{FITTED_EDGE_MARGIN:g} with --surrogate, else 0); the tuning keeps its line inside them, and "
                        "its laps are then driven and judged on the real edges")
    cfg = Config(**{k.replace("-", "_"): v for k, v in vars(p.parse_args()).items()})
    if cfg.speed_limit is not None and cfg.speed_limit != 0.0 and not cfg.speed_limit > GOVERNOR_FADE:
        p.error(f"--speed-limit {cfg.speed_limit}: give 0 (none) or a speed above {GOVERNOR_FADE} m/s")
    if cfg.tune and cfg.tuning:
        p.error("--tune and --tuning exclude each other: tune anew, or drive a saved tuning")
    if cfg.edge_margin is not None and not 0.0 <= cfg.edge_margin <= MAX_EDGE_MARGIN:
        p.error(f"--edge-margin {cfg.edge_margin}: give a distance in [0, {MAX_EDGE_MARGIN}] m")
    if cfg.tune and (cfg.generations < 1 or cfg.population < 4 or not cfg.knot_spacing > 0 or cfg.robust_cars < 0
                     or not 0.0 <= cfg.robust_spread < 1.0):
        p.error(f"--generations {cfg.generations} (>= 1), --population {cfg.population} (>= 4), "
                f"--knot-spacing {cfg.knot_spacing} (> 0 m), --robust-cars {cfg.robust_cars} (>= 0) and "
                f"--robust-spread {cfg.robust_spread} (in [0, 1)) are needed for --tune")
    return cfg


def main() -> None:
    cfg = parse()
    t0 = time.time()
    fitted = None
    if cfg.surrogate:
        try:
            fitted = load_surrogate(cfg.surrogate)
        except SurrogateFileError as e:
            raise SystemExit(str(e)) from None
    car = fitted.car if fitted else CarParams()
    timing = fitted.env_timing() if fitted else {}
    limit = speed_limit_for(cfg.speed_limit, fitted)
    line = line_for(cfg.reference_line, fitted is not None)
    env_cfg = EnvConfig(model=fitted.model if fitted else cfg.model, start="line", max_episode_steps=100_000,
                        speed_limit=limit, reference=LINE_NAMES[line], **timing)
    if limit:
        print(f"speed limiter at {limit:g} m/s" + (" (a margin under the fit's trusted speed)" if cfg.speed_limit is None else ""))
    track_entry = fitted.track if fitted else cfg.track
    track_name = fitted.track.name if fitted else Path(cfg.track).stem
    print(f"track {track_name}: computing the minimum-lap-time reference for the "
          f"{'fitted car of ' + cfg.surrogate if fitted else 'default car'} ...", flush=True)
    params, refs = make_params([track_entry], car=car, config=env_cfg, residual=fitted.residual if fitted else None)
    ref = refs[0]
    env = RacingEnv(env_cfg)
    track = select_track(params.tracks, 0)
    # the drives' step budgets allow for the limiter, which can make a lap slower than the reference
    pace_s = paced_lap_s(ref.lap_time_s, float(track.length), env_cfg)
    base = baseline_params_for(car)
    bp = dataclasses.replace(base, speed_margin=cfg.speed_margin)
    run_dir = Path(cfg.run_dir or f"runs/baseline-{track_name}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.mkdir(parents=True, exist_ok=True)
    tuned = None
    if cfg.tuning:
        try:
            tuned = tuning_lib.load_tuning(cfg.tuning, float(track.length), env_cfg.reference)
        except ValueError as e:
            raise SystemExit(str(e)) from None
        print(f"driving the tuning in {cfg.tuning} ({tuned.knots} knots)")
    elif cfg.tune:
        margin = edge_margin_for(cfg.edge_margin, fitted is not None)
        tuned = tune(cfg, RacingEnv(dataclasses.replace(env_cfg, edge_margin=margin)), params, track, base, pace_s, run_dir)

    if tuned is not None:
        policy = tuning_lib.tuned_policy(env, track, base, tuned)
    else:
        def policy(obs, state, key):
            return baseline_action(track, state.pos, env.telemetry(state.car), bp)

    steps = slow_lap_steps(ref.lap_time_s, float(track.length), env_cfg, cfg.laps)
    print(f"driving {cfg.laps} laps ({steps} steps max, one jitted scan) ...", flush=True)
    traj = rollout(env, params, policy, jax.random.PRNGKey(cfg.seed), steps)
    laps_at = np.flatnonzero(traj["lap_completed"])
    if laps_at.size >= cfg.laps:
        traj = {k: v[: laps_at[cfg.laps - 1] + 1] for k, v in traj.items()}
    m = lap_metrics(traj)
    times = traj["lap_time"][traj["lap_completed"].astype(bool)]
    clean = traj["lap_clean"][traj["lap_completed"].astype(bool)]

    name = "tuned baseline" if tuned is not None else "baseline"
    plot = plot_lap(track, traj["x"], traj["y"], traj["speed"], run_dir / "lap.png", controls=traj["action"], dt=env_cfg.dt,
                    title=f"{name} on {track_name}: best clean lap {m['best_lap_s']:.2f} s, limit {ref.lap_time_s:.2f} s")
    summary = {"config": dataclasses.asdict(cfg), "lap_times_s": times.tolist(), "lap_clean": clean.tolist(),
               "limit_s": ref.lap_time_s, "centre_line_limit_s": ref.centre_lap_time_s, "speed_limit_mps": limit, **m}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))

    for i, (lt, c) in enumerate(zip(times, clean), start=1):
        kind = "standing start" if i == 1 else "flying"
        print(f"lap {i} ({kind}): {lt:.2f} s {'clean' if c else 'OFF TRACK'}")
    print(f"minimum-lap-time reference for this car: {ref.lap_time_s:.2f} s on the {line} line "
          f"({ref.line_length_m:.0f} m), {ref.centre_lap_time_s:.2f} s on the centre line")
    print(f"deviation from the reference line (rms): {m['ref_deviation_m']:.2f} m; action change (mean sq.): {m['action_change']:.4f}")
    print(f"lap plot: {plot}  ({time.time() - t0:.0f} s in all)")
    gap = 100.0 * (m["best_lap_s"] / ref.lap_time_s - 1.0)
    print(f"baseline_best_lap_s={m['best_lap_s']:.2f} limit_s={ref.lap_time_s:.2f} gap_pct={gap:.1f} clean_laps={int(m['clean_laps'])}")
    if not np.isfinite(m["best_lap_s"]):
        raise SystemExit("the baseline did not complete a clean lap")


def tune(cfg: Config, env: RacingEnv, params, track, base, limit_s: float, run_dir: Path) -> tuning_lib.DriverTuning:
    knots = max(4, round(float(track.length) / cfg.knot_spacing))
    robust = (f", each on {cfg.robust_cars + 1} cars ({cfg.robust_spread:.0%} spread)" if cfg.robust_cars else "")
    margin = env.config.edge_margin
    robust += f", inside edges {margin:g} m narrower" if margin else ""
    print(f"tuning: {cfg.generations} generations of {cfg.population} drivers{robust}, {knots} knots "
          f"({float(track.length) / knots:.0f} m apart) ...", flush=True)
    bar = tqdm(total=cfg.generations, unit="gen", file=sys.stderr)

    def report(g: int, best: float) -> None:
        bar.update(1)
        bar.set_postfix_str(f"best flying lap {best:.2f} s" if tuning_lib.is_lap_time(best) else "no clean lap yet")

    tuned, history = tuning_lib.tune(env, params, track, base, limit_s, knots=knots, population=cfg.population,
                                     generations=cfg.generations, seed=cfg.seed, robust_cars=cfg.robust_cars,
                                     robust_spread=cfg.robust_spread, on_generation=report)
    bar.close()
    path = tuning_lib.save_tuning(run_dir / tuning_lib.TUNING_FILE, tuned, {
        "track": cfg.track, "surrogate": cfg.surrogate, "track_length_m": float(track.length), "model": env.config.model,
        "limit_s": limit_s, "best_score": history[-1], "generations": cfg.generations, "population": cfg.population,
        "seed": cfg.seed, "robust_cars": cfg.robust_cars, "robust_spread": cfg.robust_spread,
        "speed_limit": env.config.speed_limit, "reference": env.config.reference})
    print(f"tuning saved: {path}")
    return tuned


if __name__ == "__main__":
    main()
