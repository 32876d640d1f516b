"""``finetune_real.py``: a surrogate-trained agent improves on the game.

The agent (``best_agent/`` or a checkpoint of any run: ``racerl_jax.saved_agent``) drives the game
through ``RealGameEnv`` and the host loop, with the same CrossQ update it trained with, on the
same observation and reward. What a fine-tune does differently from training from scratch:

- no random warm-up: the agent drives from the first step, and its first ``seed_steps`` game steps
  (its own first laps) fill the replay buffer before the first update;
- the critics' batch statistics and the entropy coefficient are carried over (or reset: options);
- the replay buffer holds game transitions, optionally mixed with the source run's surrogate
  transitions at a set share of every batch (RLPD's symmetric sampling at 0.5);
- evaluation laps on the game at an interval keep the best agent so far (ranked by clean-lap
  rate, then mean clean lap time), starting with the agent as loaded: the fine-tune never hands
  back a worse driver, and the final laps are driven by that best agent.

A spot notice or a signal checkpoints and exits with ``racerl_jax.spot.EXIT_INTERRUPTED``; the
same command resumes the run in its run dir (settings that shape the learning must match).
The last line printed is ``clean_lap_rate=<f> mean_lap_s=<f> start_mean_lap_s=<f>
baseline_lap_s=<f> game_minutes=<f>``.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bridge.sdk import DEFAULT_LOCKSTEP_ADDRESS, DEFAULT_PUB_ADDRESS, DEFAULT_PULL_ADDRESS
from racerl_jax import crossq, replay
from racerl_jax.checkpoint import CONFIG_FILE, Checkpointer, write_json_atomic
from racerl_jax.crossq import AgentState
from racerl_jax.replay import ReplayBuffer
from racerl_jax.saved_agent import CHECKPOINTS_DIR, AgentError, SavedAgent, load_agent
from racerl_jax.spot import DEFAULT_METADATA_URL, EXIT_INTERRUPTED, INTERRUPTED, SpotConfig
from racerl_jax.racing_setup import slow_lap_steps
from racerl_jax.train_racing import BEST_AGENT_DIR, env_config

STATE_FILE = "finetune.json"  # the start and baseline scores, the best evaluation, game time driven
CHOICES = ("keep", "reset")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Everything ``finetune_real.py`` does; the defaults are what a fine-tune on the reference
    game (CarRacing in lockstep) runs."""

    agent: str = ""  # the surrogate-trained agent: a run dir, its best_agent/ or checkpoints/, or one step
    run_dir: str = ""  # "" = runs/finetune-<source run>-<time>
    game_mode: str = "lockstep"
    address: str = DEFAULT_LOCKSTEP_ADDRESS
    telemetry_address: str = DEFAULT_PUB_ADDRESS
    action_address: str = DEFAULT_PULL_ADDRESS
    game_seed: int = 0  # every game episode is reset with this seed (CarRacing: 0 keeps its served track)
    track: str = ""  # the game's centre line (TUM CSV or bundled name) when the game serves none
    # The fitted-surrogate file whose control period and input delay the agent was trained with;
    # "" = the source run's (its path as the run saved it).
    surrogate: str = ""
    game_minutes: float = 30.0  # game time of training (evaluation laps come on top)
    budget_minutes: float = 0.0  # wall clock of the command; 0 = no limit (game_minutes ends the run)
    seed: int = 0
    # Game steps the agent drives (its own policy, no random actions) before its first update: the
    # buffer starts with its own first laps, so the first batches are not a handful of transitions.
    seed_steps: int = 1_000
    updates_per_step: int = 1  # update-to-data ratio on the game
    learning_rate: float = 0.0  # 0 = the source run's
    buffer_size: int = 200_000  # game transitions kept (30 game minutes at 20 Hz are 36k)
    # The critics' batch statistics: "keep" the running means and variances learned on the surrogate
    # (the same observation function and reward: the game's inputs have the same scale), or "reset"
    # them (and batch renormalisation's warm-up) to a fresh network's. Kept (with the entropy) is the
    # better: on CarRacing, 16.68 -> 14.32 s in 30 game minutes, against 15.24 s reset and no clean
    # evaluation lap in the first 20k steps (docs/experiments.md, session 14).
    critic_stats: str = "keep"
    # The entropy coefficient: "keep" the source's (small after a run: the driver explores little, so
    # its first game laps are its best), or "reset" to the initial coefficient (1.0 in the presets:
    # steering noise at full scale, which ran a lapping agent off the track in its first laps).
    entropy: str = "keep"
    # Share of every batch drawn from the source run's replay buffer (its last checkpoint's), the rest
    # from the game's: 0.5 is RLPD's symmetric sampling; 0 = game transitions only.
    surrogate_ratio: float = 0.0
    episode_steps: int = 0  # training episode limit on the game; 0 = two laps at 60% of the reference pace
    eval_every_env_steps: int = 2_000
    eval_laps: int = 2
    final_laps: int = 5  # laps of the start, baseline and final evaluations
    eval_max_steps: int = 0  # game steps an evaluation may take; 0 = its laps + 1 at 60% of the reference pace
    baseline: bool = True  # drive the baseline driver on the game once, for baseline_lap_s
    checkpoint_every_env_steps: int = 5_000
    checkpoint_every_minutes: float = 2.0
    chunk_env_steps: int = 100  # game steps between looks at the budget, the stop request, the evaluation
    spot_metadata_url: str = DEFAULT_METADATA_URL
    spot_poll_seconds: float = 5.0
    progress: bool = True

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)!r}: {what}")

        need(bool(self.agent), "agent", "give the surrogate-trained agent: a run dir of train_crossq.py, its "
             "best_agent/ or checkpoints/, or one step under either")
        need(self.game_mode in ("lockstep", "realtime"), "game_mode", "expected lockstep or realtime")
        need(self.game_minutes > 0, "game_minutes", "must be > 0")
        need(self.budget_minutes >= 0, "budget_minutes", "must be >= 0 (0: no wall-clock limit)")
        need(self.seed_steps >= 0, "seed_steps", "must be >= 0")
        need(self.updates_per_step >= 0, "updates_per_step", "must be >= 0")
        need(self.learning_rate >= 0, "learning_rate", "must be >= 0 (0: the source run's)")
        need(self.buffer_size >= 1, "buffer_size", "must be >= 1")
        need(self.critic_stats in CHOICES, "critic_stats", f"expected one of {CHOICES}")
        need(self.entropy in CHOICES, "entropy", f"expected one of {CHOICES}")
        need(0.0 <= self.surrogate_ratio < 1.0, "surrogate_ratio", "must be in [0, 1) (0.5: RLPD's symmetric "
             "sampling; 0: game transitions only)")
        need(self.episode_steps >= 0, "episode_steps", "must be >= 0 (0: from the reference lap time)")
        need(self.eval_max_steps >= 0, "eval_max_steps", "must be >= 0 (0: from the reference lap time)")
        for name in ("eval_every_env_steps", "eval_laps", "final_laps", "checkpoint_every_env_steps",
                     "chunk_env_steps"):
            need(getattr(self, name) >= 1, name, "must be >= 1")
        need(self.checkpoint_every_minutes > 0, "checkpoint_every_minutes", "must be > 0")
        SpotConfig(self.spot_metadata_url, self.spot_poll_seconds)

    def learning_settings(self) -> dict[str, Any]:
        """What shapes the fine-tune's state and learning: what a resume must keep."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in _PER_INVOCATION}


# Settings that do not shape what is learned: they may differ when a run is resumed.
_PER_INVOCATION = ("run_dir", "game_minutes", "budget_minutes", "eval_every_env_steps", "eval_laps", "final_laps",
                   "eval_max_steps",
                   "baseline", "checkpoint_every_env_steps", "checkpoint_every_minutes", "chunk_env_steps",
                   "spot_metadata_url", "spot_poll_seconds", "progress", "address", "telemetry_address",
                   "action_address")


# ----------------------------------------------------------------------------- the agent and its updates


def prepare_agent(agent: AgentState, cfg: FinetuneConfig, obs_size: int) -> AgentState:
    """The loaded agent as the fine-tune starts it: its config with the fine-tune's learning start,
    buffer and learning rate, its env-step counter at zero (game steps from here; its update count
    goes on, so batch renormalisation stays past its warm-up), and the critics' statistics and the
    entropy coefficient kept or reset."""
    config = dataclasses.replace(agent.config, learning_starts=cfg.seed_steps, buffer_size=cfg.buffer_size,
                                 learning_rate=cfg.learning_rate or agent.config.learning_rate)
    out = agent.replace(config=config, env_steps=jnp.zeros_like(agent.env_steps))
    if cfg.critic_stats == "reset" or cfg.entropy == "reset":
        # Jitted: run eagerly the initialisation compiles each of its few hundred small ops.
        fresh = jax.jit(crossq.init_agent, static_argnums=(1, 2, 3))(jax.random.PRNGKey(cfg.seed), obs_size,
                                                                     agent.action_size, config)
        if cfg.critic_stats == "reset":
            out = out.replace(critic_stats=fresh.critic_stats)
        if cfg.entropy == "reset":
            out = out.replace(log_alpha=fresh.log_alpha, alpha_opt=fresh.alpha_opt)
    return out


def mixed_update_fn(surrogate: ReplayBuffer, ratio: float, batch_size: int) -> Callable:
    """The host loop's ``update_fn``: each batch ``ratio`` surrogate transitions, the rest the game's."""
    n = int(round(ratio * batch_size))
    if not 0 < n < batch_size:
        raise ValueError(f"--surrogate-ratio {ratio} of a batch of {batch_size} is {n} transitions; give a ratio "
                         f"that leaves both sources at least one")
    from racerl_jax.train_loop import _maybe_update

    update = jax.jit(functools.partial(_maybe_update, actor_view=None, from_other=n), static_argnums=(2, 3))
    return lambda agent, buffer, num_updates, config, lr, ent: update(agent, buffer, num_updates, config, lr, ent,
                                                                       other=surrogate)


def load_surrogate_buffer(saved: SavedAgent, obs_size: int, action_size: int) -> ReplayBuffer:
    """The replay buffer of the source run's newest checkpoint (what it trained on in the surrogate)."""
    import orbax.checkpoint as ocp

    from racerl_jax.checkpoint import complete_steps

    ckpt_dir = saved.run_dir / CHECKPOINTS_DIR
    steps = complete_steps(ckpt_dir)
    if not steps:
        raise AgentError(f"--surrogate-ratio needs the source run's replay buffer, and {ckpt_dir} holds no "
                         "checkpoint; give a run that checkpointed, or --surrogate-ratio 0", code=1)
    step_dir = ckpt_dir / str(steps[-1]) / "default"
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ck:
        meta = ck.metadata(step_dir)
        tree = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
        if not isinstance(tree, dict) or "buffer" not in tree:
            raise AgentError(f"{step_dir}: no replay buffer in this checkpoint; give a run of train_crossq.py",
                             code=1)
        capacity = int(tree["buffer"]["data"]["reward"].shape[0])
        template = jax.eval_shape(lambda: replay.init(capacity, obs_size, action_size))
        item = {"buffer": jax.tree.map(ocp.utils.to_shape_dtype_struct, template)}
        restore = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
        restored = ck.restore(step_dir, args=ocp.args.PyTreeRestore(item=item, partial_restore=True,
                                                                    restore_args=restore))
    buffer = jax.tree.map(jnp.asarray, restored["buffer"])
    if int(buffer.size) < 1:
        raise AgentError(f"{step_dir}: the source run's replay buffer is empty; use --surrogate-ratio 0", code=1)
    return buffer


