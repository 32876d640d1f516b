"""``train_surrogate.py``: fit the surrogate to a game from recorded telemetry and write what the
rest of the pipeline reads.

Reads recorder run directories (``bridge.recorder.read_run``), fits every model
(``surrogate.fit.fit_all``) and writes into ``--out``:
- ``surrogate.json``: the chosen model in the surrogate file format (``surrogate.surrogate_file``),
  for ``train_crossq.py --surrogate``;
- ``car.json``: the chosen car's parameters alone, for ``record_telemetry.py --car`` (a second,
  faster recording with the baseline driver planned for the fitted car);
- ``report.json`` and ``report.txt``: one line per model with its open-loop errors on held-out
  episodes at 0.5, 1 and 2 s, the fitted parameters with units and uncertainties, the input delay,
  the data used and dropped;
- ``fit_trajectories.png`` (predicted against recorded paths and speeds on held-out segments) and
  ``fit_errors.png`` (error against horizon, every model).
The last line printed is
``model=<chosen> pos_err_1s_median_m=<f> speed_err_1s_median_mps=<f> yaw_err_1s_median_rad=<f> fit_minutes=<f>``.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bridge import protocol as P
from bridge.recorder import read_run
from surrogate import fit as F
from surrogate.car import PARAM_UNITS, car_params_to_dict
from surrogate.fit_data import FitData, FitDataError, prepare, sensor_noise
from surrogate.fit_regimes import TRUST_FLOOR_M, TRUST_FRACTION, format_regime_errors, trusted_speed
from surrogate.observation import SENSOR_NOISE_SPEEDS
from surrogate.surrogate_file import default_speed_limit, save_surrogate

SURROGATE_FILE = "surrogate.json"
CAR_FILE = "car.json"
REPORT_JSON = "report.json"
REPORT_TXT = "report.txt"
TRAJ_PNG = "fit_trajectories.png"
ERRORS_PNG = "fit_errors.png"


@dataclasses.dataclass(frozen=True)
class SurrogateFitConfig:
    """The command: which recordings, where to write, and the fit's settings (``surrogate.fit.FitConfig``)."""

    runs: tuple[str, ...]
    out: str = ""  # "" = runs/fit-<time>
    track: str | None = None  # TUM CSV of the game's centre line, when the recordings hold none
    val_fraction: float = 0.25  # share of the episodes held out
    stride: int = 1  # one rollout window every `stride` frames
    fit: F.FitConfig = F.FitConfig()
    progress: bool = True

    def __post_init__(self):
        if not self.runs:
            raise ValueError("give one or more recording run directories (record_telemetry.py --run-dir)")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction {self.val_fraction}: expected a fraction in (0, 1)")
        if self.stride < 1:
            raise ValueError(f"--stride {self.stride}: expected an integer >= 1")


