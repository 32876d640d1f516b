"""Critic collapse: seen online in the training metrics, undone by rolling the agent back.

The signature (docs/experiments.md, a run that lost its critics at 250k env steps): the critics'
mean Q falls through zero while the laps still hold, then the critic loss rises 10-100 times (0.07
to 23) and the episodes shorten (1,000 steps to about 50). Once there, a run does not come back.

``CollapseGuard`` watches each chunk's ``critic_loss`` and ``episode_length`` against their levels
over the last healthy chunks, and calls it a collapse when both are off (the loss ``loss_factor``
times its level, the episodes under ``length_factor`` of theirs) ``patience`` chunks in a row: one
noisy chunk is not a collapse, and a loss that rises while the driver keeps its episodes is a
critic learning larger returns. Meanwhile it keeps host copies of the agent every
``snapshot_every_env_steps`` while healthy. On a collapse the driver restores the copy whose critics
valued the policy most (the highest ``q_mean``: before the drift that precedes the blow-up) and goes
on with the learning rate times ``lr_factor`` per recovery, the replay buffer and the env steps
as they are. After ``max_recoveries`` it only reports.
"""
from __future__ import annotations

import dataclasses
import math
from collections import deque
from typing import Any, Mapping

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class CollapseConfig:
    loss_factor: float = 10.0  # critic loss this many times its healthy level ...
    length_factor: float = 1.0 / 3.0  # ... and episodes shorter than this share of theirs ...
    patience: int = 3  # ... this many chunks in a row
    reference_chunks: int = 20  # healthy chunks the levels are medians over (and the warm-up)
    snapshot_every_env_steps: int = 25_000
    snapshots: int = 8  # host copies kept (the oldest dropped)
    lr_factor: float = 0.5  # learning rate times this after each recovery
    max_recoveries: int = 3

    def __post_init__(self):
        if not (self.loss_factor > 1.0 and 0.0 < self.length_factor < 1.0):
            raise ValueError("CollapseConfig: loss_factor > 1 and length_factor in (0, 1)")
        if min(self.patience, self.reference_chunks, self.snapshot_every_env_steps, self.snapshots) < 1:
            raise ValueError("CollapseConfig: patience, reference_chunks, snapshot_every_env_steps and snapshots >= 1")
        if not 0.0 < self.lr_factor <= 1.0 or self.max_recoveries < 0:
            raise ValueError("CollapseConfig: lr_factor in (0, 1], max_recoveries >= 0")


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


class CollapseGuard:
    """Watches the chunks of one run (``drive``'s records); see the module docstring."""

    def __init__(self, config: CollapseConfig = CollapseConfig()):
        self.config = config
        self._losses: deque[float] = deque(maxlen=config.reference_chunks)
        self._lengths: deque[float] = deque(maxlen=config.reference_chunks)
        self._strikes = 0
        self._snapshots: deque[tuple[int, float, Any]] = deque(maxlen=config.snapshots)
        self._next_snapshot = 0
        self.recoveries = 0
        self.collapses = 0

    @property
    def lr_multiplier(self) -> float:
        return self.config.lr_factor ** self.recoveries

    def levels(self) -> tuple[float, float] | None:
        """The healthy critic loss and episode length (medians), once there are enough chunks."""
        if len(self._losses) < self.config.reference_chunks:
            return None
        lengths = [v for v in self._lengths if _finite(v)]
        return float(np.median(self._losses)), float(np.median(lengths)) if lengths else math.nan

    def observe(self, record: Mapping[str, Any], agent: Any) -> bool:
        """One chunk's record (``critic_loss``, ``episode_length``, ``q_mean``, ``env_steps``) and the
        agent after it; True when this chunk completes a collapse (then call ``recover``)."""
        loss, length = record.get("critic_loss"), record.get("episode_length")
        if not _finite(loss):  # before learning starts
            return False
        levels = self.levels()
        bad = False
        if levels is not None:
            ref_loss, ref_length = levels
            # No episode ended in the chunk: they are long, which is not a collapse.
            short = _finite(length) and _finite(ref_length) and length < self.config.length_factor * ref_length
            bad = loss > self.config.loss_factor * ref_loss and short
        if bad:
            self._strikes += 1
        else:
            self._strikes = 0
            self._losses.append(float(loss))
            self._lengths.append(float(length) if _finite(length) else math.nan)
            steps = int(record.get("env_steps", 0))
            # (no copies when no recovery may use one: --no-recover-collapse only reports)
            if levels is not None and steps >= self._next_snapshot and self.config.max_recoveries > 0:
                q = record.get("q_mean")
                self._snapshots.append((steps, float(q) if _finite(q) else -math.inf, jax.device_get(agent)))
                self._next_snapshot = steps + self.config.snapshot_every_env_steps
        if self._strikes >= self.config.patience:
            self._strikes = 0
            self.collapses += 1
            return True
        return False

    def recover(self, agent: Any) -> tuple[Any, int] | None:
        """The agent to go on from (the kept copy with the highest ``q_mean``, with ``agent``'s
        counters) and the env steps it was kept at; None when there is none or recoveries are spent.
        Copies kept after the one restored are dropped: they may hold the drift."""
        if not self._snapshots or self.recoveries >= self.config.max_recoveries:
            return None
        i = max(range(len(self._snapshots)), key=lambda j: (self._snapshots[j][1], self._snapshots[j][0]))
        steps, _, kept = self._snapshots[i]
        for _ in range(len(self._snapshots) - i - 1):
            self._snapshots.pop()
        self.recoveries += 1
        restored = jax.device_put(kept)
        return restored.replace(env_steps=agent.env_steps, updates=agent.updates), steps
