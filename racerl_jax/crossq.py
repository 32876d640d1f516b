"""CrossQ: Bhatt et al., "CrossQ: Batch Normalization in Deep Reinforcement Learning for
Greater Sample Efficiency and Simplicity", ICLR 2024.

SAC without target networks: the critics use batch renormalisation and evaluate (s, a) and
(s', a') in ONE forward pass so both halves are normalised with the same batch statistics.
Reads top to bottom: config, networks, losses, update, acting.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from racerl_jax.config_io import dataclass_from_dict
from racerl_jax.replay import Transition

# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class CrossQConfig:
    """All CrossQ hyperparameters. Defaults are the paper's (Table of hyperparameters, §4)."""

    preset: str = "paper"
    critic_hidden: tuple[int, ...] = (2048, 2048)
    actor_hidden: tuple[int, ...] = (256, 256)
    n_critics: int = 2
    learning_rate: float = 1e-3  # actor and critics
    adam_b1: float = 0.5
    adam_b2: float = 0.999
    # The reference implementation tunes the entropy coefficient with a plain Adam (b1 = 0.9).
    entropy_learning_rate: float = 1e-3
    entropy_adam_b1: float = 0.9
    init_entropy_coef: float = 1.0
    target_entropy: float | None = None  # None: -action_size
    gamma: float = 0.99
    batch_size: int = 256
    policy_delay: int = 3
    utd_ratio: int = 1  # gradient updates per env step (per transition collected)
    buffer_size: int = 1_000_000
    learning_starts: int = 5_000  # env steps with uniform random actions before learning
    # Batch renormalisation (Ioffe 2017): plain batch norm (r = 1, d = 0) for the first
    # renorm_warmup_steps updates, then r/d limits relaxed linearly to r_max/d_max over
    # renorm_relax_steps (0: switch at once, as the reference implementation does).
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    renorm_warmup_steps: int = 100_000
    renorm_relax_steps: int = 0
    r_max: float = 3.0
    d_max: float = 5.0
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    # Not in the paper. The policy's [-1, 1] maps onto the env's range widened by this fraction at
    # each end, then clipped: a tanh-Gaussian reaches its bounds only as |u| -> inf, against the
    # entropy bonus, so without a margin full throttle or full lock is never quite commanded.
    action_overshoot: float = 0.0
    # Not in the paper: CAPS (Mysore et al., "Regularizing Action Policies for Smooth Control with
    # Reinforcement Learning", ICRA 2021). The actor loss adds smooth_temporal * E||mu(s) - mu(s')||
    # (consecutive states of the replay batch) and smooth_spatial * E||mu(s) - mu(s + noise)||, noise
    # ~ N(0, smooth_spatial_std) in observation units; mu is the deterministic action, tanh(mean).
    # Policies trained for return alone jitter from step to step (bang-bang steering), which a real
    # car's actuators and a game's input filter do not forgive; a reward penalty on action changes
    # reaches the policy only through the critic and, strong enough to help, slows learning.
    smooth_temporal: float = 0.0
    smooth_spatial: float = 0.0
    smooth_spatial_std: float = 0.05

    def __post_init__(self) -> None:
        def need(cond: bool, field: str, msg: str) -> None:
            if not cond:
                raise ValueError(f"CrossQConfig.{field}={getattr(self, field)!r}: {msg}")

        object.__setattr__(self, "critic_hidden", tuple(int(w) for w in self.critic_hidden))
        object.__setattr__(self, "actor_hidden", tuple(int(w) for w in self.actor_hidden))
        need(len(self.critic_hidden) > 0 and min(self.critic_hidden) > 0, "critic_hidden", "give >= 1 positive width")
        need(len(self.actor_hidden) > 0 and min(self.actor_hidden) > 0, "actor_hidden", "give >= 1 positive width")
        need(self.n_critics >= 1, "n_critics", "must be >= 1 (the paper uses 2)")
        need(self.learning_rate > 0, "learning_rate", "must be > 0")
        need(self.entropy_learning_rate > 0, "entropy_learning_rate", "must be > 0")
        need(0 <= self.adam_b1 < 1, "adam_b1", "must be in [0, 1)")
        need(0 <= self.adam_b2 < 1, "adam_b2", "must be in [0, 1)")
        need(self.init_entropy_coef > 0, "init_entropy_coef", "must be > 0")
        need(0 <= self.gamma <= 1, "gamma", "must be in [0, 1]")
        need(self.batch_size >= 2, "batch_size", "must be >= 2 (batch statistics need two samples)")
        need(self.policy_delay >= 1, "policy_delay", "must be >= 1")
        need(self.utd_ratio >= 1, "utd_ratio", "must be >= 1")
        need(self.buffer_size >= 1, "buffer_size", "must be >= 1")
        need(self.learning_starts >= 0, "learning_starts", "must be >= 0")
        need(0 <= self.bn_momentum < 1, "bn_momentum", "must be in [0, 1)")
        need(self.bn_epsilon > 0, "bn_epsilon", "must be > 0")
        need(self.renorm_warmup_steps >= 0, "renorm_warmup_steps", "must be >= 0")
        need(self.renorm_relax_steps >= 0, "renorm_relax_steps", "must be >= 0")
        need(self.r_max >= 1, "r_max", "must be >= 1")
        need(self.d_max >= 0, "d_max", "must be >= 0")
        need(self.log_std_min < self.log_std_max, "log_std_min", "must be < log_std_max")
        need(0.0 <= self.action_overshoot < 1.0, "action_overshoot", "must be in [0, 1)")
        need(self.smooth_temporal >= 0, "smooth_temporal", "must be >= 0 (0 turns it off)")
        need(self.smooth_spatial >= 0, "smooth_spatial", "must be >= 0 (0 turns it off)")
        need(self.smooth_spatial_std > 0, "smooth_spatial_std", "must be > 0")

    @classmethod
    def paper(cls, **overrides: Any) -> "CrossQConfig":
        return cls(**{"preset": "paper", **overrides})

    @classmethod
    def cpu(cls, **overrides: Any) -> "CrossQConfig":
        """Fastest learning per wall second on a 2-core CPU. Measured on Pendulum (batch 256, one
        env): critics 2048 wide run ~4 updates/s, 256 wide ~90/s, 128 wide ~300/s, and 64-256 wide
        all reach a return of -200 within 4-5k env steps, so width buys nothing there; 128 keeps
        some capacity for the racing task. Batch renorm stays, with a shorter plain-BN warm-up
        (the run is shorter) and a short random phase."""
        base = dict(
            preset="cpu",
            critic_hidden=(128, 128),
            actor_hidden=(128, 128),
            learning_starts=1_000,
            renorm_warmup_steps=10_000,
        )
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["critic_hidden"] = list(self.critic_hidden)
        d["actor_hidden"] = list(self.actor_hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CrossQConfig":
        return dataclass_from_dict(cls, d)


# ----------------------------------------------------------------------------- networks


class BatchRenorm(nn.Module):
    """Batch renormalisation over the leading (batch) axes; features on the last axis.

    Train mode normalises with the batch statistics corrected towards the running ones,
    ``x_hat = (x - mu_B) / sigma_B * r + d`` with r, d clipped to the current limits and
    treated as constants, and updates the running statistics. Eval mode uses the running
    statistics only. Limits (r_lim, d_lim) are (1, 0), i.e. plain batch norm, for
    ``warmup_steps`` train calls, then grow linearly to (r_max, d_max) over ``relax_steps``.
    """

    momentum: float = 0.99
    epsilon: float = 1e-3
    warmup_steps: int = 100_000
    relax_steps: int = 0
    r_max: float = 3.0
    d_max: float = 5.0

    def limits(self, steps: jax.Array) -> tuple[jax.Array, jax.Array]:
        past = (steps - self.warmup_steps).astype(jnp.float32)
        if self.relax_steps > 0:
            progress = jnp.clip(past / self.relax_steps, 0.0, 1.0)
        else:
            progress = (past >= 0).astype(jnp.float32)
        return 1.0 + (self.r_max - 1.0) * progress, self.d_max * progress

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        steps = self.variable("batch_stats", "steps", lambda: jnp.zeros((), jnp.int32))
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)

        if not train:
            x_hat = (x - ra_mean.value) * jax.lax.rsqrt(ra_var.value + self.epsilon)
            return x_hat * scale + bias

        # r and d are constants to the gradient (the paper's stop-gradient); the gradient still flows
        # through the batch mean and variance, inside renorm_train.
        mean, var = jax.lax.stop_gradient(_batch_moments(x))
        std = jnp.sqrt(var + self.epsilon)
        ra_std = jnp.sqrt(ra_var.value + self.epsilon)
        r_lim, d_lim = self.limits(steps.value)
        r = jnp.clip(std / ra_std, 1.0 / r_lim, r_lim)
        d = jnp.clip((mean - ra_mean.value) / ra_std, -d_lim, d_lim)
        if not self.is_initializing():
            m = self.momentum
            ra_mean.value = m * ra_mean.value + (1 - m) * mean
            ra_var.value = m * ra_var.value + (1 - m) * var
            steps.value = steps.value + 1
        return renorm_train(x, r, d, scale, bias, self.epsilon)


