"""Device-resident replay buffer: a fixed-capacity ring of transitions held as one pytree.

Everything is a pure function of the buffer so insertion and sampling run inside the
jit-compiled training loop; the buffer is checkpointed like any other pytree.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Transition:
    obs: jax.Array  # (B, obs_size)
    action: jax.Array  # (B, action_size), in the agent's [-1, 1] space
    reward: jax.Array  # (B,)
    next_obs: jax.Array  # (B, obs_size): the last observation of the episode when it ended
    terminated: jax.Array  # (B,) float32 1.0 where the episode really ended (no bootstrap)


@struct.dataclass
class ReplayBuffer:
    data: Transition  # arrays with leading axis = capacity
    position: jax.Array  # int32: where the next transition goes
    size: jax.Array  # int32: number of valid transitions, <= capacity

    @property
    def capacity(self) -> int:
        return self.data.reward.shape[0]


def init(capacity: int, obs_size: int, action_size: int) -> ReplayBuffer:
    if capacity < 1:
        raise ValueError(f"replay capacity must be >= 1, got {capacity}; set CrossQConfig.buffer_size")
    if obs_size < 1 or action_size < 1:
        raise ValueError(f"obs_size and action_size must be >= 1, got {obs_size} and {action_size}")
    data = Transition(
        obs=jnp.zeros((capacity, obs_size), jnp.float32),
        action=jnp.zeros((capacity, action_size), jnp.float32),
        reward=jnp.zeros((capacity,), jnp.float32),
        next_obs=jnp.zeros((capacity, obs_size), jnp.float32),
        terminated=jnp.zeros((capacity,), jnp.float32),
    )
    return ReplayBuffer(data=data, position=jnp.zeros((), jnp.int32), size=jnp.zeros((), jnp.int32))


def add_batch(buffer: ReplayBuffer, batch: Transition) -> ReplayBuffer:
    """Insert N transitions (one per env), overwriting the oldest once full."""
    n = batch.reward.shape[0]
    if n > buffer.capacity:
        raise ValueError(
            f"cannot insert {n} transitions into a replay buffer of capacity {buffer.capacity}; "
            "raise CrossQConfig.buffer_size to at least the number of envs"
        )
    idx = (buffer.position + jnp.arange(n, dtype=jnp.int32)) % buffer.capacity
    batch = jax.tree.map(lambda x: x.astype(jnp.float32), batch)
    data = jax.tree.map(lambda store, new: store.at[idx].set(new), buffer.data, batch)
    return ReplayBuffer(
        data=data,
        position=(buffer.position + n) % buffer.capacity,
        size=jnp.minimum(buffer.size + n, buffer.capacity),
    )


def sample(buffer: ReplayBuffer, key: jax.Array, batch_size: int) -> Transition:
    """Uniform sample with replacement from the valid part; the buffer must not be empty."""
    idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buffer.size, 1))
    return jax.tree.map(lambda x: x[idx], buffer.data)


def sample_mixed(buffer: ReplayBuffer, other: ReplayBuffer, key: jax.Array, batch_size: int,
                 from_other: int) -> Transition:
    """A batch of ``batch_size`` transitions, ``from_other`` of them from ``other`` (RLPD's symmetric
    sampling at half: demonstrations, or a fine-tune's surrogate transitions beside the game's)."""
    k_main, k_other = jax.random.split(key)
    main = sample(buffer, k_main, batch_size - from_other)
    if from_other == 0:
        return main
    extra = sample(other, k_other, from_other)
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0), main, extra)