def parse_args(argv=None) -> SurrogateFitConfig:
    d = F.FitConfig()
    p = argparse.ArgumentParser(
        prog="train_surrogate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="recording run directories (record_telemetry.py --run-dir)")
    p.add_argument("--out", default="", help="output directory (default runs/fit-<time>)")
    p.add_argument("--track", default=None, metavar="FILE",
                   help="the game's centre line (TUM CSV) when the recordings hold no track.json; overrides it")
    p.add_argument("--val-fraction", type=float, default=SurrogateFitConfig.val_fraction,
                   help="share of the episodes held out for validation (whole episodes)")
    p.add_argument("--stride", type=int, default=SurrogateFitConfig.stride, help="one rollout window every N frames")
    p.add_argument("--steps", type=int, default=d.steps, help="Adam steps per model")
    p.add_argument("--delay-starts", type=int, default=d.delay_starts,
                   help="starting points per candidate input delay (kinematic model)")
    p.add_argument("--residual-steps", type=int, default=d.residual_steps, help="Adam steps of the residual network")
    p.add_argument("--batch", type=int, default=d.batch, help="rollout windows per step")
    p.add_argument("--starts", type=int, default=d.starts, help="starting points fitted at once per model")
    p.add_argument("--horizon-s", type=float, default=d.horizon_s, help="longest rollout, s")
    p.add_argument("--max-delay", type=int, default=d.max_delay, help="input delays tried: 0 .. N frames")
    p.add_argument("--dynamic-delays", type=int, default=d.dynamic_delays,
                   help="the dynamic model is fitted at the N delays the kinematic model ranks first; the best "
                        "on held-out episodes is the delay")
    p.add_argument("--grip-tolerance", type=float, default=d.grip_tolerance,
                   help="write the car with the least grip whose held-out error is within this fraction of the "
                        "fit's (0: the fitted grip)")
    p.add_argument("--fit-steer-lock", action="store_true",
                   help="also fit the steer command at which the wheels reach full lock (off: the lock is at the "
                        "command's end; drivers trained with a fitted lock steered lock to lock on CarRacing)")
    p.add_argument("--no-residual", action="store_true", help="skip the learned residual")
    p.add_argument("--no-one-step", action="store_true", help="skip the one-step comparison fit")
    p.add_argument("--balance", action="store_true",
                   help="weigh every regime (pedal x steering x speed band) alike when drawing training windows, "
                        "instead of in proportion to the time the recordings spent in it")
    p.add_argument("--no-servo-where-trusted", action="store_true",
                   help="fit the steering servo over every window, not only below the speed up to which the dynamic "
                        "model is within 1 m one second ahead")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        fit = F.FitConfig(steps=a.steps, delay_starts=a.delay_starts, residual_steps=a.residual_steps, batch=a.batch,
                          starts=a.starts, horizon_s=a.horizon_s, max_delay=a.max_delay,
                          dynamic_delays=a.dynamic_delays, fit_steer_lock=a.fit_steer_lock, residual=not a.no_residual,
                          one_step=not a.no_one_step, seed=a.seed, grip_tolerance=a.grip_tolerance,
                          balance=a.balance, servo_where_trusted=not a.no_servo_where_trusted)
        return SurrogateFitConfig(runs=tuple(a.runs), out=a.out, track=a.track, val_fraction=a.val_fraction,
                                  stride=a.stride, fit=fit, progress=not a.no_progress)
    except ValueError as e:
        p.error(str(e))


def load_data(cfg: SurrogateFitConfig) -> tuple[FitData, list]:
    recordings = []
    for run in cfg.runs:
        try:
            recordings.append(read_run(run))
        except FileNotFoundError as e:
            raise FitDataError(str(e)) from None
        except (OSError, ValueError) as e:
            raise FitDataError(f"{run}: cannot read the recording ({e})") from None
    data = prepare(recordings, list(cfg.runs), track_file=cfg.track, horizon_s=cfg.fit.horizon_s,
                   max_delay=cfg.fit.max_delay, val_fraction=cfg.val_fraction, stride=cfg.stride, seed=cfg.fit.seed)
    return data, recordings


def _project_version() -> str:
    try:
        return importlib.metadata.version("racerl-jax")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def delay_control_steps(data: FitData, delay_frames: int) -> int:
    """The fitted input delay in the trainer's control periods (frames are control steps in lockstep)."""
    return int(round(delay_frames * data.dt / data.control_period))


def run(cfg: SurrogateFitConfig) -> dict[str, Any]:
    t0 = time.monotonic()
    out = Path(cfg.out or f"runs/fit-{time.strftime('%Y%m%d-%H%M%S')}")
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if cfg.progress else None
    data, recordings = load_data(cfg)
    if say:
        say(f"{len(data.train)} training and {len(data.val)} validation windows of {data.horizon} steps "
            f"({data.dt:.3f} s each) from {data.stats.frames} frames in {data.stats.episodes} episodes")
    result = F.fit_all(data, cfg.fit, progress=say)
    best = result.best
    metas = [r.meta or {} for r in recordings]
    provenance = {
        "recordings": [str(Path(r).resolve()) for r in cfg.runs],
        "games": sorted({str((m.get("hello") or {}).get("game", "unknown")) for m in metas}),
        "protocol_versions": sorted({m.get("protocol_version", P.VERSION) for m in metas}),
        "project_version": _project_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "frames": data.stats.frames,
        "episodes": data.stats.episodes,
        "train_windows": len(data.train),
        "val_windows": len(data.val),
        "dropped": data.stats.dropped,
        "model": best.name,
        "frame_dt_s": data.dt,
        "delay_frames": best.delay,
        "fit": dataclasses.asdict(cfg.fit),
    }
    delay = delay_control_steps(data, best.delay)
    car, capped = best.car, {}
    if cfg.fit.grip_tolerance:
        car, capped = F.least_grip(data, best, cfg.fit.grip_tolerance, cfg.fit.substeps)
    cap = F.held_top_speed(data)
    car = F.with_speed_cap(car, cap)
    provenance["least_grip"] = {"tolerance": cfg.fit.grip_tolerance, "changed": capped}
    out.mkdir(parents=True, exist_ok=True)
    noise = sensor_noise(data.segments)
    trusted = trusted_speed(best.val["regimes_1s"])
    save_surrogate(out / SURROGATE_FILE, best.model, car, data.track, delay_steps=delay, dt=data.control_period,
                   game_dt=data.game_dt, spread=best.spread, residual=best.residual, provenance=provenance,
                   sensor_noise=noise, trusted_speed=trusted)
    (out / CAR_FILE).write_text(json.dumps(car_params_to_dict(car), indent=1) + "\n")
    report = {
        "chosen": result.chosen,
        "fit_minutes": result.minutes,
        "delay_scores": {str(k): v for k, v in result.delay_scores.items()},
        "delay_band_scores": {str(k): v for k, v in result.delay_band_scores.items()},
        "delay_dynamic_scores": {str(k): v for k, v in result.delay_dynamic_scores.items()},
        "servo": result.servo,
        "delay_control_steps": delay,
        "control_period_s": data.control_period,
        "models": {name: {"model": f.model, "delay_frames": f.delay, "residual": f.residual is not None,
                          "train_loss": f.train_loss, "seconds": f.seconds, "validation": f.val,
                          "car": car_params_to_dict(f.car),
                          "fitted": list(f.fitted), "spread": f.spread}
                   for name, f in result.fits.items()},
        "envelope": data.envelope(),
        "trusted_speed_mps": trusted,
        "least_grip": {k: list(v) for k, v in capped.items()},
        "sensor_noise": noise,
        "provenance": provenance,
    }
    (out / REPORT_JSON).write_text(json.dumps(report, indent=1) + "\n")
    text = report_text(result, data, cap)
    if noise:
        text += "\n" + format_sensor_noise(noise)
    if capped:
        text += (f"\nwritten for training with the least grip that fits within {100 * cfg.fit.grip_tolerance:g}%: mu "
                 f"{capped['mu'][0]:.4g} -> {capped['mu'][1]:.4g} (score 1 s ahead {capped['score'][0]:.3f} -> "
                 f"{capped['score'][1]:.3f})")
    (out / REPORT_TXT).write_text(text + "\n")
    plot_fit(data, result, out)
    print(text)
    v = best.val
    line = (f"model={result.chosen.replace(' ', '_')} pos_err_1s_median_m={v['pos_err_1s_median']:.3f} "
            f"speed_err_1s_median_mps={v['speed_err_1s_median']:.3f} yaw_err_1s_median_rad={v['yaw_err_1s_median']:.4f} "
            f"fit_minutes={(time.monotonic() - t0) / 60.0:.2f}")
    return {"out": str(out), "line": line, "report": report}


def report_text(result: F.FitResult, data: FitData, cap: float | None) -> str:
    """The report's text; ``cap``: the speed cap found in the recordings (``fit.held_top_speed``), or None."""
    rows = [f"{'model':<20} {'delay':>5} " + " ".join(f"{'pos ' + str(h) + 's':>9} {'spd ' + str(h) + 's':>9} {'yaw ' + str(h) + 's':>9}"
                                                   for h in F.REPORT_HORIZONS_S) + f" {'score':>6} {'fit s':>6}"]
    for name, f in result.fits.items():
        cells = " ".join(f"{f.val[f'pos_err_{h:g}s_median']:9.3f} {f.val[f'speed_err_{h:g}s_median']:9.3f} "
                         f"{f.val[f'yaw_err_{h:g}s_median']:9.4f}" for h in F.REPORT_HORIZONS_S)
        mark = " <- chosen" if name == result.chosen else ""
        rows.append(f"{name:<20} {f.delay:>5} {cells} {f.val['score']:6.2f} {f.seconds:6.0f}{mark}")
    best = result.best
    rows.append(f"median open-loop errors on {best.val['windows']} held-out windows (m, m/s, rad); delay in frames "
                f"of {data.dt:.3f} s; chosen by the score: position plus speed error 1 s ahead over 0.5 each, "
                "averaged over the speed bands")
    if result.delay_dynamic_scores:
        rows.append("input delay: the kinematic model's score at each delay over all held-out windows "
                    + ", ".join(f"{d}: {v:.2f}" for d, v in result.delay_scores.items())
                    + "; the dynamic model's at the first-ranked "
                    + ", ".join(f"{d}: {v:.2f}" for d, v in result.delay_dynamic_scores.items())
                    + f" -> {result.fits['dynamic'].delay} frames")
    if result.servo:
        dyn = result.fits["dynamic"].car
        rows.append(f"steering servo refitted on the windows below {result.servo['below_mps']:.0f} m/s, where the "
                    "dynamic model is within 1 m 1 s ahead: "
                    + ", ".join(f"{f} {v:.4g} -> {float(getattr(dyn, f)):.4g} {PARAM_UNITS[f]}"
                                for f, v in result.servo["before"].items()))
    rows.append(f"fitted parameters of {result.chosen} (uncertainty as a +- fraction):")
    for field in best.fitted:
        unit = PARAM_UNITS[field]
        sp = best.spread.get(field)
        rows.append(f"  {field:<20} {float(getattr(best.car, field)):12.5g} {unit:<10}"
                    + (f" +-{100 * sp:.1f}%" if sp is not None else ""))
    rows.append(f"  {'max_speed':<20} {float(F.with_speed_cap(best.car, cap).max_speed):12.5g} {'m/s':<10} "
                + ("held on the throttle in the recordings: the game's speed cap, set on the car written for "
                   "training" if cap is not None else "(none: no recorded speed was held on the throttle)"))
    rows.append(format_regime_errors(best.val["regimes_1s"], 1.0))
    trusted = trusted_speed(best.val["regimes_1s"])
    bound = f"max({TRUST_FLOOR_M:g} m, {100 * TRUST_FRACTION:g}% of the distance)"
    rows.append(f"trusted up to {trusted:.0f} m/s (each speed band from rest within {bound} 1 s ahead): "
                f"train_crossq.py and drive_baseline.py default to a limiter at {default_speed_limit(trusted):.0f} m/s, "
                f"a margin under it" if trusted else
                f"trusted at no speed: the slowest band is not within {bound} 1 s ahead")
    if data.stats.dropped:
        rows.append("left out: " + ", ".join(f"{k} {v}" for k, v in sorted(data.stats.dropped.items())))
    return "\n".join(rows)


def format_sensor_noise(noise: dict) -> str:
    """The telemetry noise by speed band, one row per channel (what training adds to its observations)."""
    speeds = noise[SENSOR_NOISE_SPEEDS]
    rows = ["telemetry noise (standard deviation, added to the policy's observations in training) at speed (m/s):",
            f"  {'channel':<20}" + "".join(f"{v:>8.0f}" for v in speeds)]
    units = {"speed": "m/s", "accel_long": "m/s^2", "accel_lat": "m/s^2", "yaw_rate": "rad/s"}
    for name, values in noise.items():
        if name != SENSOR_NOISE_SPEEDS:
            rows.append(f"  {name + ' (' + units.get(name, '') + ')':<20}" + "".join(f"{v:8.3g}" for v in values))
    return "\n".join(rows)


def plot_fit(data: FitData, result: F.FitResult, out: Path, n_windows: int = 4) -> None:
    """Held-out windows (spread over the validation data): recorded path and speed against every
    model's open-loop prediction; and each model's median position and speed error against horizon."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    val = data.val
    pick = np.linspace(0, len(val) - 1, n_windows).astype(int)
    w = val.take(pick)
    preds = {name: F.predict(data, w, f.model, f.delay, f.car, f.residual) for name, f in result.fits.items()}
    t = np.cumsum(w.dt, axis=1)
    fig, axes = plt.subplots(2, n_windows, figsize=(4 * n_windows, 7.5), dpi=100, squeeze=False)
    for j in range(n_windows):
        ax, axv = axes[0, j], axes[1, j]
        x0, y0 = w.init[j, 0], w.init[j, 1]
        ax.plot(np.r_[x0, w.target[j, :, 0]], np.r_[y0, w.target[j, :, 1]], "k-", lw=2, label="recorded")
        axv.plot(np.r_[0, t[j]], np.r_[np.hypot(w.init[j, 3], w.init[j, 4]), w.target[j, :, 3]], "k-", lw=2,
                 label="recorded")
        for name, p in preds.items():
            ax.plot(np.r_[x0, p[j, :, 0]], np.r_[y0, p[j, :, 1]], lw=1, label=name)
            axv.plot(np.r_[0, t[j]], np.r_[np.hypot(w.init[j, 3], w.init[j, 4]), p[j, :, 3]], lw=1, label=name)
        ax.set_aspect("equal", adjustable="datalim")
        seg = data.segments[int(val.source[pick[j]])]
        ax.set_title(f"{Path(seg.source.split(' episode')[0]).name} ep{seg.episode_key[1]} frame {int(val.start[pick[j]])}",
                     fontsize=8)
        ax.set_xlabel("x (m)")
        axv.set_xlabel("time ahead (s)")
        axv.grid(alpha=0.3)
    axes[0, 0].set_ylabel("y (m)")
    axes[1, 0].set_ylabel("speed (m/s)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"open-loop predictions on held-out episodes (chosen: {result.chosen})", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / TRAJ_PNG)
    plt.close(fig)

    fig, (ax_p, ax_v) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    horizon_t = np.arange(1, data.horizon + 1) * data.dt
    for name, f in result.fits.items():
        p = F.predict(data, val, f.model, f.delay, f.car, f.residual)
        pos, _, spd, _ = (np.asarray(e) for e in F.errors(p, val.target))
        ax_p.plot(horizon_t, np.median(pos, axis=0), label=name)
        ax_v.plot(horizon_t, np.median(spd, axis=0), label=name)
    for ax, label in ((ax_p, "median position error (m)"), (ax_v, "median speed error (m/s)")):
        ax.set_xlabel("horizon (s)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.axhline(0.5, color="0.5", ls="--", lw=0.8)
    ax_p.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / ERRORS_PNG)
    plt.close(fig)


def main(argv=None) -> int:
    cfg = parse_args(argv)
    try:
        result = run(cfg)
    except FitDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {result['out']}/{SURROGATE_FILE}, {CAR_FILE}, {REPORT_JSON}, {REPORT_TXT}, {TRAJ_PNG}, {ERRORS_PNG}")
    print(result["line"])
    return 0
