"""``train_crossq.py``'s settings: ``TrainConfig`` (one dataclass, its defaults measured and argued
beside each field), what the saved config resolves to, the agent's ``CrossQConfig`` built from it,
and the command line that maps onto it."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Sequence

import jax

from bridge.sdk import DEFAULT_LOCKSTEP_ADDRESS, DEFAULT_PUB_ADDRESS, DEFAULT_PULL_ADDRESS
from racerl_jax.crossq import CrossQConfig
from racerl_jax.config_io import dataclass_from_dict
from racerl_jax.learned_line import parse_reference_line
from racerl_jax.spot import DEFAULT_METADATA_URL, SpotConfig
from surrogate.car import MODELS
from surrogate.env import GOVERNOR_FADE, MAX_EDGE_MARGIN, PEDALS, action_bounds
from surrogate.reward import RewardWeights
from surrogate.laptime import LINE_NAMES
from surrogate.surrogate_file import FITTED_EDGE_MARGIN, edge_margin_for, line_for, load_surrogate, speed_limit_for
from surrogate.track_io import DEFAULT_TRACK

# ----------------------------------------------------------------------------- config

# Reward for training (surrogate/reward.py's weights with the choices argued in the report):
# progress pays for distance, a leaving-the-track penalty worth ~35 m of progress, a small pull
# towards the reference line that guides early exploration and costs nothing at the optimum.
DEFAULT_REWARD = RewardWeights(progress=0.1, deviation=0.002, action_change=0.02, off_track=5.0, stuck=0.0, time=0.0,
                               pedal_overlap=0.0)
# On a fitted game's car (--surrogate) a stop costs what leaving the track does: with no cost a driver
# of CarRacing's fitted car learned to stop before a hairpin it could not yet take, and no driver
# lapped it; with it four of four did (docs/experiments.md, session 12). The bundled tracks keep 0
# until the quickstart is measured over seeds with it.
FITTED_GAME_REWARD = dataclasses.replace(DEFAULT_REWARD, stuck=5.0)

# Fields the command line does not set (reward weights, network widths) are still in the saved
# config; fields that do not shape what is learned (how long, how often to evaluate or checkpoint,
# how the run reports) may differ on resume and are not saved with the run's settings (summary.json
# records them): a user resuming after a crash repeats what shaped the run, not every option.
_PER_INVOCATION = ("budget_minutes", "resume", "run_dir", "total_env_steps", "progress", "eval_every_env_steps",
                   "eval_laps", "eval_max_steps", "checkpoint_every_env_steps", "checkpoint_every_minutes",
                   "chunk_iterations", "spot_metadata_url", "spot_poll_seconds", "eval_tracks")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything ``train_crossq.py`` does. Defaults, measured on the shared 2-core CPU (cpu preset,
    128-wide networks, ~400 updates/s alone, 100-250 when shared):

    - 32 envs and 16 updates per iteration (update-to-data 0.5): the updates are the bottleneck on
      a CPU, extra envs are almost free and their random starts spread the data over the track;
    - episodes of 1,000 steps (50 s) from random starts at up to half the reference speed: the
      whole track is seen from the first minute, not only the part after the start line;
    - learning after 2,000 random steps (about 60 iterations), evaluation every 10,000 env steps
      (about every 20-40 s), checkpoints every 100,000;
    - ``DEFAULT_REWARD`` above, CAPS smoothness of the policy (``smooth_temporal``, below), and a
      learning rate that decays to a tenth over the budget (``lr_final``, below).
    """

    backend: str = "surrogate"
    # --backend real: where the game's plugin serves (bridge defaults); --track is then the game's
    # centre line when the game serves none
    game_mode: str = "lockstep"
    address: str = DEFAULT_LOCKSTEP_ADDRESS
    telemetry_address: str = DEFAULT_PUB_ADDRESS
    action_address: str = DEFAULT_PULL_ADDRESS
    game_seed: int = -1  # >= 0: every game episode is reset with this seed (CarRacing: 0 keeps its served track)
    track: str = ""  # bundled name or CSV path; "" = the bundled default (or the surrogate file's)
    surrogate: str = ""  # fitted-surrogate JSON (car + track); "" = default car on --track
    # One policy over several tracks at once (instead of --track): entries are bundled names, CSV
    # files, folders (every *.csv in it) and random:N (N procedural tracks of surrogate.trackgen,
    # drawn from --seed: a resume gets the same ones). Each training episode drives one of them,
    # drawn at random; every evaluation drives each from its start line (track_entries, below).
    tracks: tuple[str, ...] = ()
    # With random:N in --tracks: N fresh procedural tracks every this many env steps (drawn from
    # --seed and the env steps: a resume draws the same); 0 keeps the first N throughout.
    # Evaluation keeps driving the first N.
    tracks_refresh_env_steps: int = 0
    # Tracks never trained on, evaluated beside the training tracks and reported apart ("unseen");
    # the same entry forms as --tracks.
    eval_tracks: tuple[str, ...] = ()
    # The reference line (the observation's points ahead, the baseline's line, the plots', the limit's):
    # "min-curvature", "min-time" (surrogate.laptime.LINE_NAMES) or laps:RUN_DIR[,...] (learned from
    # those runs' clean laps: racerl_jax.learned_line, one track). None: surrogate_file.line_for's
    # default, min-time with --surrogate, else min-curvature (resolve fills it in).
    reference_line: str | None = None
    model: str = ""  # "dynamic" | "kinematic"; "" = dynamic (or the surrogate file's)
    num_envs: int = 32
    budget_minutes: float = 20.0  # wall clock of the whole command, compilation included
    total_env_steps: int = 100_000_000  # a cap; the budget normally ends the run
    run_dir: str = ""  # "" = runs/crossq-<track>-<time>
    resume: bool = False
    seed: int = 0
    preset: str = ""  # "cpu" | "paper"; "" = cpu on a CPU backend, paper otherwise
    updates_per_iter: int = 16  # gradient updates per iteration (one step of every env)
    batch_size: int = 0  # 0 = the preset's
    # Actor and critics; 0 = the preset's (the paper's 1e-3). On the oval two of three runs at
    # 1e-3 had their critic loss jump a hundredfold and stopped lapping for 170k+ env steps; two
    # seeds at 3e-4 lapped steadily and by 300k env steps were faster than the 1e-3 runs at 700k.
    learning_rate: float = 3e-4
    # The learning rate at the end of the budget (the wall clock's or --total-env-steps', whichever
    # ends the run first) as a fraction of --learning-rate, reached on a cosine; 1 keeps it constant.
    # Oval, seed 0, 874k env steps: constant, the last third's evaluation laps spread over
    # 35.19-36.74 s (mean 35.80); decaying to 0.1 on a cosine over the same steps, 35.00-35.59 s
    # (mean 35.26) and a best lap of 35.00 s against 35.19; linearly to 0, 35.16-36.66 s.
    lr_final: float = 0.1
    gamma: float = 0.99  # discount per control step (the paper's)
    # The policy's entropy goal per action dimension, which the temperature tuning holds it at; -1
    # is the paper's (minus the action size). Lower means less exploration noise: the paper's goal
    # leaves a tanh-Gaussian's steering noise at about 9% of full lock, and the critics then value a
    # noisy driver. Oval, 874k env steps, -3 against -1: seed 0 1.0% against 1.8%, seed 1 2.4%
    # against 2.6%, but seed 2's critics collapsed at 260k; so the default stays the paper's.
    entropy_per_action: float = -1.0
    # The entropy goal per action dimension at the end of the budget, reached on the learning
    # rate's cosine: explore as the paper does while the laps are found, then drive with less
    # noise. None (the default) keeps --entropy-per-action throughout.
    entropy_per_action_final: float | None = None
    buffer_size: int = 0  # replay capacity in transitions; 0 = the preset's (1M)
    learning_starts: int = 2_000  # env steps of uniform random actions before learning
    # Gradient updates with plain batch norm in the critics and actor before batch renormalisation's
    # corrections start; None (the default) = the preset's (cpu: 10k; paper: 100k, which is 200k env
    # steps here).
    renorm_warmup_steps: int | None = None
    critic_hidden: tuple[int, ...] = ()  # () = the preset's
    actor_hidden: tuple[int, ...] = ()
    episode_steps: int = 1_000  # training episode limit (random starts cover the rest of the track)
    car_spread: float = 0.0  # domain randomisation of the car parameters (fraction)
    # With --surrogate: each car parameter randomised by at least this many times its fit
    # uncertainty (the surrogate file's spread, capped at 0.5); 0 turns it off.
    fit_spread: float = 1.0
    # With --surrogate: the telemetry noise the fit measured (the file's sensor_noise, by speed) added
    # to what the policy observes, times this; 0 (off) by default: on CarRacing, drivers trained with
    # it left the game after 31-103 m where the same seeds without it drove 373-1,055 m
    # (docs/experiments.md, sessions 12 and 14).
    sensor_noise: float = 0.0
    # With --surrogate: the same noise, times this, seen by the actor alone; the env and the critics
    # keep the clean telemetry (asymmetric actor-critic), so the critics' values stay what the state
    # is worth and the actor learns not to steer at the chatter.
    actor_noise: float = 0.0
    # The policy observes the accelerations and the yaw rate (surrogate.observation.ObsConfig.imu).
    observe_imu: bool = True
    # Time constant (s) of the low-pass on the observed accelerations and yaw rate, the same on the
    # surrogate and on the game (surrogate.observation.ObsConfig.imu_filter_s); 0: raw readings.
    imu_filter_s: float = 0.0
    # A speed limiter on the surrogate and on the game alike (surrogate.env.EnvConfig.speed_limit),
    # m/s; 0: none. None (the default): with --surrogate a margin under the speed the fit is trusted
    # to (surrogate_file.default_speed_limit of the file's trusted_speed_mps), else none. Above it a
    # driver learns a car the game does not have: on CarRacing's fit (trusted to 60 m/s) drivers that
    # reached 80 m/s weaved off the game's track there, where the surrogate's car ran straight
    # (docs/experiments.md, session 20).
    speed_limit: float | None = None
    # Training episodes end this many metres inside the track's edges (surrogate.env.EnvConfig.
    # edge_margin); the evaluations and the game keep the real edges. Room for a line the game's car
    # runs wider than the surrogate's. None: FITTED_EDGE_MARGIN with --surrogate, else 0 (resolve
    # fills it in).
    edge_margin: float | None = None
    # Training episodes that start from rest (the rest start anywhere at up to half the reference
    # speed): evaluation laps and the game start from rest, and a policy that has rarely been
    # there can sit on the line.
    standing_starts: float = 0.25
    # Watch for a critic collapse and roll the agent back from one (racerl_jax.collapse).
    recover_collapse: bool = True
    # Demonstrations (racerl_jax.demos): "" none; "baseline", the baseline driver planned for the car;
    # or a tuning.json of drive_baseline.py --tune, that tuned driver. Before training it drives the
    # training envs for demo_env_steps, and demo_share of every batch is drawn from those transitions
    # (RLPD's symmetric sampling is 0.5); they are kept apart and never overwritten. One track only.
    demos: str = ""
    demo_env_steps: int = 20_000
    demo_share: float = 0.5
    # Gaussian noise on the demonstrating driver's actions (the agent's [-1, 1] units). The random
    # starts already spread the demonstrations; on CarRacing's fitted car the robust tuning drove
    # 20k steps with 21 clean laps and 5 times off the track without noise, 6 and 61 at 0.05, none
    # and 170 at 0.1.
    demo_noise: float = 0.0
    action_overshoot: float = 0.0  # see CrossQConfig (0.1 made a 20-min oval run fail to learn once)
    # How the policy works the pedals (surrogate.env.PEDALS); the game always gets its two. With the
    # smoothed policy (below) the game's two pedals were driven together (both above 5% on 56% of
    # the best lap's steps, braking against a 0.9 throttle); one axis cannot, and on the oval
    # (seed 0, two runs sharing the CPU) it lapped clean at 60k env steps and reached 35.25 s by
    # 340k, where two pedals needed 771k for 35.29 s. (Unsmoothed, one run each: 3.7% against 2.9%.)
    pedals: str = "combined"
    # CAPS smoothness of the policy (CrossQConfig.smooth_temporal / smooth_spatial). Oval, two seeds,
    # sharing the CPU three at a time: at 0.5 the steering changed 60x less per step on the best
    # lap (no more bang-bang), both seeds lapped (first at 102k and 70k env steps) and stayed
    # stable (best 35.61 s and 36.90 s); without it seed 0 collapsed after 37.15 s (critics' loss
    # 0.01 -> 10) and seed 1 had not lapped by 230k. 2.0 never lapped; 0.1 had not by 131k; adding
    # smooth_spatial 0.5 had not by 202k.
    smooth_temporal: float = 0.5
    smooth_spatial: float = 0.0
    # Float32 matrix products at full precision. GPUs default to TF32 (10-bit mantissa) for them:
    # on an H100 three of four runs with TF32 critics collapsed within two minutes, the same
    # settings at full precision learned as on the CPU (README). No effect on a CPU.
    matmul_precision: str = "highest"
    # None: FITTED_GAME_REWARD with --surrogate, else DEFAULT_REWARD (reward_weights; resolve fills it in)
    reward: RewardWeights | None = None
    eval_every_env_steps: int = 10_000
    eval_laps: int = 2  # laps an evaluation drives (the second is a flying lap)
    eval_max_steps: int = 0  # 0 = enough for eval_laps at 60% of the reference pace (or of the speed limit)
    checkpoint_every_env_steps: int = 100_000
    # Also a checkpoint after this many minutes of wall clock since the last: what a hard kill (a
    # spot instance taken without notice, a power cut) can lose, on the game as on the surrogate.
    checkpoint_every_minutes: float = 10.0
    # The EC2 instance metadata service the spot watcher polls (racerl_jax.spot); "" = off. Off AWS
    # the first request fails within a second (in a thread) and the watcher turns itself off.
    spot_metadata_url: str = DEFAULT_METADATA_URL
    spot_poll_seconds: float = 5.0
    chunk_iterations: int = 100  # iterations per jitted call: the granularity of the budget check
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "critic_hidden", tuple(int(w) for w in self.critic_hidden))
        object.__setattr__(self, "actor_hidden", tuple(int(w) for w in self.actor_hidden))
        object.__setattr__(self, "tracks", tuple(str(t) for t in self.tracks))
        object.__setattr__(self, "eval_tracks", tuple(str(t) for t in self.eval_tracks))
        if isinstance(self.reward, dict):
            object.__setattr__(self, "reward", _reward_from_dict(self.reward))

        def need(cond: bool, field: str, msg: str) -> None:
            if not cond:
                raise ValueError(f"TrainConfig.{field}={getattr(self, field)!r}: {msg}")

        need(self.backend in ("surrogate", "real"), "backend", "expected 'surrogate' or 'real'")
        need(self.game_mode in ("lockstep", "realtime"), "game_mode", "expected 'lockstep' or 'realtime'")
        need(self.backend == "surrogate" or self.num_envs == 1 or self.num_envs == TrainConfig.num_envs, "num_envs",
             "the real game drives one car: leave --num-envs out with --backend real")
        need(self.model in ("", *MODELS), "model", f"expected one of {sorted(MODELS)}")
        need(self.preset in ("", "cpu", "paper"), "preset", "expected 'cpu' or 'paper'")
        need(self.matmul_precision in MATMUL_PRECISIONS, "matmul_precision", f"expected one of {MATMUL_PRECISIONS}")
        need(self.num_envs >= 1, "num_envs", "must be >= 1")
        need(self.budget_minutes > 0, "budget_minutes", "must be > 0")
        need(self.total_env_steps >= 1, "total_env_steps", "must be >= 1")
        need(self.updates_per_iter >= 0, "updates_per_iter", "must be >= 0")
        need(self.batch_size == 0 or self.batch_size >= 2, "batch_size", "must be >= 2 (or 0 for the preset's)")
        need(self.learning_rate >= 0, "learning_rate", "must be > 0 (or 0 for the preset's)")
        need(0.0 <= self.lr_final <= 1.0, "lr_final", "must be a fraction in [0, 1] (1: a constant learning rate)")
        need(0.0 < self.gamma < 1.0, "gamma", "must be in (0, 1): the discount per control step")
        need(math.isfinite(self.entropy_per_action), "entropy_per_action", "must be a finite number (the paper's is -1)")
        need(self.entropy_per_action_final is None or math.isfinite(self.entropy_per_action_final),
             "entropy_per_action_final", "must be a finite number, or None to keep --entropy-per-action")
        need(self.buffer_size >= 0, "buffer_size", "must be >= 1 (or 0 for the preset's)")
        need(self.learning_starts >= 0, "learning_starts", "must be >= 0")
        need(self.renorm_warmup_steps is None or self.renorm_warmup_steps >= 0, "renorm_warmup_steps",
             "must be >= 0 gradient updates (or None for the preset's)")
        need(all(w > 0 for w in self.critic_hidden + self.actor_hidden), "critic_hidden", "widths must be > 0")
        need(self.episode_steps >= 1, "episode_steps", "must be >= 1")
        need(0.0 <= self.car_spread < 1.0, "car_spread", "must be in [0, 1)")
        need(0.0 <= self.fit_spread <= 10.0, "fit_spread", "must be in [0, 10] (times the fit's uncertainty; 0: off)")
        need(self.speed_limit is None or self.speed_limit == 0.0 or self.speed_limit > GOVERNOR_FADE, "speed_limit",
             f"must be 0 (none) or above {GOVERNOR_FADE} m/s (or None: the fit's trusted speed)")
        need(0.0 <= self.imu_filter_s <= 2.0, "imu_filter_s", "must be a time constant in [0, 2] s (0: no filter)")
        need(0.0 <= self.sensor_noise <= 10.0, "sensor_noise", "must be in [0, 10] (times the fit's noise; 0: off)")
        need(0.0 <= self.actor_noise <= 10.0, "actor_noise", "must be in [0, 10] (times the fit's noise; 0: off)")
        need(self.edge_margin is None or 0.0 <= self.edge_margin <= MAX_EDGE_MARGIN, "edge_margin",
             f"must be a distance in [0, {MAX_EDGE_MARGIN}] m")
        need(0.0 <= self.standing_starts <= 1.0, "standing_starts", "must be a fraction in [0, 1]")
        need(0.0 <= self.action_overshoot < 1.0, "action_overshoot", "must be in [0, 1)")
        need(self.pedals in PEDALS, "pedals", f"expected one of {PEDALS}")
        need(self.smooth_temporal >= 0, "smooth_temporal", "must be >= 0 (0 turns it off)")
        need(self.smooth_spatial >= 0, "smooth_spatial", "must be >= 0 (0 turns it off)")
        need(self.eval_every_env_steps >= 1, "eval_every_env_steps", "must be >= 1")
        need(self.eval_laps >= 1, "eval_laps", "must be >= 1")
        need(self.eval_max_steps >= 0, "eval_max_steps", "must be >= 0")
        need(self.checkpoint_every_env_steps >= 1, "checkpoint_every_env_steps", "must be >= 1")
        need(self.checkpoint_every_minutes > 0, "checkpoint_every_minutes", "must be > 0")
        SpotConfig(self.spot_metadata_url, self.spot_poll_seconds)  # its own checks
        need(self.chunk_iterations >= 1, "chunk_iterations", "must be >= 1")
        need(self.demo_env_steps >= 1, "demo_env_steps", "must be >= 1")
        need(0.0 < self.demo_share < 1.0, "demo_share", "must be a fraction in (0, 1) (RLPD's is 0.5)")
        need(0.0 <= self.demo_noise <= 1.0, "demo_noise", "must be in [0, 1] (the noise's standard deviation, in "
                                                         "the agent's [-1, 1] action units)")
        if self.demos and (self.backend == "real" or self.tracks):
            raise ValueError(f"TrainConfig: --demos {self.demos} drives the demonstrations on one surrogate track: "
                             "drop it, or train with --backend surrogate on one --track or --surrogate")
        if self.surrogate and self.track and self.backend == "surrogate":
            raise ValueError(
                f"TrainConfig: give --track or --surrogate, not both (the surrogate file {self.surrogate} holds its own track)"
            )
        self._check_track_sets()

    def _check_track_sets(self) -> None:
        """--tracks, --eval-tracks and --tracks-refresh-env-steps: the entries' form and what they exclude
        (whether the files exist is ``resolve``'s to check: a saved config may be read elsewhere)."""
        for option, entries in (("--tracks", self.tracks), ("--eval-tracks", self.eval_tracks)):
            for entry in entries:
                random_count(entry, option)
        if self.tracks and self.track:
            raise ValueError(f"TrainConfig: give --tracks or --track, not both: put {self.track} into --tracks "
                             f"({','.join((self.track, *self.tracks))})")
        if self.tracks and self.surrogate:
            raise ValueError(f"TrainConfig: give --tracks or --surrogate, not both: the surrogate file {self.surrogate} "
                             "holds its own track; drop --tracks (--eval-tracks evaluates the fitted car on other "
                             "tracks) or drop --surrogate (--tracks trains the default car)")
        if parse_reference_line(self.reference_line) and self.tracks:
            raise ValueError("TrainConfig: --reference-line laps:... learns one track's line; drop it or train on one "
                             "--track")
        if self.backend == "real" and (self.tracks or self.eval_tracks):
            raise ValueError("TrainConfig: --backend real trains on the game's own track: drop --tracks and "
                             "--eval-tracks (or train on the surrogate: --backend surrogate)")
        if self.tracks_refresh_env_steps < 0:
            raise ValueError(f"TrainConfig.tracks_refresh_env_steps={self.tracks_refresh_env_steps}: must be >= 0 "
                             "(0: the same random tracks throughout)")
        if self.tracks_refresh_env_steps and not any(random_count(t, "--tracks") for t in self.tracks):
            raise ValueError(f"TrainConfig.tracks_refresh_env_steps={self.tracks_refresh_env_steps}: only random:N "
                             "entries of --tracks are drawn afresh; add one (e.g. --tracks random:8) or drop it")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["critic_hidden"] = list(self.critic_hidden)
        d["actor_hidden"] = list(self.actor_hidden)
        d["tracks"] = list(self.tracks)
        d["eval_tracks"] = list(self.eval_tracks)
        d["reward"] = {k: float(v) for k, v in dataclasses.asdict(self.reward_weights()).items()}
        return d

    def reward_weights(self) -> RewardWeights:
        """The reward as given, or the default for what the run drives (``FITTED_GAME_REWARD`` on a fit)."""
        if self.reward is not None:
            return self.reward
        return FITTED_GAME_REWARD if self.surrogate else DEFAULT_REWARD

    def train_edge_margin(self) -> float:
        """The training edge margin as given, or the default for what the run drives (``FITTED_EDGE_MARGIN`` on a fit)."""
        return edge_margin_for(self.edge_margin, bool(self.surrogate))

    def env_reference(self) -> str:
        """``EnvConfig.reference`` of this run: the computed line its reference line names (a learned
        line replaces the minimum-curvature one)."""
        return LINE_NAMES.get(line_for(self.reference_line, bool(self.surrogate)), "curvature")

    def run_settings(self) -> dict[str, Any]:
        """The settings that shape the run's state and learning: what a resume must keep."""
        return {k: v for k, v in self.to_dict().items() if k not in _PER_INVOCATION}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        # Runs saved before these settings existed drove the game's two pedals, unsmoothed, at a
        # constant learning rate, a constant entropy goal and the preset's renorm warm-up, without a
        # speed limiter.
        old = {"pedals": "separate", "smooth_temporal": 0.0, "smooth_spatial": 0.0, "lr_final": 1.0,
               "entropy_per_action_final": None, "renorm_warmup_steps": None, "speed_limit": 0.0}
        if d.get("reference_line") == "":  # before min-time lines, "" named the minimum-curvature line
            d = {**d, "reference_line": "min-curvature"}
        return dataclass_from_dict(cls, {**old, **d})