# ----------------------------------------------------------------------------- driving laps on the game


def drive_laps(env: Any, act: Callable[[np.ndarray], np.ndarray], laps: int, max_steps: int, seed: int,
               limit_s: float) -> dict[str, Any]:
    """Scores (``racerl_jax.laps.score``) of ``laps`` lap attempts from the line."""
    from racerl_jax.evaluate import drive_game
    from racerl_jax.laps import LapBook, score

    book = LapBook(laps, float(env.track.length))
    rows = drive_game(env, act, book, max_steps, seed, lambda b, s: None)
    return score(rows, book, limit_s)


@jax.jit
def _act(agent: AgentState, obs: jax.Array, low: jax.Array, high: jax.Array, key: jax.Array) -> jax.Array:
    from racerl_jax.train_loop import driving_action

    return driving_action(agent, obs, low, high, key)


def agent_policy(env: Any, agent: AgentState, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """The deterministic policy in the env's action units (batch norm in evaluation mode), compiled
    before it drives (in real time a first step that compiles would be late)."""
    low, high = jnp.asarray(env.action_space.low), jnp.asarray(env.action_space.high)
    key = jax.random.PRNGKey(seed)
    jax.block_until_ready(_act(agent, jnp.zeros(env.observation_space.shape, jnp.float32), low, high, key))
    return lambda obs: np.asarray(_act(agent, jnp.asarray(obs, jnp.float32), low, high, key))


def baseline_policy(env: Any, car: Any, pedals: str) -> Callable[[np.ndarray], np.ndarray]:
    """The classical baseline (pure pursuit on the reference line, its speed profile) on the game."""
    from surrogate.baseline import baseline_action, baseline_params_for
    from surrogate.env import env_action

    bp = baseline_params_for(car)
    fn = jax.jit(lambda pos, tel: env_action(baseline_action(env.track, pos, tel, bp), pedals))
    return lambda obs: np.asarray(fn(env.track_pos, env.last_telemetry))


def _rank(s: dict[str, Any]) -> tuple[float, float]:
    """Better drivers rank higher: more clean laps, then faster clean laps."""
    mean = s["mean_lap_s"]
    return (s["clean_lap_rate"], -mean if math.isfinite(mean) else -math.inf)


def _brief(s: dict[str, Any]) -> dict[str, Any]:
    keys = ("clean_lap_rate", "mean_lap_s", "best_lap_s", "laps_completed", "clean_laps", "driven_s", "steps")
    return {k: (None if isinstance(s[k], float) and not math.isfinite(s[k]) else s[k]) for k in keys}


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


class BestKeeper:
    """``eval_fn`` for the training driver: drives evaluation laps with the agent, keeps the best
    agent so far in ``best_agent/`` and the run's state (scores, game time of evaluations) in
    finetune.json, so a resumed run keeps both."""

    def __init__(self, run_dir: Path, env: Any, loop: Any, cfg: FinetuneConfig, limit_s: float, dt: float,
                 lap_steps: int) -> None:
        self.run_dir, self.env, self.loop, self.cfg = run_dir, env, loop, cfg
        self.limit_s, self.dt, self.lap_steps = limit_s, dt, lap_steps
        path = run_dir / STATE_FILE
        self.state: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"eval_game_s": 0.0}

    def save_state(self) -> None:
        write_json_atomic(self.run_dir / STATE_FILE, self.state)

    def drive(self, agent: AgentState, laps: int) -> dict[str, Any]:
        s = drive_laps(self.env, agent_policy(self.env, agent, self.cfg.seed), laps, self.max_steps(laps),
                       self.cfg.game_seed, self.limit_s)
        self.state["eval_game_s"] = self.state.get("eval_game_s", 0.0) + s["driven_s"]
        return s

    def max_steps(self, laps: int) -> int:
        return self.cfg.eval_max_steps or (laps + 1) * self.lap_steps

    def consider(self, agent: AgentState, s: dict[str, Any]) -> bool:
        best = self.state.get("best")
        if best is not None and not _rank(s) > _rank({k: _num(best.get(k)) for k in ("clean_lap_rate", "mean_lap_s")}):
            return False
        with Checkpointer(self.run_dir / BEST_AGENT_DIR, max_to_keep=1) as ckpt:
            ckpt.save(int(agent.env_steps), agent)
        self.state["best"] = {**_brief(s), "env_steps": int(agent.env_steps)}
        return True

    def __call__(self, agent: AgentState) -> dict[str, float]:
        s = self.drive(agent, self.cfg.eval_laps)
        self.consider(agent, s)
        self.save_state()
        self.loop.restart()  # the training episode the evaluation interrupted
        best = self.state["best"]
        return {"clean_lap_rate": s["clean_lap_rate"], "mean_lap_s": s["mean_lap_s"], "best_lap_s": s["best_lap_s"],
                "best_clean_lap_rate": _num(best["clean_lap_rate"]), "best_mean_lap_s": _num(best["mean_lap_s"])}

    def best_agent(self, template: AgentState) -> AgentState:
        with Checkpointer(self.run_dir / BEST_AGENT_DIR, max_to_keep=1) as ckpt:
            return ckpt.restore(template)


