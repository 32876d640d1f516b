"""racerl_jax.collapse: a critic collapse is told from a noisy healthy run, and the driver rolls the
agent back from one at a lower learning rate."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from racerl_jax.collapse import CollapseConfig, CollapseGuard
from racerl_jax.train_loop import drive


@struct.dataclass
class Agent:
    w: jnp.ndarray
    env_steps: jnp.ndarray
    updates: jnp.ndarray


@struct.dataclass
class Carry:
    agent: Agent


def healthy(rng, n, q=5.0):
    """Chunks of a run that is fine: a noisy loss with the odd 50x spike, episode lengths all over."""
    loss = 0.05 * np.exp(rng.normal(0.0, 0.4, n))
    loss[rng.random(n) < 0.03] *= 50.0
    return [{"critic_loss": float(a), "episode_length": float(b), "q_mean": q}
            for a, b in zip(loss, rng.uniform(200, 900, n))]


def collapsing(n):
    """The signature: the loss up 100x and the episodes down to about 50 steps."""
    return [{"critic_loss": 5.0, "episode_length": 50.0, "q_mean": -0.6}] * n


def feed(guard, chunks, steps_per_chunk=3200, start=0):
    hits = []
    for i, c in enumerate(chunks):
        steps = start + (i + 1) * steps_per_chunk
        agent = Agent(w=jnp.float32(steps), env_steps=jnp.int32(steps), updates=jnp.int32(steps // 2))
        if guard.observe({**c, "env_steps": steps}, agent):
            hits.append(steps)
    return hits


def test_a_noisy_healthy_run_with_loss_spikes_is_never_called_a_collapse():
    rng = np.random.default_rng(0)
    chunks = healthy(rng, 400)
    for i in range(0, 400, 37):  # the odd chunk where every episode ended early
        chunks[i] = {**chunks[i], "episode_length": 40.0, "critic_loss": 3.0}
    assert feed(CollapseGuard(), chunks) == []


def test_a_collapse_is_seen_after_patience_chunks_and_the_agent_goes_back_to_its_most_valued_copy():
    rng = np.random.default_rng(1)
    guard = CollapseGuard(CollapseConfig(snapshot_every_env_steps=10_000))
    rising = [{**c, "q_mean": 1.0 + 0.1 * i} for i, c in enumerate(healthy(rng, 60))]  # q peaks at chunk 60
    drifting = [{**c, "q_mean": 6.5 - 0.5 * i} for i, c in enumerate(healthy(rng, 12))]  # q falls, laps hold
    hits = feed(guard, rising + drifting + collapsing(5))
    assert hits == [(60 + 12 + 3) * 3200]  # the third collapsed chunk
    now = Agent(w=jnp.float32(-1.0), env_steps=jnp.int32(240_000), updates=jnp.int32(99))
    restored, kept_at = guard.recover(now)
    # The copy with the highest q_mean is the last one taken before the drift began.
    assert kept_at <= 60 * 3200 and kept_at > 60 * 3200 - 10_000 - 3200
    assert float(restored.w) == kept_at and int(restored.env_steps) == 240_000 and int(restored.updates) == 99
    assert guard.lr_multiplier == 0.5 and guard.recoveries == 1 and guard.collapses == 1


def test_with_no_recoveries_left_a_collapse_is_only_reported():
    guard = CollapseGuard(CollapseConfig(max_recoveries=0))
    assert feed(guard, healthy(np.random.default_rng(2), 30) + collapsing(3))
    assert guard.recover(Agent(w=jnp.float32(0), env_steps=jnp.int32(0), updates=jnp.int32(0))) is None
    assert guard.lr_multiplier == 1.0


def test_the_driver_rolls_the_agent_back_and_halves_the_learning_rate_from_then_on():
    rng = np.random.default_rng(3)
    script = healthy(rng, 40) + collapsing(3) + healthy(rng, 10)
    seen_lr = []

    def run(carry, iters, lr_scale, entropy_shift):
        seen_lr.append(lr_scale)
        a = carry.agent
        stats = script[len(seen_lr) - 1]
        return Carry(Agent(w=a.w + 1.0, env_steps=a.env_steps + iters * 4, updates=a.updates + iters)), stats

    start = Carry(Agent(w=jnp.float32(0.0), env_steps=jnp.int32(0), updates=jnp.int32(0)))
    result = drive(run, start, 4, total_env_steps=len(script) * 400, chunk_iterations=100, run_meta={},
                   progress=False, guard=CollapseGuard(CollapseConfig(snapshot_every_env_steps=2000)))
    assert (result.collapses, result.recoveries) == (1, 1)
    rolled = [r for r in result.history if "collapse" in r]
    assert len(rolled) == 1 and rolled[0]["env_steps"] == 43 * 400
    # The next chunk starts from the copy (w counts chunks), not from the collapsed agent.
    assert float(result.carry.agent.w) == pytest.approx(rolled[0]["collapse_rollback_to"] / 400 + 10)
    assert int(result.carry.agent.env_steps) == len(script) * 400
    assert seen_lr[:43] == [1.0] * 43 and seen_lr[43:] == [0.5] * 10