def _batch_moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    return mean, jnp.mean(jnp.square(x - mean), axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def renorm_train(x: jax.Array, r: jax.Array, d: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """Train-mode batch renormalisation, ``((x - mu_B) / sigma_B * r + d) * scale + bias``, with its
    gradient in closed form (none for r and d). Autodiff's gradient through the batch statistics
    is the same function, but XLA:CPU ran it 10-15% slower per CrossQ update (cpu preset)."""
    return _renorm_forward(x, r, d, scale, bias, eps)[0]


def _renorm_forward(x, r, d, scale, bias, eps):
    mean, var = _batch_moments(x)
    inv_std = jax.lax.rsqrt(var + eps)
    x_norm = (x - mean) * inv_std
    return (x_norm * r + d) * scale + bias, (x_norm, inv_std, r, d, scale)


def _renorm_backward(eps, res, g):
    x_norm, inv_std, r, d, scale = res
    axes = tuple(range(x_norm.ndim - 1))
    n = x_norm.size // x_norm.shape[-1]
    g_sum = jnp.sum(g, axes)
    gx_sum = jnp.sum(g * x_norm, axes)
    # d/dx of the normalised batch: the direct path minus the paths through its mean and variance.
    dx = (scale * r * inv_std) * (g - g_sum / n - x_norm * (gx_sum / n))
    return dx, jnp.zeros_like(r), jnp.zeros_like(d), gx_sum * r + g_sum * d, g_sum


renorm_train.defvjp(_renorm_forward, _renorm_backward)


def _renorm(config: CrossQConfig) -> BatchRenorm:
    return BatchRenorm(
        momentum=config.bn_momentum,
        epsilon=config.bn_epsilon,
        warmup_steps=config.renorm_warmup_steps,
        relax_steps=config.renorm_relax_steps,
        r_max=config.r_max,
        d_max=config.d_max,
    )


class Critic(nn.Module):
    """One Q-network: BRN on the input, then Dense -> ReLU -> BRN per hidden layer."""

    hidden: Sequence[int]
    config: CrossQConfig

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array, train: bool) -> jax.Array:
        x = jnp.concatenate([obs, action], axis=-1)
        x = _renorm(self.config)(x, train)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
            x = _renorm(self.config)(x, train)
        return nn.Dense(1)(x)[..., 0]


class Actor(nn.Module):
    """Tanh-Gaussian policy head over a BRN MLP; returns (mean, log_std) of the pre-tanh Gaussian."""

    hidden: Sequence[int]
    action_size: int
    config: CrossQConfig

    @nn.compact
    def __call__(self, obs: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        x = _renorm(self.config)(obs, train)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width)(x))
            x = _renorm(self.config)(x, train)
        mean = nn.Dense(self.action_size)(x)
        log_std = jnp.clip(nn.Dense(self.action_size)(x), self.config.log_std_min, self.config.log_std_max)
        return mean, log_std


