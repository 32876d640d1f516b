"""Functional environments the jit-compiled training loop runs.

The interface (the racing surrogate implements the same one), over ONE env; the loop vmaps:

- ``observation_size: int``, ``action_size: int``
- ``action_low``, ``action_high``: ``np.ndarray`` of shape ``(action_size,)``; the agent acts in
  ``[-1, 1]^k`` and the loop maps that linearly onto ``[low, high]``.
- ``reset(key, params) -> (obs, state)``
- ``step(key, state, action, params) -> (obs, state, reward, terminated, truncated, info)``:
  auto-resets; when ``terminated | truncated`` the returned obs/state start the new episode and
  ``info["final_obs"]`` is the last observation of the ended one (equal to obs otherwise).
  Bootstrapping continues through truncation (time limits), not through termination.
- optionally ``batch_step(key, state, action, params)``: ``step`` over a batch from one key, for
  envs that batch better than a vmap of ``step`` (the surrogate resets only the finished cars).
"""

from typing import Any, Callable

import jax

from racerl_jax.envs.pendulum import Pendulum, PendulumParams, PendulumState

__all__ = ["Pendulum", "PendulumParams", "PendulumState", "batched_step"]


def batched_step(env: Any) -> Callable:
    """``step(key, state, action, params)`` over a batch of envs: the env's own ``batch_step``
    where it has one, else its ``step`` vmapped with one key per env."""
    if hasattr(env, "batch_step"):
        return env.batch_step
    v_step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
    return lambda key, state, action, params: v_step(jax.random.split(key, action.shape[0]), state, action, params)