# ----------------------------------------------------------------------------- the command


def resolve(cfg: FinetuneConfig, saved: SavedAgent) -> FinetuneConfig:
    run_dir = cfg.run_dir or f"runs/finetune-{saved.run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return dataclasses.replace(cfg, run_dir=run_dir, agent=str(Path(cfg.agent).resolve()))


def check_resume(cfg: FinetuneConfig, run_dir: Path) -> bool:
    """True when ``run_dir`` holds this fine-tune (it is resumed); refuses a run dir holding another
    run or this one with other learning settings, naming them."""
    path = run_dir / CONFIG_FILE
    if not path.exists():
        return False
    saved = json.loads(path.read_text()).get("finetune")
    if saved is None:
        raise SystemExit(f"finetune_real.py: {run_dir} holds a run that is not a fine-tune ({CONFIG_FILE}); give a "
                         "new --run-dir")
    new = cfg.learning_settings()
    diff = sorted(k for k in set(saved) | set(new) if saved.get(k) != new.get(k))
    if diff:
        raise SystemExit(f"finetune_real.py: resuming {run_dir}, these settings differ from the run's "
                         f"({CONFIG_FILE}): " + ", ".join(f"{k} {saved.get(k)!r} -> {new.get(k)!r}" for k in diff)
                         + "; use the run's settings or a new --run-dir")
    return True


