"""Record telemetry and actions from a game, for fitting the surrogate car to it.

A driver goes round the game's track over the bridge (protocol v1) and every frame it sees, and
every action it sends, is written with bridge.recorder into a run directory (telemetry.ndjson,
meta.json, track.json, summary.json) that the surrogate fit reads (bridge.recorder.read_run).

Drivers (--policy):
  probe     (the default) needs no car model: it follows the track's centre line, starts slow and
            raises its pace while the car stays on the track, backs off when it slides, runs towards
            an edge or leaves, and between stretches of steady driving runs manoeuvres that excite
            what the fit needs: full-throttle runs from rest and from low speed, braking from speed
            at several levels (full included), coasting, steering steps and sweeps at several speeds,
            amplitudes and frequencies; steady cornering at rising lateral acceleration is the pace
            itself (racerl_jax/probe.py). Use it for a game whose car you do not know yet.
  baseline  the classical driver (pure pursuit on the reference line + the reference speed
            profile, planned for the car of --car, the project's default car without it) with
            exploration noise on steering and on the pedal (throttle - brake): --noise ou
            (Ornstein-Uhlenbeck, smooth, the default), gaussian (white) or none, of standard
            deviation --noise-scale. For a car you know (or have fitted): a car weaker than the one
            it plans for leaves the track.
  agent     a trained driver (--agent RUN_DIR: a run dir, its best_agent/ or a checkpoint), with
            its run's observation settings, control period (--dt is ignored) and pedals, plus the
            exploration noise of --noise (as the baseline; --noise none for the agent alone). It
            goes where the driver trained on a fit goes: record it on the game and fit again
            (step 4 of the loop below).
  random    uniform random steering and pedal every control step (pedal biased forwards so the
            car moves); for a first look at a game, not for a good fit.

How long: --minutes M records M minutes of GAME time (the sum of the game's clock over the
recorded episodes; with a lockstep game this is what the fit gets, however fast the machine runs
it; in real time it is about the wall time). As a guard against a game whose clock stalls, the
run also stops after 1.5 M minutes' worth of control steps. With --minutes, --episodes and --steps
are optional limits (default: none); without it, --episodes (default 5) of --steps (default 2000)
control steps each. Episodes end as in the surrogate (off track, stuck 3 s below 1 m/s, wrong way,
--steps) or when the game ends them; the next one starts with a reset.

At the end it prints, and writes to summary.json ("envelope"), how much of the car's envelope the
recording covers: speed (range, histogram in 2 m/s bins, share of the bins from rest to the top
speed with at least 0.5 s of data), longitudinal acceleration (braking and accelerating), lateral
acceleration, yaw rate, steering, and the time shares of the pedal levels (full throttle >= 0.95;
coast: throttle and brake both <= 0.05, which on a car as strong as CarRacing's includes much of
the steady driving; brake light < 0.5 <= hard < 0.9 <= full) and of steering left and right. The
progress bar shows the ranges as it goes, and with the probe its pace (allowed lateral
acceleration m/s^2 / speed cap m/s); summary.json also holds the probe's final pace, the gains it
measured, its manoeuvres (done, aborted, skipped) and its back-offs (slide, edge, off_track).

The track is the one the game serves (hello says "track": true), or --track FILE (TUM CSV of the
centre line in the telemetry's world frame).

The loop for a game whose car nobody knows:
  1. record with the probe:        record_telemetry.py --policy probe --minutes 10 --run-dir runs/rec-game
  2. fit the surrogate to it:      train_surrogate.py runs/rec-game --out runs/fit-game
     (the fit writes the fitted car, a JSON of surrogate CarParams fields, as runs/fit-game/car.json)
  3. record again, faster and closer to how a trained driver drives, with the baseline planned for
     the fitted car:               record_telemetry.py --policy baseline --car runs/fit-game/car.json \\
                                       --minutes 10 --run-dir runs/rec-game-2
     and fit both recordings together (train_surrogate.py runs/rec-game runs/rec-game-2 ...).
  4. train on the fit (train_crossq.py --backend surrogate --surrogate runs/fit-game/surrogate.json),
     record that driver on the game where it differs from the fit:
                                   record_telemetry.py --policy agent --agent runs/crossq-... \
                                       --minutes 5 --run-dir runs/rec-game-agent
     and fit all recordings together again, then train on the new fit.
--car takes a JSON object of surrogate.car.CarParams fields (any subset; the rest keep the
defaults); the probe ignores it (it plans nothing for a car).

Examples:
  python -m bridge.games.carracing --mode lockstep &          # the reference game
  python scripts/record_telemetry.py --dt 0.04 --minutes 10 --same-seed --seed 0 --run-dir runs/rec-carracing
  python scripts/record_telemetry.py --policy baseline --dt 0.04 --episodes 5 --steps 2500 --same-seed --seed 0
  python scripts/record_telemetry.py --mode realtime --address tcp://127.0.0.1:5555 \\
      --telemetry tcp://127.0.0.1:5556 --actions tcp://127.0.0.1:5557 --minutes 5
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
from racerl_jax.agent_driver import AgentDriver
from racerl_jax.probe import ProbeConfig, ProbePolicy
from racerl_jax.saved_agent import AgentError
from racerl_jax.config_io import name_value_overrides
from racerl_jax.envelope import Envelope, envelope_table
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
    policy: str = "probe"
    agent: str = ""  # --policy agent: the trained driver (a run dir, its best_agent/ or a checkpoint)
    noise: str = "ou"
    noise_scale: float = 0.15
    noise_theta: float = 2.0  # 1/s: how fast the OU noise reverts to zero (correlation time 1/theta)
    minutes: float | None = None  # of game time; None: by episodes
    episodes: int | None = None  # None: 5 without --minutes, no limit with it
    steps: int | None = None  # per episode; None: 2000 without --minutes, no limit with it
    dt: float = EnvConfig.dt
    run_dir: str = ""
    track: str | None = None
    car: str | None = None
    baseline_param: tuple[str, ...] = ()  # NAME=VALUE overrides of surrogate.baseline.BaselineParams
    probe_param: tuple[str, ...] = ()  # NAME=VALUE overrides of racerl_jax.probe.ProbeConfig
    seed: int = 0
    same_seed: bool = False
    quiet: bool = False

    def __post_init__(self):
        checks = [(self.policy in POLICIES, f"--policy {self.policy!r}: expected one of {', '.join(POLICIES)}"),
                  (self.noise in ("ou", "gaussian", "none"), f"--noise {self.noise!r}: expected ou, gaussian or none"),
                  (self.noise_scale >= 0, f"--noise-scale {self.noise_scale}: expected >= 0"),
                  (self.noise_theta > 0, f"--noise-theta {self.noise_theta}: expected > 0 (1/s)"),
                  (self.minutes is None or (math.isfinite(self.minutes) and self.minutes > 0),
                   f"--minutes {self.minutes}: expected a number of minutes > 0 (of game time)"),
                  (self.episodes is None or self.episodes >= 1, f"--episodes {self.episodes}: expected >= 1"),
                  (self.steps is None or self.steps >= 1, f"--steps {self.steps}: expected >= 1"),
                  (0 < self.dt <= 0.2, f"--dt {self.dt}: expected a control period in (0, 0.2] s"),
                  (self.policy != "agent" or bool(self.agent),
                   "--policy agent needs --agent RUN_DIR (a training run, its best_agent/ or a checkpoint)"),
                  (self.policy == "agent" or not self.agent, f"--agent is for --policy agent (not {self.policy})"),
                  ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        self.baseline_overrides()  # refuse a bad --baseline-param before connecting to anything
        self.probe_config(self.dt)  # ... and a bad --probe-param

    @property
    def episode_limit(self) -> int | None:
        """Episodes to record at most (None: until --minutes is spent)."""
        return self.episodes if self.episodes is not None else (None if self.minutes else 5)

    @property
    def step_limit(self) -> int | None:
        """Control steps per episode at most (None: no limit but --minutes)."""
        return self.steps if self.steps is not None else (None if self.minutes else 2000)

    def baseline_overrides(self) -> dict[str, float]:
        return _overrides("--baseline-param", self.baseline_param, BaselineParams)

    def probe_config(self, dt: float) -> ProbeConfig:
        """The probe's settings at control period dt, with the --probe-param overrides."""
        try:
            return ProbeConfig(**{"dt": dt, "seed": self.seed, **_overrides("--probe-param", self.probe_param, ProbeConfig)})
        except ValueError as e:
            if str(e).startswith("--probe-param"):
                raise
            raise ValueError(f"--probe-param {' '.join(self.probe_param)}: {e}") from None


