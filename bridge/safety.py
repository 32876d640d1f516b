"""Trainer-side safety layer between the policy and the game.

Every action goes through :meth:`SafetyLayer.filter` before it is sent: non-finite actions or
observations give the neutral action; controls are clamped to their contract ranges and
rate-limited (a policy cannot slam full lock in one 20 ms step); a stale-telemetry watchdog gives
the neutral action and asks for the episode to be truncated when no fresh frame came in time; an
emergency stop latches a braking action until released. Safety overrides are applied at once, not
rate-limited: cutting the throttle must never wait.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from bridge.protocol import CONTROL_RANGES, CONTROLS, NEUTRAL_ACTION


@dataclass(frozen=True)
class SafetyConfig:
    #: largest change per second of each control (full range per 0.25 s for steer by default)
    max_rate: Mapping[str, float] = field(default_factory=lambda: {"steer": 8.0, "throttle": 10.0, "brake": 20.0})
    #: a frame older than this (seconds since it was received) is stale
    stale_after_s: float = 0.25
    #: action held while the emergency stop is latched
    estop_action: Mapping[str, float] = field(default_factory=lambda: {"steer": 0.0, "throttle": 0.0, "brake": 1.0})
    #: longest interval the rate limiter credits (after a pause the first step is not unlimited)
    max_dt_s: float = 0.1

    def __post_init__(self):
        for k in CONTROLS:
            if not (self.max_rate.get(k, 0) > 0):
                raise ValueError(f"SafetyConfig.max_rate[{k!r}] must be > 0 (units per second)")
        if not self.stale_after_s > 0:
            raise ValueError("SafetyConfig.stale_after_s must be > 0 seconds")


@dataclass
class SafeAction:
    action: dict          # what to send
    truncate: bool        # end the episode here (stale telemetry, emergency stop, NaN observation)
    reasons: tuple        # why it differs from the policy's action, e.g. ("clamped", "rate_limited")


@dataclass
class SafetyStats:
    clamped: int = 0
    rate_limited: int = 0
    nan_actions: int = 0
    nan_observations: int = 0
    stale: int = 0
    estops: int = 0


class SafetyLayer:
    def __init__(self, config: SafetyConfig | None = None, clock=time.monotonic):
        self.config = config or SafetyConfig()
        self.clock = clock
        self.stats = SafetyStats()
        self._prev = dict(NEUTRAL_ACTION)
        self._prev_t: float | None = None
        self._estop: str | None = None

    # -- emergency stop
    def estop(self, reason: str = "emergency stop") -> None:
        if self._estop is None:
            self.stats.estops += 1
        self._estop = reason

    def release(self) -> None:
        self._estop = None

    @property
    def stopped(self) -> bool:
        return self._estop is not None

    def reset(self) -> None:
        """New episode: the rate limiter starts again from neutral."""
        self._prev = dict(NEUTRAL_ACTION)
        self._prev_t = None

    # -- filter
    def _override(self, action: Mapping[str, float], reason: str, truncate: bool, now: float) -> SafeAction:
        self._prev = dict(action)
        self._prev_t = now
        return SafeAction(dict(action), truncate, (reason,))

    def filter(self, action: Mapping[str, Any], frame_age_s: float | None = None, observation: Any = None,
               now: float | None = None) -> SafeAction:
        """Make ``action`` safe to send. ``frame_age_s``: seconds since the newest telemetry frame
        was received (None: not checked, e.g. lockstep); ``observation``: the policy's input, checked
        for NaN/inf."""
        now = self.clock() if now is None else now
        if self._estop is not None:
            return self._override(self.config.estop_action, f"estop: {self._estop}", True, now)
        if frame_age_s is not None and not frame_age_s <= self.config.stale_after_s:
            self.stats.stale += 1
            return self._override(NEUTRAL_ACTION, "stale_telemetry", True, now)
        if observation is not None and not np.all(np.isfinite(np.asarray(observation, dtype=np.float64))):
            self.stats.nan_observations += 1
            return self._override(NEUTRAL_ACTION, "nan_observation", True, now)
        try:
            raw = {k: float(action[k]) for k in CONTROLS}
        except (KeyError, TypeError, ValueError):
            raw = {k: math.nan for k in CONTROLS}
        if not all(math.isfinite(v) for v in raw.values()):
            self.stats.nan_actions += 1
            return self._override(NEUTRAL_ACTION, "nan_action", False, now)
        reasons = []
        out = {}
        for k, v in raw.items():
            lo, hi = CONTROL_RANGES[k]
            out[k] = min(hi, max(lo, v))
        if out != raw:
            reasons.append("clamped")
            self.stats.clamped += 1
        dt = self.config.max_dt_s if self._prev_t is None else min(max(now - self._prev_t, 0.0), self.config.max_dt_s)
        limited = False
        for k in CONTROLS:
            step = self.config.max_rate[k] * dt
            v = min(self._prev[k] + step, max(self._prev[k] - step, out[k]))
            limited |= v != out[k]
            out[k] = v
        if limited:
            reasons.append("rate_limited")
            self.stats.rate_limited += 1
        self._prev, self._prev_t = dict(out), now
        return SafeAction(out, False, tuple(reasons))
