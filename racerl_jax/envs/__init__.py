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
"""

from racerl_jax.envs.pendulum import Pendulum, PendulumParams, PendulumState

__all__ = ["Pendulum", "PendulumParams", "PendulumState"]
