"""Training loops for CrossQ.

- ``make_train_iteration``: the whole interaction + learning loop for a functional JAX env
  (``racerl_jax.envs`` interface), N vmapped envs, compiled into one ``lax.scan``.
- ``HostLoop``: the same agent, ``act`` and ``update`` for envs that are not JAX (any
  ``gymnasium.Env`` or gymnasium vector env; later the real game over the bridge).
- ``train``: the driver that runs jitted chunks from Python with progress, evaluation,
  logging, checkpoints and step/wall-clock budgets.
"""

from __future__ import annotations

import dataclasses
import math
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from racerl_jax import crossq, replay
from racerl_jax.collapse import CollapseGuard
from racerl_jax.crossq import AgentState, CrossQConfig
from racerl_jax.replay import ReplayBuffer, Transition
from racerl_jax.envs import batched_step
from racerl_jax.spot import SpotConfig

# ----------------------------------------------------------------------------- shared pieces


def scale_action(action, low: np.ndarray, high: np.ndarray, overshoot: float = 0.0, xp=jnp):
    """Map the agent's [-1, 1] actions linearly onto the env's [low, high] widened by
    ``overshoot`` (a fraction of the range) at each end, clipped to [low, high]. ``xp=np`` for
    host-side numpy actions."""
    low = xp.asarray(low, xp.float32)
    high = xp.asarray(high, xp.float32)
    span = high - low
    out = low - overshoot * span + (action + 1.0) * 0.5 * (1.0 + 2.0 * overshoot) * span
    return xp.clip(out, low, high) if overshoot else out


def driving_action(agent, obs: jax.Array, low, high, key: jax.Array) -> jax.Array:
    """The agent's deterministic action for one observation, in the env's units: what every
    evaluation, recording and game drive sends."""
    return scale_action(crossq.act(agent, obs[None], key, deterministic=True)[0], low, high,
                        agent.config.action_overshoot)


def _run_updates(
    agent: AgentState, buffer: ReplayBuffer, num_updates: int, config: CrossQConfig,
    lr_scale: jax.Array | float = 1.0, entropy_shift: jax.Array | float = 0.0,
    actor_view: crossq.ActorView | None = None, other: ReplayBuffer | None = None, from_other: int = 0,
) -> tuple[AgentState, dict[str, jax.Array]]:
    """``num_updates`` gradient steps (scan), each on a fresh batch (``from_other`` of its transitions
    drawn from ``other``: demonstrations, or a fine-tune's surrogate buffer); returns mean metrics."""

    def body(a: AgentState, _: None) -> tuple[AgentState, dict]:
        key, k_batch = jax.random.split(a.key)
        if other is None or from_other == 0:
            batch = replay.sample(buffer, k_batch, config.batch_size)
        else:
            batch = replay.sample_mixed(buffer, other, k_batch, config.batch_size, from_other)
        a, metrics = crossq.update(a.replace(key=key), batch, config, lr_scale, entropy_shift, actor_view)
        return a, metrics

    agent, metrics = jax.lax.scan(body, agent, None, length=num_updates)
    return agent, jax.tree.map(jnp.nanmean, metrics)


def _nan_metrics() -> dict[str, jax.Array]:
    nan = jnp.full((), jnp.nan, jnp.float32)
    return {k: nan for k in ("critic_loss", "q_mean", "alpha", "actor_loss", "entropy", "alpha_loss", "policy_change")}


def _maybe_update(
    agent: AgentState, buffer: ReplayBuffer, num_updates: int, config: CrossQConfig,
    lr_scale: jax.Array | float = 1.0, entropy_shift: jax.Array | float = 0.0,
    actor_view: crossq.ActorView | None = None, other: ReplayBuffer | None = None, from_other: int = 0,
) -> tuple[AgentState, dict[str, jax.Array]]:
    ready = (agent.env_steps >= config.learning_starts) & (buffer.size > 0)
    return jax.lax.cond(
        ready,
        lambda a: _run_updates(a, buffer, num_updates, config, lr_scale, entropy_shift, actor_view, other,
                               from_other),
        lambda a: (a, _nan_metrics()),
        agent,
    )


def default_updates_per_iter(config: CrossQConfig, num_envs: int) -> int:
    """Keeps the update-to-data ratio: one iteration collects ``num_envs`` transitions."""
    return config.utd_ratio * num_envs


# ----------------------------------------------------------------------------- jitted loop