def _overrides(option: str, items: tuple[str, ...], cls) -> dict[str, float]:
    """NAME=VALUE items as {name: number}, NAME a numeric field of the dataclass cls."""
    return name_value_overrides(option, items, cls, exclude=("dt", "seed", "cruise_s"))


POLICIES = ("probe", "baseline", "agent", "random")


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
    p.add_argument("--policy", default=d.policy, choices=POLICIES,
                   help="the driver: probe needs no car model (for a car nobody knows); baseline plans for --car; "
                        "agent is a trained driver (--agent)")
    p.add_argument("--agent", default=d.agent, metavar="RUN_DIR",
                   help="--policy agent: a training run dir, its best_agent/ or one of its checkpoints")
    p.add_argument("--noise", default=d.noise, choices=["ou", "gaussian", "none"], help="exploration noise (baseline, agent)")
    p.add_argument("--noise-scale", type=float, default=d.noise_scale,
                   help="standard deviation of the noise on steer and on the pedal (throttle - brake)")
    p.add_argument("--noise-theta", type=float, default=d.noise_theta, help="OU mean-reversion rate, 1/s")
    p.add_argument("--minutes", type=float, default=d.minutes,
                   help="record this many minutes of game time (then --episodes and --steps are optional limits)")
    p.add_argument("--episodes", type=int, default=d.episodes,
                   help="episodes to record at most (default: 5 without --minutes, no limit with it)")
    p.add_argument("--steps", type=int, default=d.steps,
                   help="control steps per episode at most (default: 2000 without --minutes, no limit with it)")
    p.add_argument("--dt", type=float, default=d.dt, help="control period, s; in lockstep rounded to whole game ticks (a 50 Hz game: 0.04 or 0.06)")
    p.add_argument("--run-dir", default=d.run_dir, help="output directory; empty: runs/telemetry-<date>-<time>")
    p.add_argument("--track", default=d.track, metavar="FILE",
                   help="track file (TUM CSV) when the game serves no track; overrides a served one")
    p.add_argument("--car", default=d.car, metavar="JSON",
                   help="car parameters (a JSON object of surrogate CarParams fields, e.g. the car.json a fit "
                        "writes) for the reference line and the baseline; the probe needs none")
    p.add_argument("--baseline-param", action="append", default=[], metavar="NAME=VALUE",
                   help="override a baseline driver setting (surrogate.baseline.BaselineParams), repeatable; e.g. "
                        "speed_margin=0.85, or yaw_rate_gain=0 for a game whose yaw rate follows the steering at "
                        "once (the kinematic example game)")
    p.add_argument("--probe-param", action="append", default=[], metavar="NAME=VALUE",
                   help="override a probe setting (racerl_jax.probe.ProbeConfig), repeatable; e.g. "
                        "max_lat_accel=60 to let the pace rise further on a car with a lot of grip, start_speed=3 "
                        "for a very slow car")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="episode i is reset with seed SEED + i; also the noise and the probe's pauses")
    p.add_argument("--same-seed", action="store_true",
                   help="reset every episode with SEED, for games whose seed picks the track: CarRacing serves "
                        "the track of seed 0, so record it with --same-seed --seed 0")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    a.baseline_param = tuple(a.baseline_param)
    a.probe_param = tuple(a.probe_param)
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