MATMUL_PRECISIONS = ("default", "high", "highest")


def _reward_from_dict(d: dict[str, Any]) -> RewardWeights:
    return dataclass_from_dict(RewardWeights, {k: float(v) for k, v in d.items()})


# ----------------------------------------------------------------------------- track sets

RANDOM_PREFIX = "random:"


def random_count(entry: str, option: str = "--tracks") -> int:
    """N of a ``random:N`` entry, 0 for any other entry; a ValueError names a malformed one."""
    if not entry.strip():
        raise ValueError(f"{option}: an empty entry; give comma-separated track names, CSV files, folders or random:N")
    if not entry.startswith(RANDOM_PREFIX):
        return 0
    n = entry[len(RANDOM_PREFIX):]
    if not n.isdigit() or int(n) < 1:
        raise ValueError(f"{option} {entry!r}: expected random:N with N a whole number >= 1 (e.g. random:8)")
    return int(n)


def track_entries(entries: Sequence[str], option: str = "--tracks") -> list[str]:
    """The entries with every folder replaced by its *.csv files (sorted), each other name or file
    checked to load: what a run's config.json records, so that a folder that changes later is not
    a silently different run. ``random:N`` stays as it is. Raises SystemExit naming the entry and
    the fix (a missing file, a folder without CSV files, a track given twice)."""
    from surrogate.track_io import TrackFileError, resolve_track_path

    out: list[str] = []
    for entry in entries:
        random_count(entry, option)
        path = Path(entry)
        if entry.startswith(RANDOM_PREFIX):
            files = [entry]
        elif path.is_dir():
            files = [str(p) for p in sorted(path.glob("*.csv"))]
            if not files:
                raise SystemExit(f"train_crossq.py: {option} {entry}: the folder holds no *.csv track files; give a "
                                 "folder of TUM-format CSV files, a file or a bundled name")
        else:
            try:
                resolve_track_path(entry)
            except TrackFileError as e:
                raise SystemExit(f"train_crossq.py: {option} {entry}: {e}; or a folder of them, or random:N") from None
            files = [entry]
        out.extend(files)
    seen: dict[str, str] = {}
    for entry in out:
        key = entry if entry.startswith(RANDOM_PREFIX) else str(_resolved(entry))
        if key in seen:
            raise SystemExit(f"train_crossq.py: {option}: {entry} is given twice ({seen[key]!r} and {entry!r}); "
                             "give each track once (random:N once, with the N you want)")
        seen[key] = entry
    return out


