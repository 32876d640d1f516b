import jax
import jax.numpy as jnp
import numpy as np
import pytest

from racerl_jax import replay
from racerl_jax.replay import Transition


def _transitions(start, n, obs_size=2, action_size=1):
    ids = jnp.arange(start, start + n, dtype=jnp.float32)
    return Transition(
        obs=jnp.stack([ids] * obs_size, axis=1),
        action=jnp.stack([-ids] * action_size, axis=1),
        reward=ids,
        next_obs=jnp.stack([ids + 0.5] * obs_size, axis=1),
        terminated=(ids % 2 == 0).astype(jnp.float32),
    )


def test_add_batch_fills_in_order_then_wraps_over_the_oldest():
    buf = replay.init(5, 2, 1)
    add = jax.jit(replay.add_batch)
    buf = add(buf, _transitions(0, 3))
    assert int(buf.size) == 3 and int(buf.position) == 3
    np.testing.assert_array_equal(buf.data.reward[:3], [0, 1, 2])
    buf = add(buf, _transitions(3, 3))  # ids 3, 4 fill the end; id 5 overwrites slot 0
    assert int(buf.size) == 5 and int(buf.position) == 1
    np.testing.assert_array_equal(buf.data.reward, [5, 1, 2, 3, 4])
    buf = add(buf, _transitions(6, 5))  # a full lap: the buffer holds exactly the last 5
    np.testing.assert_array_equal(np.sort(buf.data.reward), [6, 7, 8, 9, 10])
    assert int(buf.position) == 1
    # Every field of a slot belongs to the same transition after wrapping.
    np.testing.assert_array_equal(buf.data.obs[:, 0], buf.data.reward)
    np.testing.assert_array_equal(buf.data.action[:, 0], -buf.data.reward)
    np.testing.assert_array_equal(buf.data.next_obs[:, 1], buf.data.reward + 0.5)
    np.testing.assert_array_equal(buf.data.terminated, (buf.data.reward % 2 == 0))


def test_sample_draws_only_valid_transitions_inside_jit():
    buf = replay.add_batch(replay.init(100, 2, 1), _transitions(0, 7))
    sample = jax.jit(replay.sample, static_argnums=2)
    batch = sample(buf, jax.random.PRNGKey(0), 512)
    assert batch.obs.shape == (512, 2) and batch.action.shape == (512, 1) and batch.reward.shape == (512,)
    rewards = np.asarray(batch.reward)
    assert set(rewards.tolist()) == set(range(7))  # all 7 seen, nothing from the empty part
    np.testing.assert_array_equal(batch.obs[:, 0], batch.reward)
    np.testing.assert_array_equal(batch.next_obs[:, 0], batch.reward + 0.5)
    other = sample(buf, jax.random.PRNGKey(1), 512)
    assert not np.array_equal(other.reward, batch.reward)


def test_sample_is_roughly_uniform_over_a_full_wrapped_buffer():
    buf = replay.init(10, 1, 1)
    for start in range(0, 25, 5):
        buf = replay.add_batch(buf, _transitions(start, 5, obs_size=1))
    counts = np.bincount(np.asarray(replay.sample(buf, jax.random.PRNGKey(3), 20000).reward, int) - 15, minlength=10)
    assert counts.min() > 1700 and counts.max() < 2300, counts


def test_buffer_is_a_pytree_that_survives_jit_and_tree_map():
    buf = replay.add_batch(replay.init(4, 2, 1), _transitions(0, 2))
    leaves = jax.tree.leaves(buf)
    assert all(isinstance(x, jax.Array) for x in leaves)
    copy = jax.tree.map(jnp.array, buf)
    assert copy.capacity == 4 and int(copy.size) == 2


def test_bad_sizes_are_rejected_with_the_fix():
    with pytest.raises(ValueError, match="buffer_size"):
        replay.init(0, 2, 1)
    with pytest.raises(ValueError, match="at least the number of envs"):
        replay.add_batch(replay.init(3, 2, 1), _transitions(0, 4))