def run(cfg: FinetuneConfig) -> dict[str, Any]:
    """The whole command; returns the summary (also written to summary.json)."""
    from bridge.client import BridgeUnavailable
    from racerl_jax.real_env import RealEnvConfig, RealGameEnv
    from racerl_jax.train_loop import HostLoop, train_host
    from surrogate.car import CarParams
    from surrogate.surrogate_file import load_surrogate

    t_start = time.monotonic()
    try:
        saved = load_agent(cfg.agent)
    except AgentError as e:
        raise SystemExit(f"finetune_real.py: {e}") from None
    cfg = resolve(cfg, saved)
    run_dir = Path(cfg.run_dir)
    resuming = check_resume(cfg, run_dir)
    tc = saved.config
    surrogate_file = cfg.surrogate or tc.surrogate
    try:
        fitted = load_surrogate(surrogate_file) if surrogate_file else None
    except (OSError, ValueError) as e:
        raise SystemExit(f"finetune_real.py: the surrogate file {surrogate_file} does not load ({e}); paths in the "
                         f"source run's {CONFIG_FILE} are relative to where it trained: run from there or give "
                         "--surrogate") from None
    car = fitted.car if fitted else CarParams()
    env_cfg = env_config(tc, fitted, start="line")
    try:
        env = RealGameEnv(RealEnvConfig(
            mode=cfg.game_mode, address=cfg.address, telemetry_address=cfg.telemetry_address,
            action_address=cfg.action_address, track_file=cfg.track or None, reset_seed=cfg.game_seed, env=env_cfg,
            reward=tc.reward_weights(), car=car))
    except (BridgeUnavailable, TimeoutError) as e:
        raise SystemExit(f"finetune_real.py: no game answers ({e}); start the game's plugin in {cfg.game_mode} mode "
                         "(the reference game: python -m bridge.games.carracing --mode lockstep), or give its "
                         "--address (real time also --telemetry-address and --action-address)") from None
    try:
        limit = float(env.reference.lap_time_s)
        # Game time of a step: whole ticks in lockstep (the agent's period rounded to them), else the period.
        dt = env.ticks * env.hello["dt"] if cfg.game_mode == "lockstep" and env.hello else env_cfg.dt
        lap_steps = slow_lap_steps(limit, float(env.track.length), env.env_config)
        episode_steps = cfg.episode_steps or 2 * lap_steps
        if episode_steps != env.env_config.max_episode_steps:
            # Training episodes from the line long enough for laps (the surrogate's were short, from
            # random starts); the env's jitted step compiles once more for it.
            env.env_config = dataclasses.replace(env.env_config, max_episode_steps=episode_steps)
        ft = dataclasses.replace(tc, backend="real", game_mode=cfg.game_mode, address=cfg.address,
                                 telemetry_address=cfg.telemetry_address, action_address=cfg.action_address,
                                 game_seed=cfg.game_seed, track=cfg.track, surrogate=surrogate_file, num_envs=1,
                                 learning_starts=cfg.seed_steps, buffer_size=cfg.buffer_size, run_dir=str(run_dir),
                                 episode_steps=env.env_config.max_episode_steps)
        obs_size = int(np.prod(env.observation_space.shape))
        agent = prepare_agent(saved.agent, cfg, obs_size)
        update_fn = None
        if cfg.surrogate_ratio > 0:
            update_fn = mixed_update_fn(load_surrogate_buffer(saved, obs_size, agent.action_size), cfg.surrogate_ratio,
                                        agent.config.batch_size)
        loop = HostLoop(env, agent.config, seed=cfg.seed, updates_per_step=cfg.updates_per_step, random_warmup=False,
                        update_fn=update_fn)
        run_dir.mkdir(parents=True, exist_ok=True)
        keeper = BestKeeper(run_dir, env, loop, cfg, limit, dt, lap_steps)
        print(f"fine-tuning {saved.source} of {saved.run_dir} ({saved.step} surrogate env steps) on game "
              f"{env.hello.get('game') if env.hello else None!r} ({cfg.game_mode}), track {env.track_data.name}: "
              f"minimum-lap-time reference {limit:.2f} s; run dir {run_dir}" + (" (resuming)" if resuming else ""),
              flush=True)
        if "start" not in keeper.state:
            start = keeper.drive(agent, cfg.final_laps)
            keeper.state["start"] = _brief(start)
            keeper.consider(agent, start)  # the agent as loaded is the first best: never hand back worse
            keeper.save_state()
            print(f"before fine-tuning: clean-lap rate {start['clean_lap_rate']:.2f}, mean clean lap "
                  f"{start['mean_lap_s']:.2f} s over {cfg.final_laps} laps", flush=True)
        if cfg.baseline and "baseline" not in keeper.state:
            base = drive_laps(env, baseline_policy(env, car, tc.pedals), cfg.final_laps, keeper.max_steps(cfg.final_laps),
                              cfg.game_seed, limit)
            keeper.state["baseline"] = _brief(base)
            keeper.save_state()
            print(f"baseline driver: clean-lap rate {base['clean_lap_rate']:.2f}, mean clean lap "
                  f"{base['mean_lap_s']:.2f} s", flush=True)
        loop.restart()
        total = max(1, int(round(cfg.game_minutes * 60.0 / dt)))
        budget = cfg.budget_minutes * 60.0 - (time.monotonic() - t_start) if cfg.budget_minutes else None
        result = train_host(
            loop, total_env_steps=total, seed=cfg.seed, chunk_env_steps=cfg.chunk_env_steps, agent=agent,
            max_wall_seconds=None if budget is None else max(budget, 1.0), run_dir=run_dir, eval_fn=keeper,
            eval_every_env_steps=cfg.eval_every_env_steps, checkpoint_every_env_steps=cfg.checkpoint_every_env_steps,
            checkpoint_every_seconds=60.0 * cfg.checkpoint_every_minutes,
            spot=SpotConfig(cfg.spot_metadata_url, cfg.spot_poll_seconds), resume=True,
            extra_config={"command": ft.run_settings(), "finetune": cfg.learning_settings(),
                          "source_run_dir": str(saved.run_dir)},
            progress_metric="eval_best_mean_lap_s", progress=cfg.progress)
        return _finish(cfg, run_dir, keeper, result, agent, dt, t_start)
    finally:
        env.close()