def _actor_module(config: CrossQConfig, action_size: int) -> Actor:
    return Actor(hidden=config.actor_hidden, action_size=action_size, config=config)


def _critic_module(config: CrossQConfig) -> Critic:
    return Critic(hidden=config.critic_hidden, config=config)


def apply_actor(
    config: CrossQConfig, action_size: int, params: Any, stats: Any, obs: jax.Array, train: bool
) -> tuple[tuple[jax.Array, jax.Array], Any]:
    """Returns ((mean, log_std), new batch stats); stats are unchanged in eval mode."""
    variables = {"params": params, "batch_stats": stats}
    module = _actor_module(config, action_size)
    if not train:
        return module.apply(variables, obs, False), stats
    out, mutated = module.apply(variables, obs, True, mutable=["batch_stats"])
    return out, mutated["batch_stats"]


def apply_critics(
    config: CrossQConfig, params: Any, stats: Any, obs: jax.Array, action: jax.Array, train: bool
) -> tuple[jax.Array, Any]:
    """The critic ensemble (params stacked on axis 0): returns (q of shape (n_critics, B), new stats).

    The critics are applied one by one rather than vmapped: as independent ops XLA:CPU runs them
    on separate cores at once, where a vmapped ensemble is one batched matmul on one core
    (measured +17% CrossQ updates/s on a 2-core CPU)."""
    module = _critic_module(config)
    qs, new_stats = [], []
    for i in range(config.n_critics):
        variables = {"params": jax.tree.map(lambda x: x[i], params), "batch_stats": jax.tree.map(lambda x: x[i], stats)}
        if train:
            q, mutated = module.apply(variables, obs, action, True, mutable=["batch_stats"])
            new_stats.append(mutated["batch_stats"])
        else:
            q = module.apply(variables, obs, action, False)
        qs.append(q)
    if not train:
        return jnp.stack(qs), stats
    return jnp.stack(qs), jax.tree.map(lambda *s: jnp.stack(s), *new_stats)


