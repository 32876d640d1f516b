"""The reward, one function for both backends (surrogate and real game)."""
from __future__ import annotations

from flax import struct
import jax
import jax.numpy as jnp


@struct.dataclass
class RewardWeights:
    """Weights of the reward terms; floats so they can vary per env or be swept under jit."""

    progress: float = 0.1  # per metre driven along the track (a lap of 2 km is worth 200)
    deviation: float = 0.0  # per (m from the reference line)^2 per step
    action_change: float = 0.02  # per squared change of the controls between steps (smoothness)
    off_track: float = 5.0  # once, when the car leaves the track
    stuck: float = 0.0  # once, when the stuck check ends the episode
    time: float = 0.0  # per step, for a constant pressure to finish laps
    # per step, times throttle * brake: driving on both pedals at once wastes the engine against
    # the brakes, which a policy otherwise has no reason to avoid (it costs little lap time)
    pedal_overlap: float = 0.0


def reward(
    w: RewardWeights,
    progress_m: jax.Array,
    ref_deviation_m: jax.Array,
    action: jax.Array,
    prev_action: jax.Array,
    off_track: jax.Array,
    stuck: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Reward of one control step and its terms (for logging).

    ``action``: the game's controls [steer, throttle, brake]; ``progress_m``: arc length gained along the track this step (negative when driving backwards);
    ``ref_deviation_m``: lateral distance from the reference line; ``off_track`` / ``stuck``: the
    events that ended the episode this step, if any.
    """
    terms = {
        "progress": w.progress * progress_m,
        "deviation": -w.deviation * jnp.square(ref_deviation_m),
        "smoothness": -w.action_change * jnp.sum(jnp.square(action - prev_action)),
        "off_track": -w.off_track * off_track.astype(jnp.float32),
        "stuck": -w.stuck * stuck.astype(jnp.float32),
        "time": -w.time * jnp.ones_like(progress_m),
        "pedal_overlap": -w.pedal_overlap * action[..., 1] * action[..., 2],
    }
    return sum(terms.values()), terms