def _finish(cfg: FinetuneConfig, run_dir: Path, keeper: BestKeeper, result: Any, template: AgentState, dt: float,
            t_start: float) -> dict[str, Any]:
    """The best agent's final laps (unless interrupted), summary.json and the last line."""
    env_steps = int(result.carry.agent.env_steps)
    interrupted = result.stop_reason in INTERRUPTED
    final = None
    if not interrupted:
        best = keeper.best_agent(template)
        final = keeper.drive(best, cfg.final_laps)
        keeper.save_state()
    game_minutes = (env_steps * dt + keeper.state.get("eval_game_s", 0.0)) / 60.0
    start, base = keeper.state.get("start", {}), keeper.state.get("baseline", {})
    summary = {
        "clean_lap_rate": final["clean_lap_rate"] if final else float("nan"),
        "mean_lap_s": final["mean_lap_s"] if final else float("nan"),
        "start_mean_lap_s": _num(start.get("mean_lap_s")),
        "start_clean_lap_rate": _num(start.get("clean_lap_rate")),
        "baseline_lap_s": _num(base.get("mean_lap_s")),
        "game_minutes": game_minutes,
        "env_steps": env_steps,
        "updates": int(result.carry.agent.updates),
        "best": keeper.state.get("best"),
        "final": _brief(final) if final else None,
        "stop_reason": result.stop_reason,
        "wall_min": (time.monotonic() - t_start) / 60.0,
    }
    write_json_atomic(run_dir / "summary.json", {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                                 for k, v in summary.items()})
    if interrupted:
        print(f"interrupted ({result.stop_reason}) after {env_steps} game steps; checkpoint written in "
              f"{run_dir / CHECKPOINTS_DIR}; exit status {EXIT_INTERRUPTED}: run the same command to resume", flush=True)
    else:
        print(f"best agent ({run_dir / BEST_AGENT_DIR}, from {summary['best']['env_steps']} game steps) over "
              f"{cfg.final_laps} laps: clean-lap rate {summary['clean_lap_rate']:.2f}, mean clean lap "
              f"{summary['mean_lap_s']:.2f} s", flush=True)
    print(summary_line(summary), flush=True)
    return summary


