"""Record telemetry and actions from a game, for fitting the surrogate car to it.

A driver goes round the game's track over the bridge (protocol v1) and every frame it sees, and
every action it sends, is written with bridge.recorder into a run directory (telemetry.ndjson,
meta.json, track.json, summary.json) that the surrogate fit reads (bridge.recorder.read_run).

Drivers (--policy):
  baseline  the classical driver (pure pursuit on the reference line + the reference speed
            profile) with exploration noise on steering and on the pedal (throttle - brake):
            --noise ou (Ornstein-Uhlenbeck, smooth, the default), gaussian (white) or none, of
            standard deviation --noise-scale. Noise makes the fit see the car away from the line
            and off its speed profile, not only the baseline's own narrow behaviour.
  random    uniform random steering and pedal every control step (pedal biased forwards so the
            car moves); for a first look at a game, not for a good fit.

The track is the one the game serves (hello says "track": true), or --track FILE (TUM CSV of the
centre line in the telemetry's world frame). Episodes end as in the surrogate (off track, stuck,
wrong way, --steps per episode) or when the game ends them.

Examples:
  python -m bridge.games.carracing --mode lockstep &          # the reference game
  python scripts/record_telemetry.py --dt 0.04 --episodes 5 --steps 2500 --same-seed --seed 0 \\
      --run-dir runs/rec-carracing
  python scripts/record_telemetry.py --mode realtime --address tcp://127.0.0.1:5555 \\
      --telemetry tcp://127.0.0.1:5556 --actions tcp://127.0.0.1:5557 --episodes 3
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from bridge import protocol as P
from bridge.client import BridgeUnavailable
from bridge.recorder import Recorder
from bridge.sdk import DEFAULT_LOCKSTEP_ADDRESS, DEFAULT_PUB_ADDRESS, DEFAULT_PULL_ADDRESS
from racerl_jax.real_env import RealEnvConfig, RealGameEnv, telemetry_from
from surrogate.baseline import BaselineParams, baseline_action, baseline_params_for
from surrogate.car import CarParams, car_params_from_dict
from surrogate.env import EnvConfig, env_action, game_controls
from surrogate.track import project_global


@dataclasses.dataclass
class Config:
    address: str = DEFAULT_LOCKSTEP_ADDRESS
    mode: str = "lockstep"
    telemetry: str = DEFAULT_PUB_ADDRESS
    actions: str = DEFAULT_PULL_ADDRESS
    policy: str = "baseline"
    noise: str = "ou"
    noise_scale: float = 0.15
    noise_theta: float = 2.0  # 1/s: how fast the OU noise reverts to zero (correlation time 1/theta)
    episodes: int = 5
    steps: int = 2000  # per episode
    dt: float = EnvConfig.dt
    run_dir: str = ""
    track: str | None = None
    car: str | None = None
    baseline_param: tuple[str, ...] = ()  # NAME=VALUE overrides of surrogate.baseline.BaselineParams
    seed: int = 0
    same_seed: bool = False
    quiet: bool = False

    def __post_init__(self):
        checks = [(self.policy in ("baseline", "random"), f"--policy {self.policy!r}: expected baseline or random"),
                  (self.noise in ("ou", "gaussian", "none"), f"--noise {self.noise!r}: expected ou, gaussian or none"),
                  (self.noise_scale >= 0, f"--noise-scale {self.noise_scale}: expected >= 0"),
                  (self.noise_theta > 0, f"--noise-theta {self.noise_theta}: expected > 0 (1/s)"),
                  (self.episodes >= 1, f"--episodes {self.episodes}: expected >= 1"),
                  (self.steps >= 1, f"--steps {self.steps}: expected >= 1"),
                  ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        self.baseline_overrides()  # refuse a bad --baseline-param before connecting to anything

    def baseline_overrides(self) -> dict[str, float]:
        names = [f.name for f in dataclasses.fields(BaselineParams)]
        out = {}
        for item in self.baseline_param:
            name, sep, value = item.partition("=")
            if not sep or name not in names:
                raise ValueError(f"--baseline-param {item!r}: expected NAME=VALUE with NAME one of {', '.join(names)}")
            try:
                out[name] = float(value)
            except ValueError:
                raise ValueError(f"--baseline-param {item!r}: {value!r} is not a number") from None
        return out


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def parse(argv=None) -> Config:
    d = Config()
    p = argparse.ArgumentParser(prog="record_telemetry.py", description=__doc__, formatter_class=_Formatter)
    p.add_argument("--address", default=d.address,
                   help="lockstep REP address; in real time the plugin's hello/track REP ('' if it has none)")
    p.add_argument("--mode", default=d.mode, choices=["lockstep", "realtime"], help="how the game is driven")
    p.add_argument("--telemetry", default=d.telemetry, help="real time: the plugin's telemetry PUB address")
    p.add_argument("--actions", default=d.actions, help="real time: the plugin's action PULL address")
    p.add_argument("--policy", default=d.policy, choices=["baseline", "random"], help="the driver")
    p.add_argument("--noise", default=d.noise, choices=["ou", "gaussian", "none"], help="exploration noise (baseline)")
    p.add_argument("--noise-scale", type=float, default=d.noise_scale,
                   help="standard deviation of the noise on steer and on the pedal (throttle - brake)")
    p.add_argument("--noise-theta", type=float, default=d.noise_theta, help="OU mean-reversion rate, 1/s")
    p.add_argument("--episodes", type=int, default=d.episodes, help="episodes to record")
    p.add_argument("--steps", type=int, default=d.steps, help="control steps per episode at most")
    p.add_argument("--dt", type=float, default=d.dt, help="control period, s; in lockstep rounded to whole game ticks (a 50 Hz game: 0.04 or 0.06)")
    p.add_argument("--run-dir", default=d.run_dir, help="output directory; empty: runs/telemetry-<date>-<time>")
    p.add_argument("--track", default=d.track, metavar="FILE",
                   help="track file (TUM CSV) when the game serves no track; overrides a served one")
    p.add_argument("--car", default=d.car, metavar="JSON",
                   help="car parameters (surrogate CarParams fields) for the reference line and the baseline")
    p.add_argument("--baseline-param", action="append", default=[], metavar="NAME=VALUE",
                   help="override a baseline driver setting (surrogate.baseline.BaselineParams), repeatable; e.g. "
                        "speed_margin=0.85, or yaw_rate_gain=0 for a game whose yaw rate follows the steering at "
                        "once (the kinematic example game)")
    p.add_argument("--seed", type=int, default=d.seed, help="episode i is reset with seed SEED + i; also the noise")
    p.add_argument("--same-seed", action="store_true",
                   help="reset every episode with SEED, for games whose seed picks the track: CarRacing serves "
                        "the track of seed 0, so record it with --same-seed --seed 0")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    a.baseline_param = tuple(a.baseline_param)
    return Config(**{k.replace("-", "_"): v for k, v in vars(a).items()})


class Noise:
    """Exploration noise on (steer, pedal): Ornstein-Uhlenbeck (stationary std = scale) or white."""

    def __init__(self, kind: str, scale: float, theta: float, dt: float, rng: np.random.Generator):
        self.kind, self.scale, self.theta, self.dt, self.rng = kind, scale, theta, dt, rng
        self.x = np.zeros(2)

    def reset(self) -> None:
        self.x = np.zeros(2)

    def __call__(self) -> np.ndarray:
        if self.kind == "none" or self.scale == 0:
            return np.zeros(2)
        if self.kind == "gaussian":
            return self.scale * self.rng.standard_normal(2)
        # exact OU discretisation: stationary standard deviation = scale for any dt
        a = math.exp(-self.theta * self.dt)
        self.x = a * self.x + self.scale * math.sqrt(1 - a * a) * self.rng.standard_normal(2)
        return self.x.copy()


def run(cfg: Config) -> dict:
    """Record ``cfg.episodes`` episodes; returns the summary (also written to summary.json)."""
    car = CarParams()
    if cfg.car:
        car = car_params_from_dict(json.loads(Path(cfg.car).read_text()))
    env_cfg = EnvConfig(dt=cfg.dt, max_episode_steps=cfg.steps)
    rcfg = RealEnvConfig(mode=cfg.mode, address=cfg.address, telemetry_address=cfg.telemetry,
                         action_address=cfg.actions, track_file=cfg.track, env=env_cfg, car=car)
    run_dir = Path(cfg.run_dir or f"runs/telemetry-{time.strftime('%Y%m%d-%H%M%S')}")
    rng = np.random.default_rng(cfg.seed)
    bp = dataclasses.replace(baseline_params_for(car), **cfg.baseline_overrides())
    drive = jax.jit(baseline_action)
    noise = Noise(cfg.noise, cfg.noise_scale, cfg.noise_theta, cfg.dt, rng)

    env = RealGameEnv(rcfg)
    rec = None
    frames = episodes = laps = steps_total = 0
    ends: dict[str, int] = {}
    derived: set[str] = set()
    bar = tqdm(total=cfg.episodes * cfg.steps, unit="step", disable=cfg.quiet, file=sys.stderr)
    t0 = time.monotonic()
    try:
        # Compile the driver before the first episode: in real time a compile between the
        # observation and the action would make the frame stale and the watchdog would end the episode.
        tr = env.track
        warm = telemetry_from({"x": tr.x[0], "y": tr.y[0], "yaw": tr.heading[0], "speed": 0.0, "accel_long": 0.0,
                               "accel_lat": 0.0, "yaw_rate": 0.0})
        jax.block_until_ready(drive(tr, project_global(tr, warm.x, warm.y, warm.yaw), warm, bp))
        source = f"{cfg.mode}:{cfg.address if cfg.mode == 'lockstep' else cfg.telemetry}"
        meta = {"recorded_by": "scripts/record_telemetry.py", "config": dataclasses.asdict(cfg),
                "hello": env.hello, "control_period_s": cfg.dt, "ticks_per_step": env.ticks}
        rec = Recorder(run_dir, source=source, track=env.track_reply(), meta=meta)
        for ep in range(cfg.episodes):
            seed = cfg.seed if cfg.same_seed else cfg.seed + ep
            _, info = env.reset(seed=seed)
            rec.frame(env.last_frame)
            frames, last_seq = frames + 1, env.last_frame["seq"]
            episodes += 1
            noise.reset()
            ep_laps = 0
            derived |= set(info["derived"])
            # the env ends every episode by --steps at the latest (its time limit)
            for i in range(cfg.steps):
                if cfg.policy == "baseline":
                    a = np.asarray(drive(env.track, env.track_pos, env.last_telemetry, bp))
                    n = noise()
                    act = game_controls(env_action(a, "combined", xp=np) + n, "combined", xp=np)
                else:
                    act = game_controls(np.array([rng.uniform(-1, 1), rng.uniform(-0.5, 1.0)]), "combined", xp=np)
                _, _, term, trunc, info = env.step(act)
                steps_total += 1
                bar.update(1)
                rec.action(dict(zip(P.CONTROLS, map(float, info["applied_action"]))), seq=steps_total)
                f = env.last_frame  # unchanged when the step ended on a fault (nothing new to record)
                if f["seq"] != last_seq:
                    rec.frame(f)
                    frames, last_seq = frames + 1, f["seq"]
                ep_laps += int(bool(info.get("lap_completed")))
                derived |= set(info.get("derived", ()))
                if term or trunc:
                    reason = info.get("end_reason") or "done"
                    ends[reason] = ends.get(reason, 0) + 1
                    bar.update(cfg.steps - i - 1)
                    break
            # the game's own count where it keeps one (CarRacing ends the episode on the line itself)
            laps += max(ep_laps, env.last_frame.get("lap") or 0)
    finally:
        bar.close()
        if rec is not None:
            for _ in range(env.client_stats.invalid):
                rec.reject("invalid telemetry frame or reply dropped by the bridge client")
            rec.close()
        env.close()
    summary = {"run_dir": str(run_dir), "frames": frames, "episodes": episodes, "steps": steps_total,
               "rejected_frames": rec.rejected, "laps": laps, "episode_ends": ends,
               "derived_fields": sorted(derived), "wall_s": round(time.monotonic() - t0, 2)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv=None) -> int:
    cfg = parse(argv)
    try:
        s = run(cfg)
    except BridgeUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    ends = ", ".join(f"{k} {v}" for k, v in sorted(s["episode_ends"].items()))
    print(f"recorded {s['frames']} frames in {s['episodes']} episodes ({s['steps']} steps, {s['wall_s']} s) into "
          f"{s['run_dir']}; rejected frames {s['rejected_frames']}; laps completed {s['laps']}; episode ends: {ends}"
          + (f"; derived fields: {', '.join(s['derived_fields'])}" if s["derived_fields"] else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
