"""``train_crossq.py``'s command line: ``TrainConfig``'s fields as options (a setting is written once,
in the dataclass; here only how the command line spells it)."""
from __future__ import annotations

import argparse
import dataclasses
from typing import Sequence

from racerl_jax.config_io import name_value_overrides
from racerl_jax.learned_line import parse_reference_line
from racerl_jax.spot import EXIT_INTERRUPTED
from racerl_jax.train_config import DEFAULT_REWARD, FITTED_EDGE_MARGIN, FITTED_GAME_REWARD, MATMUL_PRECISIONS, TrainConfig
from surrogate.car import MODELS
from surrogate.env import PEDALS
from surrogate.reward import RewardWeights
from surrogate.track_io import DEFAULT_TRACK


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer widths like 128,128, got {text!r}") from None
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected positive layer widths like 128,128, got {text!r}")
    return widths


def _track_list(text: str) -> tuple[str, ...]:
    """``A,B,...``: track entries (see ``TrainConfig.tracks``)."""
    entries = tuple(t.strip() for t in text.split(","))
    if not any(entries):
        raise argparse.ArgumentTypeError(f"expected comma-separated tracks like oval,technical,random:4, got {text!r}")
    return tuple(t for t in entries if t)


def _reference_line(text: str) -> str:
    try:
        parse_reference_line(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _reward_changes(text: str) -> dict[str, float]:
    """``name=value,...``, e.g. ``action_change=0.05,deviation=0``: the weights that differ from the
    default (``parse_args`` applies them over the default for what the run drives)."""
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    try:
        changes = name_value_overrides("--reward", items, RewardWeights)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    # Each term carries its sign in the reward: a negative weight would reward crashing or jerking.
    for name, v in changes.items():
        if v < 0:
            raise argparse.ArgumentTypeError(f"--reward {name}={v:g}: weights are finite and >= 0 (the reward applies "
                                             "the sign)")
    return changes


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(
        prog="train_crossq.py",
        description="Train the CrossQ driver on the surrogate racing env; the last line printed is "
        "first_clean_lap_min=... best_lap_s=... limit_s=... gap_pct=...",
    )
    p.add_argument("--backend", choices=["surrogate", "real"], default=d.backend,
                   help="surrogate: thousands of simulated cars; real: the game through the bridge")
    p.add_argument("--game-mode", choices=["lockstep", "realtime"], default=d.game_mode, help="--backend real")
    p.add_argument("--address", default=d.address, help="--backend real: the plugin's lockstep (or hello/track) address")
    p.add_argument("--telemetry-address", default=d.telemetry_address, help="--backend real, realtime: the plugin's PUB")
    p.add_argument("--action-address", default=d.action_address, help="--backend real, realtime: the plugin's PULL")
    p.add_argument("--game-seed", type=int, default=d.game_seed,
                   help="--backend real: reset every episode with this seed (-1: random; CarRacing: 0 keeps its track)")
    p.add_argument("--track", default=d.track, help=f"bundled track name or TUM-format CSV (default {DEFAULT_TRACK})")
    p.add_argument("--surrogate", default=d.surrogate, help="fitted surrogate JSON (car and track); excludes --track")
    p.add_argument("--tracks", type=_track_list, default=d.tracks, metavar="A,B,...",
                   help="train one policy on several tracks at once: bundled names, CSV files, folders (every *.csv) "
                   "and random:N (N procedural tracks drawn from --seed); excludes --track and --surrogate; every "
                   "evaluation drives each track")
    p.add_argument("--tracks-refresh-env-steps", type=int, default=d.tracks_refresh_env_steps,
                   help="with random:N in --tracks: N fresh random tracks every this many env steps (0: the same N)")
    p.add_argument("--eval-tracks", type=_track_list, default=d.eval_tracks, metavar="A,B,...",
                   help="tracks never trained on (same forms as --tracks), evaluated and reported apart as unseen")
    p.add_argument("--reference-line", type=_reference_line, default=d.reference_line, metavar="min-curvature|min-time|laps:RUN_DIR",
                   help="the reference line the observation, the baseline and the limit follow: min-curvature, "
                        "min-time (the fastest between it and the shortest path for the car under its speed "
                        "limiter; the default with --surrogate) or one learned from the clean laps of runs "
                        "(laps:RUN_DIR[,RUN_DIR...]: their best_lap.npz and evaluate.py drives; one track only)")
    p.add_argument("--model", choices=sorted(MODELS), default=None, help="car model (default dynamic)")
    p.add_argument("--num-envs", type=int, default=d.num_envs)
    p.add_argument("--budget-minutes", type=float, default=d.budget_minutes, help="wall clock of the whole command")
    p.add_argument("--total-env-steps", type=int, default=d.total_env_steps)
    p.add_argument("--run-dir", default=d.run_dir, help="default runs/crossq-<track>-<time>")
    p.add_argument("--resume", action="store_true", help="continue from the run dir's latest checkpoint")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--preset", choices=["cpu", "paper"], default=None, help="CrossQ preset (default cpu on CPU)")
    p.add_argument("--updates-per-iter", type=int, default=d.updates_per_iter)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="0: the preset's")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate, help="actor and critics; 0: the preset's")
    p.add_argument("--lr-final", type=float, default=d.lr_final,
                   help="learning rate at the end of the budget, as a fraction of --learning-rate (cosine decay; 1: constant)")
    p.add_argument("--gamma", type=float, default=d.gamma,
                   help="discount per control step; the horizon is about dt / (1 - gamma) seconds")
    p.add_argument("--entropy-per-action", type=float, default=d.entropy_per_action,
                   help="entropy per action dimension the temperature tuning holds the policy at (the paper's: -1); "
                   "lower means less exploration noise")
    p.add_argument("--entropy-per-action-final", type=float, default=d.entropy_per_action_final,
                   help="the entropy goal per action dimension at the end of the budget, reached on the learning "
                   "rate's cosine (default: --entropy-per-action throughout)")
    p.add_argument("--buffer-size", type=int, default=d.buffer_size, help="replay capacity; 0: the preset's (1M)")
    p.add_argument("--learning-starts", type=int, default=d.learning_starts)
    p.add_argument("--renorm-warmup-steps", type=int, default=d.renorm_warmup_steps,
                   help="gradient updates with plain batch norm before batch renormalisation's corrections start")
    p.add_argument("--critic-hidden", type=_widths, default=None, help="e.g. 256,256 (default: the preset's)")
    p.add_argument("--actor-hidden", type=_widths, default=None)
    p.add_argument("--episode-steps", type=int, default=d.episode_steps)
    p.add_argument("--car-spread", type=float, default=d.car_spread,
                   help="domain randomisation: every car parameter scaled by U(1-s, 1+s) per episode")
    p.add_argument("--demos", default=d.demos, metavar="baseline|TUNING_JSON",
                   help="demonstrations: the baseline driver planned for the car ('baseline') or a tuning of "
                        "drive_baseline.py --tune (its tuning.json) drives the training envs first, and "
                        "--demo-share of every batch comes from its transitions (default: none)")
    p.add_argument("--demo-env-steps", type=int, default=d.demo_env_steps,
                   help="env steps the demonstrating driver drives (over all envs)")
    p.add_argument("--demo-share", type=float, default=d.demo_share,
                   help="share of every batch drawn from the demonstrations (RLPD: 0.5)")
    p.add_argument("--demo-noise", type=float, default=d.demo_noise,
                   help="Gaussian noise on the demonstrating driver's actions ([-1, 1] units)")
    p.add_argument("--fit-spread", type=float, default=d.fit_spread,
                   help="with --surrogate: each car parameter randomised by at least this many times its fit "
                        "uncertainty (0: off)")
    p.add_argument("--sensor-noise", type=float, default=d.sensor_noise,
                   help="with --surrogate: the telemetry noise the fit measured, times this, added to the "
                        "policy's observations (0: off)")
    p.add_argument("--actor-noise", type=float, default=d.actor_noise,
                   help="with --surrogate: the telemetry noise the fit measured, times this, in what the actor "
                        "sees only; the critics keep the clean telemetry (0: off)")
    p.add_argument("--edge-margin", type=float, default=d.edge_margin,
                   help="m: training episodes end this far inside the track's edges (evaluations and the game keep "
                        "the real edges): room for a line the game's car runs wider than the surrogate's; default "
                        f"{FITTED_EDGE_MARGIN:g} with --surrogate, else 0")
    p.add_argument("--standing-starts", type=float, default=d.standing_starts,
                   help="fraction of training episodes that start from rest")
    p.add_argument("--action-overshoot", type=float, default=d.action_overshoot,
                   help="policy range beyond the controls' limits, as a fraction (then clipped)")
    p.add_argument("--reward", type=_reward_changes, default=None, metavar="NAME=VALUE,...",
                   help="reward weights over the defaults: progress (per m), deviation (per m^2 from the reference "
                   "line), action_change (per squared control change), off_track, stuck, time (per step); "
                   f"default {','.join(f'{k}={v:g}' for k, v in dataclasses.asdict(DEFAULT_REWARD).items())}, "
                   f"with --surrogate stuck={FITTED_GAME_REWARD.stuck:g} (a stop costs what leaving the track does)")
    p.add_argument("--pedals", choices=PEDALS, default=d.pedals,
                   help="combined: one pedal axis, throttle above zero and brake below; separate: the game's two")
    p.add_argument("--smooth-temporal", type=float, default=d.smooth_temporal,
                   help="weight of the policy's action change between consecutive states in the actor loss (CAPS); 0: off")
    p.add_argument("--smooth-spatial", type=float, default=d.smooth_spatial,
                   help="weight of the policy's action change under small observation noise (CAPS); 0: off")
    p.add_argument("--matmul-precision", choices=MATMUL_PRECISIONS, default=d.matmul_precision,
                   help="float32 matrix products on a GPU: highest (full float32), high or default (TF32)")
    p.add_argument("--eval-every-env-steps", type=int, default=d.eval_every_env_steps)
    p.add_argument("--eval-laps", type=int, default=d.eval_laps)
    p.add_argument("--eval-max-steps", type=int, default=d.eval_max_steps, help="0: enough for --eval-laps")
    p.add_argument("--checkpoint-every-env-steps", type=int, default=d.checkpoint_every_env_steps)
    p.add_argument("--checkpoint-every-minutes", type=float, default=d.checkpoint_every_minutes,
                   help="also checkpoint after this much wall clock since the last (bounds what a hard kill loses)")
    p.add_argument("--spot-metadata-url", default=d.spot_metadata_url,
                   help="EC2 instance metadata service polled for a spot interruption notice ('' = off; off AWS it "
                   f"turns itself off after one failed probe); a notice, SIGTERM or SIGINT checkpoints and exits "
                   f"with status {EXIT_INTERRUPTED}: run the same command with --resume to continue")
    p.add_argument("--spot-poll-seconds", type=float, default=d.spot_poll_seconds)
    p.add_argument("--chunk-iterations", type=int, default=d.chunk_iterations, help="iterations per jitted call")
    p.add_argument("--speed-limit", type=float, default=d.speed_limit,
                   help="m/s: a speed limiter, the throttle faded out just below it, on the surrogate and on the "
                        "game alike (0: none); default: with --surrogate 10 m/s under the speed the fit is trusted to (its "
                        "report's 'trusted up to'), which keeps a driver where the fitted surrogate is right, else none")
    p.add_argument("--no-observe-imu", action="store_true",
                   help="the policy does not see the accelerations and the yaw rate, only the pose, the speed, the "
                        "track and its own controls: for a game whose IMU readings are noisy at speed")
    p.add_argument("--imu-filter-s", type=float, default=d.imu_filter_s,
                   help="time constant (s) of a low-pass on the accelerations and the yaw rate the policy observes, "
                        "the same on the surrogate and on the game: for a game whose IMU chatters at speed (0: raw)")
    p.add_argument("--no-recover-collapse", action="store_true",
                   help="do not roll the agent back from a critic collapse (racerl_jax.collapse): only report it")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    a = vars(build_parser().parse_args(argv))
    a["progress"] = not a.pop("no_progress")
    a["recover_collapse"] = not a.pop("no_recover_collapse")
    a["observe_imu"] = not a.pop("no_observe_imu")
    a["model"] = a["model"] or ""
    a["preset"] = a["preset"] or ""
    a["critic_hidden"] = a["critic_hidden"] or ()
    a["actor_hidden"] = a["actor_hidden"] or ()
    if a["reward"] is not None:  # over the default for what the run drives
        a["reward"] = dataclasses.replace(TrainConfig(surrogate=a["surrogate"]).reward_weights(), **a["reward"])
    try:
        return TrainConfig(**a)
    except ValueError as e:
        raise SystemExit(f"train_crossq.py: {e}") from None