def summary_line(s: dict[str, Any]) -> str:
    return (f"clean_lap_rate={s['clean_lap_rate']:.3f} mean_lap_s={s['mean_lap_s']:.2f} "
            f"start_mean_lap_s={s['start_mean_lap_s']:.2f} baseline_lap_s={s['baseline_lap_s']:.2f} "
            f"game_minutes={s['game_minutes']:.2f}")


# ----------------------------------------------------------------------------- command line

_HELP = {
    "agent": "the surrogate-trained agent: a run dir of train_crossq.py, its best_agent/ or checkpoints/, or one step",
    "run_dir": "default runs/finetune-<source run>-<time>; the same command again resumes the run there",
    "game_mode": "lockstep (the game waits for each action) or realtime",
    "address": "the plugin's lockstep (or hello/track) address",
    "telemetry_address": "realtime: the plugin's PUB",
    "action_address": "realtime: the plugin's PULL",
    "game_seed": "every game episode is reset with this seed (CarRacing: 0 keeps its served track)",
    "track": "the game's centre line (TUM CSV or bundled name) when the game serves none",
    "surrogate": "fitted-surrogate JSON the agent trained on (control period, input delay); default the run's",
    "game_minutes": "game time of training; evaluation laps come on top",
    "budget_minutes": "wall clock of the command (0: no limit)",
    "seed_steps": "game steps the agent drives (its own policy) before its first update",
    "updates_per_step": "gradient updates per game step",
    "learning_rate": "0: the source run's",
    "buffer_size": "game transitions kept",
    "critic_stats": "the critics' batch statistics: keep the surrogate's, or reset them",
    "entropy": "the entropy coefficient: keep the surrogate's, or reset it to the initial one",
    "surrogate_ratio": "share of each batch from the source run's surrogate replay buffer (0.5: RLPD; 0: off)",
    "episode_steps": "training episode limit on the game (0: two laps at 60%% of the reference pace)",
    "final_laps": "laps of the start, baseline and final evaluations",
    "checkpoint_every_minutes": "also checkpoint after this much wall clock since the last",
    "spot_metadata_url": f"EC2 metadata service polled for a spot notice ('' = off); a notice, SIGTERM or SIGINT "
                         f"checkpoints and exits with status {EXIT_INTERRUPTED}",
}