@struct.dataclass
class EpisodeStats:
    running_return: jax.Array  # (N,) return so far of each env's current episode
    running_length: jax.Array  # (N,) int32
    last_return: jax.Array  # (N,) return of each env's last finished episode (NaN before one)


@struct.dataclass
class TrainCarry:
    agent: AgentState
    buffer: ReplayBuffer
    env_state: Any
    obs: jax.Array  # (N, obs_size)
    key: jax.Array
    episodes: EpisodeStats


def init_train_carry(env: Any, env_params: Any, config: CrossQConfig, num_envs: int, key: jax.Array) -> TrainCarry:
    """Fresh agent, empty buffer and N freshly reset envs (one compiled call)."""
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if config.buffer_size < num_envs:
        raise ValueError(
            f"CrossQConfig.buffer_size={config.buffer_size} is smaller than num_envs={num_envs}; "
            "one env step must fit in the buffer"
        )
    return _init_carry(env, config, num_envs, env_params, key)


# Jitted, because run eagerly the initialisation dispatches a few hundred small ops, each
# compiled on its first call (over 10 s of a run's start on a CPU).
@partial(jax.jit, static_argnums=(0, 1, 2))
def _init_carry(env: Any, config: CrossQConfig, num_envs: int, env_params: Any, key: jax.Array) -> TrainCarry:
    k_agent, k_reset, key = jax.random.split(key, 3)
    agent = crossq.init_agent(k_agent, env.observation_size, env.action_size, config)
    obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_reset, num_envs), env_params)
    buffer = replay.init(config.buffer_size, env.observation_size, env.action_size)
    episodes = EpisodeStats(
        running_return=jnp.zeros((num_envs,), jnp.float32),
        running_length=jnp.zeros((num_envs,), jnp.int32),
        last_return=jnp.full((num_envs,), jnp.nan, jnp.float32),
    )
    return TrainCarry(agent=agent, buffer=buffer, env_state=env_state, obs=obs, key=key, episodes=episodes)