def sample_tanh_gaussian(mean: jax.Array, log_std: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reparameterised sample a = tanh(u), u ~ N(mean, std); returns (a, log pi(a)) summed over dims."""
    noise = jax.random.normal(key, mean.shape, mean.dtype)
    u = mean + jnp.exp(log_std) * noise
    log_prob_u = -0.5 * noise**2 - log_std - 0.5 * math.log(2 * math.pi)
    # log(1 - tanh(u)^2) written stably: 2 * (log 2 - u - softplus(-2u)).
    log_det = 2.0 * (math.log(2.0) - u - jax.nn.softplus(-2.0 * u))
    return jnp.tanh(u), jnp.sum(log_prob_u - log_det, axis=-1)


# ----------------------------------------------------------------------------- agent state


@struct.dataclass
class AgentState:
    actor_params: Any
    actor_stats: Any
    critic_params: Any  # stacked over critics on axis 0
    critic_stats: Any
    log_alpha: jax.Array
    actor_opt: Any
    critic_opt: Any
    alpha_opt: Any
    key: jax.Array
    env_steps: jax.Array  # int32, transitions collected (over all envs)
    updates: jax.Array  # int32, gradient steps taken on the critics
    config: CrossQConfig = struct.field(pytree_node=False)
    action_size: int = struct.field(pytree_node=False)


def _optimisers(config: CrossQConfig) -> tuple[optax.GradientTransformation, ...]:
    net = optax.adam(config.learning_rate, b1=config.adam_b1, b2=config.adam_b2)
    alpha = optax.adam(config.entropy_learning_rate, b1=config.entropy_adam_b1)
    return net, net, alpha


def target_entropy(config: CrossQConfig, action_size: int) -> float:
    return float(-action_size) if config.target_entropy is None else float(config.target_entropy)


def init_agent(key: jax.Array, obs_size: int, action_size: int, config: CrossQConfig) -> AgentState:
    if obs_size < 1 or action_size < 1:
        raise ValueError(f"init_agent: obs_size and action_size must be >= 1, got {obs_size}, {action_size}")
    key, k_actor, k_critic = jax.random.split(key, 3)
    obs = jnp.zeros((2, obs_size), jnp.float32)
    act = jnp.zeros((2, action_size), jnp.float32)
    actor_vars = _actor_module(config, action_size).init(k_actor, obs, False)
    critic_vars = jax.vmap(lambda k: _critic_module(config).init(k, obs, act, False))(
        jax.random.split(k_critic, config.n_critics)
    )
    log_alpha = jnp.asarray(math.log(config.init_entropy_coef), jnp.float32)
    actor_tx, critic_tx, alpha_tx = _optimisers(config)
    return AgentState(
        actor_params=actor_vars["params"],
        actor_stats=actor_vars["batch_stats"],
        critic_params=critic_vars["params"],
        critic_stats=critic_vars["batch_stats"],
        log_alpha=log_alpha,
        actor_opt=actor_tx.init(actor_vars["params"]),
        critic_opt=critic_tx.init(critic_vars["params"]),
        alpha_opt=alpha_tx.init(log_alpha),
        key=key,
        env_steps=jnp.zeros((), jnp.int32),
        updates=jnp.zeros((), jnp.int32),
        config=config,
        action_size=action_size,
    )


# ----------------------------------------------------------------------------- losses

# What the actor sees of a batch of observations: (obs, key) -> obs of the same shape.
ActorView = Callable[[jax.Array, jax.Array], jax.Array]


def critic_loss(
    critic_params: Any,
    critic_stats: Any,
    batch: Transition,
    next_action: jax.Array,
    next_log_prob: jax.Array,
    alpha: jax.Array,
    config: CrossQConfig,
) -> tuple[jax.Array, tuple[Any, jax.Array]]:
    """Squared TD error; (s, a) and (s', a') go through the critics as ONE batch so the
    bootstrap target is normalised with the same statistics as the prediction (no target nets)."""
    b = batch.obs.shape[0]
    obs = jnp.concatenate([batch.obs, batch.next_obs], axis=0)
    action = jnp.concatenate([batch.action, next_action], axis=0)
    q_all, new_stats = apply_critics(config, critic_params, critic_stats, obs, action, train=True)
    q, q_next = q_all[:, :b], q_all[:, b:]
    v_next = jnp.min(q_next, axis=0) - alpha * next_log_prob
    target = batch.reward + config.gamma * (1.0 - batch.terminated) * v_next
    target = jax.lax.stop_gradient(target)
    loss = 0.5 * jnp.sum(jnp.mean(jnp.square(q - target[None]), axis=1))
    return loss, (new_stats, jnp.mean(q))


def actor_loss(
    actor_params: Any, actor_stats: Any, agent: AgentState, obs: jax.Array, next_obs: jax.Array, key: jax.Array,
    alpha: jax.Array, actor_view: ActorView | None = None,
) -> tuple[jax.Array, tuple[Any, jax.Array, jax.Array]]:
    """SAC's actor loss plus the CAPS smoothness terms when configured; aux: (new stats, log pi,
    mean distance between the deterministic actions of neighbouring states, NaN when off).
    ``actor_view``: what the actor sees of the states (``update``); the critics judge its actions on
    ``obs`` itself."""
    config = agent.config
    b = obs.shape[0]
    k_sample, k_noise = jax.random.split(key)
    critic_obs = obs
    if actor_view is not None:  # keys folded from ``key``: without a view the draws are what they were
        k_obs, k_next = jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)
        obs, next_obs = actor_view(obs, k_obs), actor_view(next_obs, k_next)
    # The neighbouring states go through the actor in the same batch as obs, so its batch norm
    # normalises all of them alike (as the critics' joint pass does).
    inputs = [obs]
    if config.smooth_temporal > 0:
        inputs.append(next_obs)
    if config.smooth_spatial > 0:
        inputs.append(obs + config.smooth_spatial_std * jax.random.normal(k_noise, obs.shape, obs.dtype))
    x = jnp.concatenate(inputs, axis=0) if len(inputs) > 1 else obs
    (mean_all, log_std_all), new_stats = apply_actor(config, agent.action_size, actor_params, actor_stats, x, train=True)
    mean, log_std = mean_all[:b], log_std_all[:b]
    action, log_prob = sample_tanh_gaussian(mean, log_std, k_sample)
    # Critics in eval mode: the actor's batch must not move the critics' running statistics.
    q, _ = apply_critics(config, agent.critic_params, agent.critic_stats, critic_obs, action, train=False)
    loss = jnp.mean(alpha * log_prob - jnp.min(q, axis=0))

    det = jnp.tanh(mean_all)
    change = jnp.full((), jnp.nan, jnp.float32)
    block = 1  # next row block of x: next_obs if temporal, then noisy obs if spatial
    if config.smooth_temporal > 0:
        change = _distance(det[b:2 * b], det[:b])
        loss = loss + config.smooth_temporal * change
        block += 1
    if config.smooth_spatial > 0:
        loss = loss + config.smooth_spatial * _distance(det[block * b:(block + 1) * b], det[:b])
    return loss, (new_stats, log_prob, change)


def _distance(a: jax.Array, b: jax.Array) -> jax.Array:
    """Mean Euclidean distance between rows; the small floor keeps the gradient finite at zero."""
    return jnp.mean(jnp.sqrt(jnp.sum(jnp.square(a - b), axis=-1) + 1e-8))


def alpha_loss(log_alpha: jax.Array, log_prob: jax.Array, target_ent: float) -> jax.Array:
    # Optimise log(alpha) (as SAC's reference code does) so alpha stays positive.
    return -log_alpha * jax.lax.stop_gradient(jnp.mean(log_prob) + target_ent)


# ----------------------------------------------------------------------------- update


def _scaled(updates: Any, lr_scale: jax.Array | float) -> Any:
    # Adam's step is proportional to its learning rate, so scaling the step scales the rate: a
    # schedule without a schedule state in the optimiser (checkpoints keep their layout).
    return jax.tree_util.tree_map(lambda u: u * lr_scale, updates)


def _update_actor_and_alpha(agent: AgentState, batch: Transition, key: jax.Array,
                            lr_scale: jax.Array | float = 1.0,
                            entropy_shift: jax.Array | float = 0.0,
                            actor_view: ActorView | None = None) -> tuple[AgentState, dict]:
    config = agent.config
    actor_tx, _, alpha_tx = _optimisers(config)
    alpha = jnp.exp(agent.log_alpha)
    (loss, (stats, log_prob, change)), grads = jax.value_and_grad(actor_loss, has_aux=True)(
        agent.actor_params, agent.actor_stats, agent, batch.obs, batch.next_obs, key, alpha, actor_view
    )
    upd, actor_opt = actor_tx.update(grads, agent.actor_opt, agent.actor_params)
    actor_params = optax.apply_updates(agent.actor_params, _scaled(upd, lr_scale))
    target = target_entropy(config, agent.action_size) + entropy_shift
    a_loss, a_grad = jax.value_and_grad(alpha_loss)(agent.log_alpha, log_prob, target)
    a_upd, alpha_opt = alpha_tx.update(a_grad, agent.alpha_opt, agent.log_alpha)
    agent = agent.replace(
        actor_params=actor_params,
        actor_stats=stats,
        actor_opt=actor_opt,
        log_alpha=optax.apply_updates(agent.log_alpha, a_upd),
        alpha_opt=alpha_opt,
    )
    return agent, {"actor_loss": loss, "entropy": -jnp.mean(log_prob), "alpha_loss": a_loss, "policy_change": change}


def update(agent: AgentState, batch: Transition, config: CrossQConfig,
           lr_scale: jax.Array | float = 1.0,
           entropy_shift: jax.Array | float = 0.0,
           actor_view: ActorView | None = None) -> tuple[AgentState, dict[str, jax.Array]]:
    """One gradient step on the critics; the actor and entropy coefficient are stepped every
    ``policy_delay`` critic steps. Actor metrics are NaN on steps that skip the actor.
    ``lr_scale`` multiplies the actor's and critics' learning rate and ``entropy_shift`` is added
    to the target entropy (schedules' values: traced, so changing them compiles nothing).
    ``actor_view(obs, key)``: what the actor sees of a batch of states (asymmetric actor-critic: a
    noisy sensor's view for the actor, the clean state for the critics); None: the states themselves."""
    if config != agent.config:
        raise ValueError(
            f"update: config (preset {config.preset!r}) differs from the one the agent was built with "
            f"(preset {agent.config.preset!r}); pass agent.config"
        )
    _, critic_tx, _ = _optimisers(config)
    key, k_next, k_actor = jax.random.split(agent.key, 3)
    alpha = jnp.exp(agent.log_alpha)

    # The bootstrap's next action is the one the actor would take from what it sees there.
    next_seen = batch.next_obs if actor_view is None else actor_view(batch.next_obs, jax.random.fold_in(k_next, 1))
    (mean, log_std), _ = apply_actor(config, agent.action_size, agent.actor_params, agent.actor_stats, next_seen, train=False)
    next_action, next_log_prob = sample_tanh_gaussian(mean, log_std, k_next)
    (c_loss, (c_stats, q_mean)), grads = jax.value_and_grad(critic_loss, has_aux=True)(
        agent.critic_params, agent.critic_stats, batch, next_action, next_log_prob, alpha, config
    )
    upd, critic_opt = critic_tx.update(grads, agent.critic_opt, agent.critic_params)
    agent = agent.replace(
        critic_params=optax.apply_updates(agent.critic_params, _scaled(upd, lr_scale)),
        critic_stats=c_stats,
        critic_opt=critic_opt,
        key=key,
    )

    nan = jnp.full((), jnp.nan, jnp.float32)
    agent, actor_metrics = jax.lax.cond(
        agent.updates % config.policy_delay == 0,
        lambda a: _update_actor_and_alpha(a, batch, k_actor, lr_scale, entropy_shift, actor_view),
        lambda a: (a, {"actor_loss": nan, "entropy": nan, "alpha_loss": nan, "policy_change": nan}),
        agent,
    )
    agent = agent.replace(updates=agent.updates + 1)
    metrics = {"critic_loss": c_loss, "q_mean": q_mean, "alpha": alpha, **actor_metrics}
    return agent, metrics


jit_update = jax.jit(update, static_argnames=("config",))


# ----------------------------------------------------------------------------- acting


@functools.partial(jax.jit, static_argnames=("deterministic",))
def act(agent: AgentState, obs: jax.Array, key: jax.Array, deterministic: bool) -> jax.Array:
    """Actions in [-1, 1]^k for a batch of observations (B, obs_size), batch norm in eval mode."""
    (mean, log_std), _ = apply_actor(agent.config, agent.action_size, agent.actor_params, agent.actor_stats, obs, train=False)
    if deterministic:
        return jnp.tanh(mean)
    action, _ = sample_tanh_gaussian(mean, log_std, key)
    return action