def build_parser() -> argparse.ArgumentParser:
    d = FinetuneConfig(agent="-")
    p = argparse.ArgumentParser(
        prog="finetune_real.py",
        description="Fine-tune a surrogate-trained CrossQ driver on the game; the last line printed is "
        "clean_lap_rate=... mean_lap_s=... start_mean_lap_s=... baseline_lap_s=... game_minutes=...")
    for f in dataclasses.fields(FinetuneConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(d, f.name)
        if f.name == "agent":
            p.add_argument(flag, required=True, help=_HELP[f.name])
        elif isinstance(default, bool):
            p.add_argument(f"--no-{f.name.replace('_', '-')}", dest=f.name, action="store_false",
                           help=f"turn off: {f.name.replace('_', ' ')}")
        else:
            choices = {"game_mode": ("lockstep", "realtime"), "critic_stats": CHOICES, "entropy": CHOICES}.get(f.name)
            p.add_argument(flag, type=type(default), default=default, choices=choices,
                           help=_HELP.get(f.name, "") + f" (default {default!r})")
    return p


def parse_args(argv: Sequence[str] | None = None) -> FinetuneConfig:
    try:
        return FinetuneConfig(**vars(build_parser().parse_args(argv)))
    except ValueError as e:
        raise SystemExit(f"finetune_real.py: {e}") from None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run(parse_args(argv))