def make_train_iteration(
    env: Any, env_params: Any, config: CrossQConfig, num_envs: int, updates_per_iter: int | None = None,
    demos: ReplayBuffer | None = None, demo_share: float = 0.0,
) -> Callable[[TrainCarry, int], tuple[TrainCarry, dict[str, jax.Array]]]:
    """Returns ``run(carry, num_iterations, lr_scale=1.0, entropy_shift=0.0) -> (carry, stats)``,
    one jitted call (for the chunk, ``lr_scale`` multiplies the actor's and critics' learning rate
    and ``entropy_shift`` is added to the target entropy).

    One iteration: act on all N envs (uniform random before ``learning_starts`` env steps),
    step them, insert the N transitions, then ``updates_per_iter`` gradient updates.
    ``stats`` holds the mean return/length of episodes finished in the chunk (NaN if none),
    their count, and the mean update metrics. The env params are an argument of the compiled
    loop, not constants baked into it, so the same env, config, N and chunk length compile once
    per process whatever track or car the params hold (resume, sweeps, tests).

    With ``demos`` (``racerl_jax.demos.collect``: a driver's transitions, kept apart from the replay
    buffer and never overwritten), ``demo_share`` of every batch is drawn from them (RLPD's
    symmetric sampling at 0.5).
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    updates = default_updates_per_iter(config, num_envs) if updates_per_iter is None else updates_per_iter
    if updates < 0:
        raise ValueError(f"updates_per_iter must be >= 0, got {updates}")
    low, high = np.asarray(env.action_low, np.float32), np.asarray(env.action_high, np.float32)
    if low.shape != (env.action_size,) or high.shape != (env.action_size,) or np.any(high <= low):
        raise ValueError(
            f"env.action_low/action_high must have shape ({env.action_size},) with high > low; "
            f"got {low!r} and {high!r}"
        )
    from_demo = 0
    if demos is not None:
        from_demo = int(round(demo_share * config.batch_size))
        if not 0 < from_demo < config.batch_size:
            raise ValueError(f"a demonstration share of {demo_share} of a batch of {config.batch_size} is {from_demo} "
                             "transitions; give a share that leaves both the demonstrations and the agent's own "
                             "transitions at least one")

    def run(carry: TrainCarry, num_iterations: int, lr_scale: float = 1.0,
            entropy_shift: float = 0.0) -> tuple[TrainCarry, dict[str, jax.Array]]:
        return _train_chunk(env, config, num_envs, updates, num_iterations, from_demo, carry, env_params,
                            jnp.asarray(lr_scale, jnp.float32), jnp.asarray(entropy_shift, jnp.float32), demos)

    return run


@partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5), donate_argnums=(6,))
def _train_chunk(env: Any, config: CrossQConfig, num_envs: int, updates: int, num_iterations: int, from_demo: int,
                 carry: TrainCarry, env_params: Any, lr_scale: jax.Array, entropy_shift: jax.Array,
                 demos: ReplayBuffer | None) -> tuple[TrainCarry, dict[str, jax.Array]]:
    low, high = np.asarray(env.action_low, np.float32), np.asarray(env.action_high, np.float32)
    v_step = batched_step(env)
    # An env with an actor's view (RacingEnv.actor_view: a game's sensor noise) has the actor act and
    # learn on it; the buffer and the critics keep the clean observations.
    view = getattr(env, "actor_view", None)
    actor_view = None if view is None else (lambda obs, k: view(env_params, obs, k))

    def iteration(carry: TrainCarry, _: None) -> tuple[TrainCarry, dict]:
        agent = carry.agent
        key, k_act, k_rand, k_step = jax.random.split(carry.key, 4)
        seen = carry.obs if actor_view is None else actor_view(carry.obs, jax.random.fold_in(k_act, 1))
        policy_action = crossq.act(agent, seen, k_act, deterministic=False)
        random_action = jax.random.uniform(k_rand, policy_action.shape, jnp.float32, -1.0, 1.0)
        action = jnp.where(agent.env_steps < config.learning_starts, random_action, policy_action)
        obs, env_state, reward, terminated, truncated, info = v_step(
            k_step, carry.env_state, scale_action(action, low, high, config.action_overshoot),
            env_params
        )
        buffer = replay.add_batch(
            carry.buffer,
            Transition(
                obs=carry.obs,
                action=action,
                reward=reward,
                next_obs=info["final_obs"],
                terminated=terminated.astype(jnp.float32),
            ),
        )
        agent = agent.replace(env_steps=agent.env_steps + num_envs)
        agent, metrics = _maybe_update(agent, buffer, updates, config, lr_scale, entropy_shift, actor_view, demos,
                                       from_demo)

        done = terminated | truncated
        ep_return = carry.episodes.running_return + reward
        ep_length = carry.episodes.running_length + 1
        episodes = EpisodeStats(
            running_return=jnp.where(done, 0.0, ep_return),
            running_length=jnp.where(done, 0, ep_length),
            last_return=jnp.where(done, ep_return, carry.episodes.last_return),
        )
        done_f = done.astype(jnp.float32)
        out = {
            "finished": jnp.sum(done_f),
            "return_sum": jnp.sum(ep_return * done_f),
            "length_sum": jnp.sum(ep_length * done_f),
            **metrics,
        }
        new_carry = TrainCarry(agent=agent, buffer=buffer, env_state=env_state, obs=obs, key=key, episodes=episodes)
        return new_carry, out

    carry, outs = jax.lax.scan(iteration, carry, None, length=num_iterations)
    finished = jnp.sum(outs.pop("finished"))
    denom = jnp.where(finished > 0, finished, jnp.nan)
    stats = {
        "episode_return": jnp.sum(outs.pop("return_sum")) / denom,
        "episode_length": jnp.sum(outs.pop("length_sum")) / denom,
        "episodes": finished,
        **jax.tree.map(jnp.nanmean, outs),
    }
    return carry, stats


# ----------------------------------------------------------------------------- evaluation


def make_evaluate(
    env: Any, env_params: Any, num_envs: int = 10, max_steps: int | None = None
) -> Callable[[AgentState, jax.Array], jax.Array]:
    """Jitted ``evaluate(agent, key) -> (num_envs,)`` returns of one deterministic episode per env.

    Scans ``max_steps`` steps (default: ``env_params.max_steps``) and counts each env's reward
    until its first episode ends, so it works for envs whose episodes end at different times.
    """
    low, high = np.asarray(env.action_low, np.float32), np.asarray(env.action_high, np.float32)
    if max_steps is None:
        if not hasattr(env_params, "max_steps"):
            raise ValueError("make_evaluate: env_params has no max_steps; pass max_steps (the episode step limit)")
        max_steps = int(env_params.max_steps)

    step = batched_step(env)

    def evaluate(agent: AgentState, key: jax.Array) -> jax.Array:
        k_reset, k_steps = jax.random.split(key)
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_reset, num_envs), env_params)

        def body(carry: tuple, k: jax.Array) -> tuple[tuple, None]:
            obs, state, ret, alive = carry
            action = crossq.act(agent, obs, k, deterministic=True)
            obs, state, reward, term, trunc, _ = step(
                k, state, scale_action(action, low, high, agent.config.action_overshoot),
                env_params,
            )
            ret = ret + jnp.where(alive, reward, 0.0)
            return (obs, state, ret, alive & ~(term | trunc)), None

        init = (obs, state, jnp.zeros((num_envs,), jnp.float32), jnp.ones((num_envs,), bool))
        (_, _, ret, _), _ = jax.lax.scan(body, init, jax.random.split(k_steps, max_steps))
        return ret

    return jax.jit(evaluate)


# ----------------------------------------------------------------------------- host loop


@partial(jax.jit, static_argnames=("deterministic",))
def act_and_value(agent: AgentState, obs: jax.Array, key: jax.Array,
                  deterministic: bool = False) -> tuple[jax.Array, jax.Array]:
    """``crossq.act``'s actions (the same for the same key) and the critics' mean value of them, in
    one compiled call: the per-step record the dashboard shows (``racerl_jax.run_log.StepLog``)."""
    action = crossq.act(agent, obs, key, deterministic)
    q, _ = crossq.apply_critics(agent.config, agent.critic_params, agent.critic_stats, obs, action, train=False)
    return action, jnp.mean(q, axis=0)


# Donated: without it every step would copy the whole buffer (hundreds of MB at the default size).
@partial(jax.jit, donate_argnums=0)
def _host_insert(buffer: ReplayBuffer, batch: Transition) -> ReplayBuffer:
    return replay.add_batch(buffer, batch)


_host_updates = jax.jit(_maybe_update, static_argnums=(2, 3))


class HostLoop:
    """Drives a non-JAX env (``gymnasium.Env`` or ``gymnasium.vector.VectorEnv``) with the same
    jitted ``act``/``update`` as the jit loop. Keeps the env's current observation between
    calls to ``run`` so training can proceed in chunks. With ``step_log`` (a
    ``racerl_jax.run_log.StepLog``; ``train_host`` opens one in the run dir) every step of the
    first env is recorded: the policy's and the applied action, the critics' value, safety events."""

    def __init__(self, env: Any, config: CrossQConfig, seed: int = 0, updates_per_step: int | None = None,
                 step_log: Any = None, random_warmup: bool = True, update_fn: Callable | None = None) -> None:
        """``random_warmup``: uniform random actions before ``config.learning_starts`` env steps
        (False: the policy acts from the first step and learning waits: a fine-tune seeds its buffer
        with the agent's own laps). ``update_fn``: in place of the plain updates, with the signature
        of ``_maybe_update`` (a fine-tune's that mixes in surrogate transitions)."""
        import gymnasium as gym
        from gymnasium.vector import AutoresetMode, VectorEnv

        self.env = env
        self.config = config
        self.step_log = step_log
        self.random_warmup = random_warmup
        self.update_fn = _host_updates if update_fn is None else update_fn
        self.vector = isinstance(env, VectorEnv)
        self.same_step = False
        space = env.single_action_space if self.vector else env.action_space
        obs_space = env.single_observation_space if self.vector else env.observation_space
        if not isinstance(space, gym.spaces.Box) or not isinstance(obs_space, gym.spaces.Box):
            raise ValueError(f"HostLoop needs Box observation and action spaces, got {obs_space} and {space}")
        if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
            raise ValueError(f"HostLoop needs a bounded action space to map [-1, 1] onto, got {space}")
        self.num_envs = env.num_envs if self.vector else 1
        self.obs_size = int(np.prod(obs_space.shape))
        self.action_size = int(np.prod(space.shape))
        self.low = space.low.astype(np.float32).reshape(-1)
        self.high = space.high.astype(np.float32).reshape(-1)
        self.updates_per_step = (
            default_updates_per_iter(config, self.num_envs) if updates_per_step is None else updates_per_step
        )
        if self.vector:
            mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
            if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
                raise ValueError(f"HostLoop supports NEXT_STEP and SAME_STEP vector autoreset, got {mode}")
            self.same_step = mode == AutoresetMode.SAME_STEP
            obs, _ = env.reset(seed=seed)
        else:
            obs, _ = env.reset(seed=seed)
            obs = obs[None]
        self.obs = np.asarray(obs, np.float32).reshape(self.num_envs, self.obs_size)
        # NEXT_STEP vector envs spend one step resetting an env that just finished.
        self.resetting = np.zeros(self.num_envs, bool)
        self.running_return = np.zeros(self.num_envs, np.float64)
        self.episode_returns: list[float] = []

    def restart(self) -> None:
        """Start new episodes, e.g. after an evaluation drove the same env: the interrupted
        episodes end without a terminal transition (their return is not counted)."""
        obs, _ = self.env.reset()
        self.obs = np.asarray(obs, np.float32).reshape(self.num_envs, self.obs_size)
        self.resetting[:] = False
        self.running_return[:] = 0.0
        if self.step_log is not None:
            self.step_log.new_episode()

    def init_buffer(self) -> ReplayBuffer:
        return replay.init(self.config.buffer_size, self.obs_size, self.action_size)

    def _env_step(self, env_action: np.ndarray,
                  value: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Returns (next obs for acting, final obs for bootstrapping, reward, terminated, truncated)."""
        if not self.vector:
            obs, reward, term, trunc, info = self.env.step(env_action[0].reshape(self.env.action_space.shape))
            if self.step_log is not None:  # before a reset replaces the env's frame
                self.step_log.write(env_action[0], info.get("applied_action", env_action[0]),
                                    None if value is None else float(value[0]), float(reward), bool(term or trunc),
                                    info, getattr(self.env, "last_frame", None))
            final = np.asarray(obs, np.float32)[None]
            if term or trunc:
                obs, _ = self.env.reset()
            return np.asarray(obs, np.float32)[None], final, np.array([reward]), np.array([term]), np.array([trunc])
        obs, reward, term, trunc, info = self.env.step(env_action.reshape((self.num_envs, *self.env.single_action_space.shape)))
        obs = np.asarray(obs, np.float32).reshape(self.num_envs, self.obs_size)
        if self.step_log is not None:  # the first env's step
            self.step_log.write(env_action[0], env_action[0], None if value is None else float(value[0]),
                                float(np.asarray(reward)[0]), bool(np.asarray(term)[0] or np.asarray(trunc)[0]))
        final = obs.copy()
        if self.same_step and "final_obs" in info:
            for i in np.flatnonzero(info["_final_obs"]):
                final[i] = np.asarray(info["final_obs"][i], np.float32).reshape(-1)
        return obs, final, np.asarray(reward), np.asarray(term), np.asarray(trunc)

    def run(
        self, agent: AgentState, buffer: ReplayBuffer, key: jax.Array, num_env_steps: int, lr_scale: float = 1.0,
        entropy_shift: float = 0.0,
    ) -> tuple[AgentState, ReplayBuffer, jax.Array, dict[str, float]]:
        """Collect at least ``num_env_steps`` transitions (over all envs), learning as it goes
        (``lr_scale``, ``entropy_shift``: as for ``make_train_iteration``)."""
        config = self.config
        steps = 0
        metrics: dict[str, Any] = {}
        while steps < num_env_steps:
            key, k_act = jax.random.split(key)
            value = None
            if self.random_warmup and int(agent.env_steps) < config.learning_starts:
                action = np.asarray(jax.random.uniform(k_act, (self.num_envs, self.action_size), jnp.float32, -1.0, 1.0))
            elif self.step_log is not None:
                action, value = (np.asarray(a) for a in act_and_value(agent, jnp.asarray(self.obs), k_act))
            else:
                action = np.asarray(crossq.act(agent, jnp.asarray(self.obs), k_act, deterministic=False))
            # numpy: no device round trip
            env_action = scale_action(action, self.low, self.high, config.action_overshoot, xp=np)
            next_obs, final_obs, reward, term, trunc = self._env_step(env_action, value)
            valid = ~self.resetting
            n_valid = int(valid.sum())
            if n_valid:
                batch = Transition(
                    obs=jnp.asarray(self.obs[valid]),
                    action=jnp.asarray(action[valid]),
                    reward=jnp.asarray(reward[valid], jnp.float32),
                    next_obs=jnp.asarray(final_obs[valid]),
                    terminated=jnp.asarray(term[valid], jnp.float32),
                )
                buffer = _host_insert(buffer, batch)
                agent = agent.replace(env_steps=agent.env_steps + n_valid)
                agent, metrics = self.update_fn(agent, buffer, self.updates_per_step * n_valid // self.num_envs, config,
                                                jnp.float32(lr_scale), jnp.float32(entropy_shift))
            done = (term | trunc) & valid
            self.running_return += np.where(valid, reward, 0.0)
            for i in np.flatnonzero(done):
                self.episode_returns.append(float(self.running_return[i]))
            self.running_return[done] = 0.0
            if self.vector and not self.same_step:
                self.resetting = done
            self.obs = next_obs
            steps += n_valid
        stats = {k: float(v) for k, v in metrics.items()}
        return agent, buffer, key, stats


# ----------------------------------------------------------------------------- driver


@dataclasses.dataclass
class TrainResult:
    carry: TrainCarry
    history: list[dict[str, float]]
    stop_reason: str  # "steps", "wall_clock", "signal" or "spot" (racerl_jax.spot.INTERRUPTED: resume me)
    collapses: int = 0  # critic collapses the guard saw (racerl_jax.collapse)
    recoveries: int = 0  # ... and rolled back from


def train(
    env: Any,
    env_params: Any,
    config: CrossQConfig,
    *,
    total_env_steps: int,
    num_envs: int = 1,
    updates_per_iter: int | None = None,
    seed: int = 0,
    chunk_iterations: int = 500,
    demos: ReplayBuffer | None = None,
    demo_share: float = 0.0,
    **driver: Any,
) -> TrainResult:
    """Train CrossQ on a functional JAX env by running jitted chunks of ``chunk_iterations``
    iterations (one step of all ``num_envs`` envs, then the updates), with ``demo_share`` of every
    batch from ``demos`` where given. ``driver``: the keyword arguments of :func:`drive` (budget, run
    dir, evaluation, checkpoints, progress)."""
    _check_totals(total_env_steps, num_envs, chunk_iterations)
    run = make_train_iteration(env, env_params, config, num_envs, updates_per_iter, demos, demo_share)
    carry = init_train_carry(env, env_params, config, num_envs, jax.random.PRNGKey(seed))
    meta = {"crossq": config.to_dict(), "num_envs": num_envs, "updates_per_iter": updates_per_iter, "seed": seed}
    return drive(run, carry, num_envs, total_env_steps=total_env_steps, chunk_iterations=chunk_iterations,
                 run_meta=meta, **driver)


@struct.dataclass
class HostCarry:
    """What a host-loop run checkpoints: the agent, its replay buffer and the RNG key (the env
    itself lives outside JAX: a resumed run starts new episodes)."""

    agent: AgentState
    buffer: ReplayBuffer
    key: jax.Array


def train_host(
    loop: "HostLoop",
    *,
    total_env_steps: int,
    seed: int = 0,
    chunk_env_steps: int = 500,
    agent: AgentState | None = None,
    **driver: Any,
) -> TrainResult:
    """Train CrossQ with a :class:`HostLoop` (a Gymnasium env, the real game) under the same
    driver as :func:`train`: budget, evaluation, logs, checkpoints of agent and buffer, resume
    (a fresh agent, or ``agent`` to go on training one: a fine-tune);
    with a ``run_dir``, every step in ``steps.jsonl`` (``racerl_jax.run_log.StepLog``) unless the
    loop already has a step log."""
    _check_totals(total_env_steps, loop.num_envs, 1)
    key, k_agent = jax.random.split(jax.random.PRNGKey(seed))
    if agent is None:
        agent = crossq.init_agent(k_agent, loop.obs_size, loop.action_size, loop.config)
    carry = HostCarry(agent=agent, buffer=loop.init_buffer(), key=key)

    def run(carry: HostCarry, iterations: int, lr_scale: float = 1.0,
            entropy_shift: float = 0.0) -> tuple[HostCarry, dict[str, float]]:
        before = len(loop.episode_returns)
        agent, buffer, key, stats = loop.run(carry.agent, carry.buffer, carry.key, iterations * loop.num_envs,
                                             lr_scale, entropy_shift)
        finished = loop.episode_returns[before:]
        stats["episodes"] = float(len(finished))
        stats["episode_return"] = float(np.mean(finished)) if finished else float("nan")
        return HostCarry(agent=agent, buffer=buffer, key=key), stats

    meta = {"crossq": loop.config.to_dict(), "num_envs": loop.num_envs, "updates_per_step": loop.updates_per_step,
            "seed": seed, "host_loop": True}
    own_log = driver.get("run_dir") is not None and loop.step_log is None
    if own_log:
        from racerl_jax.run_log import StepLog

        loop.step_log = StepLog(driver["run_dir"])
    try:
        return drive(run, carry, loop.num_envs, total_env_steps=total_env_steps,
                     chunk_iterations=max(1, chunk_env_steps // loop.num_envs), run_meta=meta, **driver)
    finally:
        if own_log:
            loop.step_log.close()
            loop.step_log = None


def _check_totals(total_env_steps: int, num_envs: int, chunk_iterations: int) -> None:
    if not 1 <= total_env_steps < 2**31 - num_envs:
        raise ValueError(
            f"total_env_steps must be in [1, 2**31 - num_envs) (the step counters are int32), got {total_env_steps}"
        )
    if chunk_iterations < 1:
        raise ValueError(f"chunk_iterations must be >= 1, got {chunk_iterations}")


def drive(
    run: Callable[[Any, int, float], tuple[Any, Mapping[str, Any]]],
    carry: Any,
    num_envs: int,
    *,
    total_env_steps: int,
    chunk_iterations: int,
    run_meta: Mapping[str, Any],
    max_wall_seconds: float | None = None,
    run_dir: str | Path | None = None,
    eval_fn: Callable[[AgentState], Mapping[str, float]] | None = None,
    eval_every_env_steps: int | None = None,
    checkpoint_every_env_steps: int | None = None,
    checkpoint_every_seconds: float | None = None,
    spot: SpotConfig | None = None,
    resume: bool = True,
    extra_config: Mapping[str, Any] | None = None,
    progress_metric: str = "episode_return",
    progress: bool = True,
    plot_curve: bool = True,
    lr_schedule: Callable[[float], float] | None = None,
    entropy_schedule: Callable[[float], float] | None = None,
    guard: CollapseGuard | None = None,
) -> TrainResult:
    """Run ``run(carry, iterations, lr_scale, entropy_shift)`` chunk after chunk (``carry.agent``
    counts env steps and updates) until ``total_env_steps`` or ``max_wall_seconds``.

    ``lr_schedule(f)`` gives each chunk's learning-rate factor from ``f`` in [0, 1], how much of the
    budget is spent when the chunk starts: the larger of the env steps' share of ``total_env_steps``
    and the wall clock's share of ``max_wall_seconds`` (of this call: a resumed run anneals over its
    own budget, from where its env steps stand). It is logged as ``lr_scale``. ``entropy_schedule(f)``
    likewise gives what is added to the agent's target entropy, logged as ``entropy_shift``.
    ``guard`` (``racerl_jax.collapse.CollapseGuard``) watches every chunk for a critic collapse and
    rolls the agent back from one, at a lower learning rate (logged as ``collapse`` and in lr_scale).

    With ``run_dir``: logs (metrics.jsonl, TensorBoard, and unless ``plot_curve`` is False (a command
    that draws its own) the learning-curve PNG), ``run_meta`` and
    ``extra_config`` (the calling command's settings) as config.json, orbax checkpoints of the
    carry every ``checkpoint_every_env_steps`` and every ``checkpoint_every_seconds`` of wall clock
    (whichever comes first: on the game a run of env steps can take an hour, and a hard kill loses
    what came after the last checkpoint) and on a stop (``racerl_jax.spot``: SIGINT, SIGTERM, SIGBREAK,
    and with ``spot`` a spot interruption notice, which ends the run with stop reason "spot"; a
    rebalance recommendation only checkpoints), and resumption from the latest checkpoint when
    ``resume``. ``eval_fn(agent)`` returns metrics merged into the
    history; ``progress_metric`` names the metric the progress bar shows.
    """
    from tqdm import tqdm

    from racerl_jax import checkpoint as ckpt
    from racerl_jax import spot as spot_lib
    from racerl_jax.logs import RunLogger

    manager = logger = None
    if run_dir is not None:
        run_dir = Path(run_dir)
        ckpt.write_config(run_dir, {**run_meta, **(extra_config or {})})
        manager = ckpt.Checkpointer(run_dir / "checkpoints")
        if resume and manager.latest_step() is not None:
            carry = manager.restore(carry)
        logger = RunLogger(run_dir)

    history: list[dict[str, float]] = []
    start = time.monotonic()
    env_steps = int(carry.agent.env_steps)
    next_eval = _next_multiple(env_steps, eval_every_env_steps)
    next_ckpt = _next_multiple(env_steps, checkpoint_every_env_steps)
    if checkpoint_every_seconds is not None and not checkpoint_every_seconds > 0:
        raise ValueError(f"checkpoint_every_seconds must be > 0, got {checkpoint_every_seconds}")
    last_ckpt_t = start
    # With a wall-clock budget the bar runs over the budget's seconds (its ETA is then the end of the
    # run); without one, over env steps.
    by_time = max_wall_seconds is not None
    bar = tqdm(total=round(max_wall_seconds) if by_time else total_env_steps, initial=0 if by_time else env_steps,
               disable=not progress, unit="s" if by_time else "step", dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {elapsed}<{remaining} budget{postfix}" if by_time else None)
    stop_reason = "steps"
    latest: dict[str, float] = {}
    with spot_lib.StopSignal(spot) as stop:
        while env_steps < total_env_steps:
            iters = min(chunk_iterations, math.ceil((total_env_steps - env_steps) / num_envs))
            t0 = time.monotonic()
            updates_before = int(carry.agent.updates)
            spent = env_steps / total_env_steps
            if max_wall_seconds is not None:
                spent = max(spent, (t0 - start) / max_wall_seconds if max_wall_seconds > 0 else 1.0)
            spent = min(spent, 1.0)
            lr_scale = 1.0 if lr_schedule is None else float(lr_schedule(spent))
            if guard is not None:
                lr_scale *= guard.lr_multiplier
            entropy_shift = 0.0 if entropy_schedule is None else float(entropy_schedule(spent))
            carry, stats = run(carry, iters, lr_scale, entropy_shift)
            stats = {k: float(v) for k, v in stats.items()}
            dt = time.monotonic() - t0
            env_steps = int(carry.agent.env_steps)
            record = {
                "env_steps": env_steps,
                "updates": int(carry.agent.updates),
                "wall_s": time.monotonic() - start,
                "env_steps_per_s": iters * num_envs / dt,
                "updates_per_s": (int(carry.agent.updates) - updates_before) / dt,
                "lr_scale": lr_scale,
                **({} if entropy_schedule is None else {"entropy_shift": entropy_shift}),
                **stats,
            }
            if eval_fn is not None and next_eval is not None and env_steps >= next_eval:
                record.update({f"eval_{k}": float(v) for k, v in eval_fn(carry.agent).items()})
                next_eval = _next_multiple(env_steps, eval_every_env_steps)
            if guard is not None and guard.observe(record, carry.agent):
                back = guard.recover(carry.agent)
                record["collapse"] = 1.0
                if back is not None:
                    carry = carry.replace(agent=back[0])
                    record["collapse_rollback_to"] = float(back[1])
                bar.write(f"critic collapse at {env_steps} env steps (loss {record['critic_loss']:.3g}, episodes "
                          f"{record.get('episode_length', float('nan')):.0f} steps): "
                          + (f"agent rolled back to its copy from {back[1]} env steps, learning rate x"
                             f"{guard.lr_multiplier:g} from here" if back is not None else "no copy to roll back to"))
            history.append(record)
            latest.update({k: v for k, v in record.items() if not (isinstance(v, float) and math.isnan(v))})
            if logger is not None:
                logger.log(env_steps, record)
            bar.update(min(round(record["wall_s"]), bar.total) - bar.n if by_time else env_steps - bar.n)
            bar.set_postfix(
                {"env steps": env_steps, "steps/s": f"{record['env_steps_per_s']:.0f}",
                 "upd/s": f"{record['updates_per_s']:.0f}",
                 progress_metric: f"{latest.get(progress_metric, float('nan')):.3g}"},
                refresh=False,
            )
            if stop.requested:
                stop_reason = stop.reason or "signal"
                break
            if max_wall_seconds is not None and time.monotonic() - start >= max_wall_seconds:
                stop_reason = "wall_clock"
                break
            due_by_time = checkpoint_every_seconds is not None and time.monotonic() - last_ckpt_t >= checkpoint_every_seconds
            due_by_notice = stop.take_checkpoint_request()
            if manager is not None and (due_by_time or due_by_notice or (next_ckpt is not None and env_steps >= next_ckpt)):
                manager.save(env_steps, carry)
                next_ckpt = _next_multiple(env_steps, checkpoint_every_env_steps)
                last_ckpt_t = time.monotonic()
        bar.close()
        if manager is not None:
            manager.save(env_steps, carry)  # final / on signal / on wall-clock stop
            manager.close()
    if logger is not None:
        logger.close()
        if plot_curve:
            logger.plot()
    return TrainResult(carry=carry, history=history, stop_reason=stop_reason,
                       collapses=guard.collapses if guard else 0, recoveries=guard.recoveries if guard else 0)


def _next_multiple(current: int, every: int | None) -> int | None:
    if every is None:
        return None
    if every < 1:
        raise ValueError(f"a period in env steps must be >= 1, got {every}")
    return (current // every + 1) * every