# ----------------------------------------------------------------------------- recording


def run(cfg: Config) -> dict:
    """Record until ``cfg.minutes`` of game time or ``cfg.episode_limit`` episodes; returns the
    summary (also written to summary.json)."""
    driver = AgentDriver.load(cfg.agent) if cfg.policy == "agent" else None
    car = driver.car if driver is not None else CarParams()
    if cfg.car:
        car = car_params_from_dict(json.loads(Path(cfg.car).read_text()))
    # the agent acts at the control period it trained at
    dt = driver.env_config.dt if driver is not None else cfg.dt
    budget_s = None if cfg.minutes is None else 60.0 * cfg.minutes
    # the guard against a game whose clock stalls: 1.5 x the budget's worth of control steps
    max_steps = None if budget_s is None else int(math.ceil(1.5 * budget_s / dt))
    step_limit = cfg.step_limit
    env_cfg = dataclasses.replace(driver.env_config if driver is not None else EnvConfig(dt=dt),
                                  max_episode_steps=step_limit if step_limit is not None else max_steps + 1)
    rcfg = RealEnvConfig(mode=cfg.mode, address=cfg.address, telemetry_address=cfg.telemetry,
                         action_address=cfg.actions, track_file=cfg.track, env=env_cfg, car=car)
    run_dir = Path(cfg.run_dir or f"runs/telemetry-{time.strftime('%Y%m%d-%H%M%S')}")
    rng = np.random.default_rng(cfg.seed)
    bp = dataclasses.replace(baseline_params_for(car), **cfg.baseline_overrides())
    drive = jax.jit(baseline_action)
    noise = Noise(cfg.noise, cfg.noise_scale, cfg.noise_theta, dt, rng)

    env = RealGameEnv(rcfg)
    period = env.ticks * env.hello["dt"] if cfg.mode == "lockstep" else dt
    agent_act = driver.policy(env.action_space.low, env.action_space.high, env.observation_space.shape) \
        if driver is not None else None
    probe = ProbePolicy(env.track, cfg.probe_config(period)) if cfg.policy == "probe" else None
    envelope = Envelope()
    rec = None
    frames = episodes = laps = steps_total = 0
    game_s = 0.0
    ends: dict[str, int] = {}
    derived: set[str] = set()
    if budget_s is not None:
        bar = tqdm(total=round(budget_s, 1), unit="s", desc="game time", disable=cfg.quiet, file=sys.stderr,
                   bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]")
    else:
        bar = tqdm(total=cfg.episode_limit * step_limit, unit="step", disable=cfg.quiet, file=sys.stderr)
    t0 = time.monotonic()

    def spent() -> bool:
        return budget_s is not None and (game_s >= budget_s - 1e-9 or steps_total >= max_steps)

    try:
        if cfg.policy == "baseline":
            # Compile the driver before the first episode: in real time a compile between the
            # observation and the action would make the frame stale and the watchdog would end the episode.
            tr = env.track
            warm = telemetry_from({"x": tr.x[0], "y": tr.y[0], "yaw": tr.heading[0], "speed": 0.0,
                                   "accel_long": 0.0, "accel_lat": 0.0, "yaw_rate": 0.0})
            jax.block_until_ready(drive(tr, project_global(tr, warm.x, warm.y, warm.yaw), warm, bp))
        source = f"{cfg.mode}:{cfg.address if cfg.mode == 'lockstep' else cfg.telemetry}"
        meta = {"recorded_by": "scripts/record_telemetry.py", "config": dataclasses.asdict(cfg),
                "hello": env.hello, "control_period_s": dt, "ticks_per_step": env.ticks}
        if driver is not None:
            meta["agent"] = {"checkpoint": str(driver.saved.checkpoint), "env_steps": driver.saved.step,
                             "source": driver.saved.source}
        rec = Recorder(run_dir, source=source, track=env.track_reply(), meta=meta)
        ep = 0
        while (cfg.episode_limit is None or ep < cfg.episode_limit) and not spent():
            seed = cfg.seed if cfg.same_seed else cfg.seed + ep
            ep += 1
            obs, info = env.reset(seed=seed)
            rec.frame(env.last_frame)
            frames, last_seq, last_t = frames + 1, env.last_frame["seq"], env.last_frame["t"]
            episodes += 1
            noise.reset()
            if probe is not None:
                probe.start_episode()
            ep_laps = i = 0
            derived |= set(info["derived"])
            # the env ends every episode by --steps at the latest (its time limit)
            while True:
                if cfg.policy == "probe":
                    act = probe.act(env.track_pos, env.last_telemetry)
                elif cfg.policy == "baseline":
                    a = np.asarray(drive(env.track, env.track_pos, env.last_telemetry, bp))
                    n = noise()
                    act = game_controls(env_action(a, "combined", xp=np) + n, "combined", xp=np)
                elif cfg.policy == "agent":
                    act = driver.with_noise(agent_act(obs), noise())
                else:
                    act = game_controls(np.array([rng.uniform(-1, 1), rng.uniform(-0.5, 1.0)]), "combined", xp=np)
                obs, _, term, trunc, info = env.step(act)
                steps_total += 1
                i += 1
                applied = info["applied_action"]
                rec.action(dict(zip(P.CONTROLS, map(float, applied))), seq=steps_total)
                f = env.last_frame  # unchanged when the step ended on a fault (nothing new to record)
                if f["seq"] != last_seq:
                    rec.frame(f)
                    frames, last_seq = frames + 1, f["seq"]
                    dt_game = max(f["t"] - last_t, 0.0)
                    last_t = f["t"]
                    game_s += dt_game
                    envelope.add(env.last_telemetry, applied, dt_game)
                    if budget_s is not None:
                        bar.update(min(dt_game, max(budget_s - bar.n, 0.0)))
                if budget_s is None:
                    bar.update(1)
                if steps_total % 25 == 0 and not cfg.quiet:
                    pf = envelope.postfix()
                    if probe is not None:
                        pf.update(pace=f"{probe.lat_accel:.1f}/{probe.speed_cap:.0f}")
                    bar.set_postfix(pf, refresh=False)
                ep_laps += int(bool(info.get("lap_completed")))
                derived |= set(info.get("derived", ()))
                if term or trunc:
                    reason = info.get("end_reason") or "done"
                    ends[reason] = ends.get(reason, 0) + 1
                    if probe is not None:
                        probe.end_episode(reason)
                    if budget_s is None:
                        bar.update(step_limit - i)
                    break
                if spent():  # the recording time is up in the middle of an episode
                    ends["recording_time"] = ends.get("recording_time", 0) + 1
                    if probe is not None:
                        probe.end_episode("recording_time")
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
    summary = {"run_dir": str(run_dir), "policy": cfg.policy, "frames": frames, "episodes": episodes,
               "steps": steps_total, "game_s": round(game_s, 2), "rejected_frames": rec.rejected, "laps": laps,
               "episode_ends": ends, "derived_fields": sorted(derived), "wall_s": round(time.monotonic() - t0, 2),
               "envelope": envelope.summary()}
    if probe is not None:
        summary["probe"] = probe.status()
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv=None) -> int:
    try:
        cfg = parse(argv)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        s = run(cfg)
    except BridgeUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except AgentError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    ends = ", ".join(f"{k} {v}" for k, v in sorted(s["episode_ends"].items()))
    print(f"recorded {s['frames']} frames in {s['episodes']} episodes ({s['steps']} steps, {s['game_s']} s of game "
          f"time, {s['wall_s']} s) into {s['run_dir']}; rejected frames {s['rejected_frames']}; laps completed "
          f"{s['laps']}; episode ends: {ends}"
          + (f"; derived fields: {', '.join(s['derived_fields'])}" if s["derived_fields"] else ""))
    print(envelope_table(s["envelope"]))
    if "probe" in s:
        pr = s["probe"]
        man = ", ".join(f"{k} {v['done']}" + (f" (+{v['aborted']} aborted)" if v["aborted"] else "")
                        for k, v in pr["manoeuvres"].items())
        print(f"probe: pace {pr['lat_accel_mps2']:.1f} m/s^2 lateral, cap {pr['speed_cap_mps']:.1f} m/s, braking "
              f"planned at {pr['planned_decel_mps2']:.1f} m/s^2; manoeuvres done: {man}; back-offs: "
              + ", ".join(f"{k} {v}" for k, v in pr["back_offs"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