def _resolved(entry: str) -> Path:
    from surrogate.track_io import resolve_track_path

    return resolve_track_path(entry).resolve()


def _resolve_track_sets(cfg: TrainConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    tracks = tuple(track_entries(cfg.tracks, "--tracks"))
    eval_tracks = tuple(track_entries(cfg.eval_tracks, "--eval-tracks"))
    if not eval_tracks:
        return tracks, eval_tracks
    trained = {_resolved(t) for t in (*tracks, cfg.track) if t and not t.startswith(RANDOM_PREFIX)}
    for t in eval_tracks:
        if not t.startswith(RANDOM_PREFIX) and _resolved(t) in trained:
            raise SystemExit(f"train_crossq.py: --eval-tracks {t} is also a training track; unseen tracks are never "
                             "trained on: drop it from one of the two")
    return tracks, eval_tracks


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Fill the "auto" fields (preset, model, track, run dir) so the saved config says what ran;
    --tracks and --eval-tracks with every folder listed (``track_entries``)."""
    preset = cfg.preset or ("cpu" if jax.default_backend() == "cpu" else "paper")
    model, track, num_envs = cfg.model, cfg.track, cfg.num_envs
    tracks, eval_tracks = cfg.tracks, cfg.eval_tracks
    if cfg.backend == "real":  # the game's track unless --track; one car
        model, num_envs = model or "dynamic", 1
        name = Path(track).stem if track else "real"
    elif cfg.surrogate:
        fitted = load_surrogate(cfg.surrogate)
        if model and model != fitted.model:
            raise ValueError(
                f"--model {model} differs from the model {fitted.model!r} of the surrogate file {cfg.surrogate}; "
                "drop --model (the file's model is used)"
            )
        model, name = fitted.model, Path(cfg.surrogate).stem
    elif cfg.tracks:
        model, name = model or "dynamic", "tracks"
    else:
        model, track = model or "dynamic", track or DEFAULT_TRACK
        name = Path(track).stem
    if cfg.backend == "surrogate":
        tracks, eval_tracks = _resolve_track_sets(dataclasses.replace(cfg, track=track))
    run_dir = cfg.run_dir or f"runs/crossq-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return dataclasses.replace(cfg, preset=preset, model=model, track=track, num_envs=num_envs, run_dir=run_dir,
                               tracks=tracks, eval_tracks=eval_tracks, speed_limit=resolved_speed_limit(cfg),
                               reward=cfg.reward_weights(), edge_margin=cfg.train_edge_margin(),
                               reference_line=line_for(cfg.reference_line, bool(cfg.surrogate)))


def resolved_speed_limit(cfg: TrainConfig) -> float:
    """--speed-limit as given, or by default the fitted surrogate's trusted speed (none without one)."""
    if cfg.speed_limit is not None:
        return cfg.speed_limit
    return speed_limit_for(None, load_surrogate(cfg.surrogate) if cfg.surrogate else None)


def _action_dims(cfg: TrainConfig) -> int:
    """The agent's action size: steering and one or two pedal axes."""
    return len(action_bounds(cfg.pedals)[0])


def crossq_config(cfg: TrainConfig) -> CrossQConfig:
    """The agent's config: the preset with this command's overrides."""
    overrides: dict[str, Any] = {
        "learning_starts": cfg.learning_starts,
        "gamma": cfg.gamma,
        "target_entropy": cfg.entropy_per_action * _action_dims(cfg),
        "action_overshoot": cfg.action_overshoot,
        "smooth_temporal": cfg.smooth_temporal,
        "smooth_spatial": cfg.smooth_spatial,
    }
    if cfg.renorm_warmup_steps is not None:
        overrides["renorm_warmup_steps"] = cfg.renorm_warmup_steps
    if cfg.batch_size:
        overrides["batch_size"] = cfg.batch_size
    if cfg.learning_rate:
        overrides["learning_rate"] = cfg.learning_rate
    if cfg.buffer_size:
        overrides["buffer_size"] = cfg.buffer_size
    if cfg.critic_hidden:
        overrides["critic_hidden"] = cfg.critic_hidden
    if cfg.actor_hidden:
        overrides["actor_hidden"] = cfg.actor_hidden
    preset = cfg.preset or "cpu"
    base = CrossQConfig.cpu if preset == "cpu" else CrossQConfig.paper
    return base(**overrides)
