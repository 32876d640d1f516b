"""The probe: a recording driver that needs no car model, for games whose car nobody knows yet.

It drives from the track and the telemetry alone (host-side numpy, one call per control step):

* Steering follows the track's centre line: pure pursuit on a point ``max(preview_min,
  speed * preview_time)`` metres ahead on the centre line, turned into a steering command through
  the car's *steering gain* (path curvature per unit of steer), which it measures as it drives
  (least squares of ``yaw_rate / speed`` on the lagged steer, per speed band, only where the car is
  calm), starting from a deliberately vague prior. A slow integral of the lateral offset removes
  what the gain gets wrong.
* Speed follows a target by its own feedback on the measured speed: it asks for the acceleration
  that closes the speed error in ``speed_tau`` (plus an integral), and turns that into throttle or
  brake through the *pedal response* it measures as it drives (recursive least squares of the
  speed change per step on the throttle and brake held, with a drag term, per speed band): a car
  that accelerates at 40 m/s^2 on a touch of throttle (CarRacing) and one that needs full throttle
  for 3 m/s^2 are both driven smoothly. The target is the smaller of a speed cap and a speed
  profile planned from the track's curvature ahead with the current *pace*: a lateral
  acceleration it allows in corners and a deceleration it counts on to brake for them (2 m/s^2,
  then 60% of what full braking measured, at most ``max_decel``).
* The pace starts low (5 m/s cap, 2 m/s^2 lateral, 2 m/s^2 braking) and rises (8% a second, up
  to ``max_lat_accel`` and ``max_speed``) while the car is actually driven at it -- speed near
  the cap, or in a corner near the allowed lateral acceleration with the measured lateral
  acceleration following the track's demand -- and nothing is wrong. It backs off when the car
  slides: it does not turn as the steering asks (``|yaw_rate - speed * gain * steer|`` past 0.1
  rad/s + 30%: understeer past the grip, or oversteer) while it moves away from the line (the
  lateral offset growing outwards, or ``|yaw_rate - speed * curvature|`` large), or its heading
  error passes 0.5 rad. Then the allowed lateral acceleration becomes 0.85 of itself and of the
  lateral acceleration the car slid at (no less than 0.6 of the pace), the cap falls with the
  square root. Running towards an edge (past 60% of the half-width) backs off by 0.93, an
  episode that ends off the track by 0.7. After a back-off it holds the pace for ``hold_s``
  before it lets it rise again, and recovers on the centre line, slower (and slower yet while it
  still runs wide).
* Between stretches of steady driving it runs a schedule of manoeuvres that excite what a fit of
  the car needs, cycling their parameters so that they land at several speeds:
  ``launch`` (brake to rest or to low speed, then full -- sometimes partial -- throttle until the
  planned speed), ``brake`` (from speed at levels 0.15 ... 1.0, full included, until the speed has
  fallen by about two thirds), ``coast`` (no throttle and no brake for a few seconds),
  ``steer_step`` (a step of steer held, then released) and ``steer_sweep`` (sinusoidal steer at
  0.3 ... 3 Hz), both superposed on the line following, their amplitude chosen for a lateral
  acceleration of 30-70% of the pace at that speed. Steady cornering at rising lateral
  acceleration is what the pace itself does. A manoeuvre starts only where it is safe: the car
  centred and aligned, the curvature ahead leaving room for the manoeuvre's lateral acceleration
  (braking at 0.8 and above only on straights: locked wheels may not steer). It is aborted --
  and the car recovers on the centre line, slower -- when the car nears an edge or slides.

The policy never sees the episode ends itself: the caller reports them (``end_episode``), so that
leaving the track lowers the pace for the next episode. ``status()`` gives the pace, the learned
gains and the manoeuvre counts for progress display and summaries.
"""
from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any

import numpy as np

MANOEUVRES = ("launch", "brake", "coast", "steer_step", "steer_sweep")
#: the order manoeuvres are run in (then again); each kind cycles through its own parameters
SCHEDULE = ("launch", "steer_sweep", "brake", "coast", "steer_step", "steer_sweep", "brake", "launch",
            "steer_step", "coast", "steer_sweep", "brake")
# per-kind parameter cycles (of different lengths, so that combinations vary from one round to the next)
LAUNCH_FROM = (0.0, 0.3, 0.0, 0.15)  # fraction of the speed cap to launch from (0: from rest)
LAUNCH_THROTTLE = (1.0, 1.0, 0.5, 1.0, 0.75)
BRAKE_LEVELS = (1.0, 0.3, 0.6, 0.85, 0.45, 0.15)
BRAKE_FROM = (1.0, 0.7, 0.85, 0.55)  # fraction of the speed cap to brake from
COAST_S = (3.0, 2.0, 4.0)
COAST_FROM = (0.9, 0.6, 1.0)
STEP_ACCEL = (0.3, 0.5, 0.7, 0.4)  # step size as lateral acceleration, fraction of the pace
STEP_HOLD_S = (0.6, 1.0, 0.4)
STEP_FROM = (0.5, 0.8, 1.0, 0.35)
SWEEP_HZ = (0.3, 0.7, 1.2, 2.0, 3.0, 0.5, 1.6)
SWEEP_ACCEL = (0.3, 0.5, 0.4)
SWEEP_FROM = (0.6, 0.9, 0.4, 1.0, 0.75)
# speed bands (m/s) in which the steering gain is measured separately (understeer grows with speed)
GAIN_BANDS = np.array([4.0, 8.0, 12.0, 17.0, 23.0, 30.0, 40.0])
# speed bands (m/s) in which the pedals' effect is measured separately (engines are power-limited)
PEDAL_BANDS = np.array([2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0])


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """Settings of the probe. Nothing here describes the car: they are the driver's caution."""

    dt: float = 0.05  # s, control period
    seed: int = 0  # the pauses between manoeuvres are drawn from it
    # line following
    preview_time: float = 0.5  # s: the aim point is this far ahead in time ...
    preview_min: float = 4.0  # m: ... and at least this far
    steer_gain: float = 0.15  # 1/m per unit steer: prior guess of path curvature per steer, refined online
    line_ki: float = 0.004  # 1/(m^2 s): integral of the lateral offset, in path curvature
    # pace
    start_speed: float = 5.0  # m/s: the first speed cap
    start_lat_accel: float = 2.0  # m/s^2: the first lateral acceleration allowed in corners
    start_decel: float = 2.0  # m/s^2: the deceleration the speed plan counts on until braking is measured
    max_speed: float = 80.0  # m/s: the cap never rises above this
    max_lat_accel: float = 40.0  # m/s^2: nor the lateral acceleration above this
    pace_rise: float = 0.08  # 1/s: relative rise of the pace per second driven at it
    slide_backoff: float = 0.85  # the allowed lateral acceleration times this after a slide
    edge_backoff: float = 0.93  # ... after running towards an edge
    off_track_backoff: float = 0.7  # ... after leaving the track
    hold_s: float = 4.0  # s: no rise of the pace after a back-off
    # safety
    edge_frac: float = 0.6  # near an edge: |lateral offset| past this fraction of the half-width
    centred_frac: float = 0.35  # centred enough to start a manoeuvre
    slide_yaw: float = 0.1  # rad/s: a yaw-rate residual past this plus slide_yaw_rel of the yaw rate ...
    slide_yaw_rel: float = 0.3  # ... counts towards a slide
    drift_rate: float = 0.3  # m/s: the lateral offset growing faster than this: drifting off the line
    slide_heading: float = 0.5  # rad: heading error that counts as a slide
    # A game's yaw rate can chatter from tick to tick (CarRacing's by 0.3-1.7 rad/s above 40 m/s, its
    # tyre forces at their limit): backing off on that kept the pace below 50 m/s. So a slide's
    # yaw-rate residuals must also exceed slide_noise times the chatter measured as the car drives
    # (what it leaves in the filtered residuals), and hold for slide_persist_s.
    slide_noise: float = 3.0
    slide_persist_s: float = 0.12
    # speed control
    speed_tau: float = 0.5  # s: the speed loop asks for (target - speed) / speed_tau of acceleration ...
    speed_ki: float = 0.3  # 1/s^2: ... plus this times the integrated speed error
    pedal_gain: float = 10.0  # m/s^2 per unit of throttle or brake: prior guess, measured online
    max_decel: float = 20.0  # m/s^2: the speed plan never counts on harder braking than this
    min_speed: float = 3.0  # m/s: never aims slower (except to launch from rest)
    cruise_s: tuple[float, float] = (1.5, 3.5)  # s of steady driving between manoeuvres (uniform)
    approach_timeout_s: float = 12.0  # s: a manoeuvre whose conditions are not met by then is skipped

    def __post_init__(self):
        for name in ("dt", "preview_time", "preview_min", "steer_gain", "start_speed", "start_lat_accel",
                     "start_decel", "pace_rise", "speed_tau", "pedal_gain", "max_decel", "min_speed"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ProbeConfig.{name} = {getattr(self, name)}; expected > 0")
        for name in ("slide_backoff", "edge_backoff", "off_track_backoff", "edge_frac", "centred_frac"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"ProbeConfig.{name} = {getattr(self, name)}; expected a fraction in (0, 1)")
        if self.start_speed > self.max_speed or self.start_lat_accel > self.max_lat_accel:
            raise ValueError("ProbeConfig: start_speed / start_lat_accel above max_speed / max_lat_accel")


class _PedalResponse:
    """What the pedals do, measured as the car drives: the acceleration over a control step is
    ``b_thr * throttle - b_brk * brake + c`` (c: drag and rolling resistance), fitted per speed
    band and over all speeds by recursive least squares with forgetting. A band's own fit is
    used once it has seen enough of that pedal, else the fit over all speeds, else the prior."""

    def __init__(self, prior_gain: float, forget: float = 0.998):
        n = len(PEDAL_BANDS) + 2  # the bands, then all speeds
        self.theta = np.tile(np.array([prior_gain, prior_gain, 0.0]), (n, 1))
        self._p0 = np.diag([prior_gain ** 2 * 4.0, prior_gain ** 2 * 4.0, 4.0])
        self.P = np.tile(self._p0, (n, 1, 1))
        self.seen = np.zeros((n, 2))  # forgetting sums of throttle^2 and brake^2
        self.prior, self.forget = prior_gain, forget

    def _band(self, v: float) -> int:
        return int(np.searchsorted(PEDAL_BANDS, v))

    def update(self, v: float, throttle: float, brake: float, accel: float) -> None:
        x = np.array([throttle, -brake, 1.0])
        for b in (self._band(v), len(PEDAL_BANDS) + 1):
            P, th = self.P[b], self.theta[b]
            px = P @ x
            k = px / (self.forget + x @ px)
            th += k * (accel - x @ th)
            P[:] = (P - np.outer(k, px)) / self.forget
            # no wind-up of directions the data does not excite: never less sure than the prior
            if np.trace(P) > np.trace(self._p0):
                P *= np.trace(self._p0) / np.trace(P)
            self.seen[b] = self.seen[b] * self.forget + np.array([throttle, brake]) ** 2

    def gains(self, v: float) -> tuple[float, float, float]:
        """(throttle gain, brake gain, c) at speed v, m/s^2."""
        out = []
        for j in range(2):
            b = self._band(v)
            if self.seen[b, j] < 3.0:
                b = len(PEDAL_BANDS) + 1
            out.append(float(np.clip(self.theta[b, j], 0.05 * self.prior, 200.0 * self.prior))
                       if self.seen[b, j] >= 3.0 else self.prior)
        b = self._band(v)
        c = self.theta[b, 2] if self.seen[b].sum() >= 3.0 else self.theta[-1, 2]
        return out[0], out[1], float(np.clip(c, -30.0, 5.0))


class _TrackArrays:
    """The track's centre line in float64 numpy, with periodic interpolation by arc length."""

    def __init__(self, track):
        a = lambda k: np.asarray(getattr(track, k), np.float64)  # noqa: E731
        self.x, self.y, self.heading, self.curvature = a("x"), a("y"), a("heading"), a("curvature")
        self.w_left, self.w_right = a("w_left"), a("w_right")
        self.m = len(self.x)
        self.length = float(np.asarray(track.length))
        self.ds = float(np.asarray(track.ds))
        self.abs_curv = np.abs(self.curvature)

    def _locate(self, s):
        u = np.mod(s, self.length) / self.ds
        i = np.floor(u).astype(np.int64) % self.m
        return i, (i + 1) % self.m, u - np.floor(u)

    def interp(self, values, s):
        i0, i1, t = self._locate(s)
        return values[i0] * (1 - t) + values[i1] * t

    def ahead(self, s, dist: float, step: float | None = None) -> np.ndarray:
        """Arc lengths from s to s + dist."""
        step = step or max(self.ds, 0.5)
        return s + np.arange(0.0, max(dist, step) + 1e-9, step)

    def max_curvature(self, s, dist: float) -> float:
        return float(np.max(self.interp(self.abs_curv, self.ahead(s, dist))))


@dataclasses.dataclass
class _Manoeuvre:
    kind: str
    params: dict
    phase: str = "approach"  # approach -> run (-> settle for steer steps) -> done
    t0: float = 0.0  # when the current phase began
    v0: float = 0.0  # speed when it began to run


class ProbePolicy:
    """``act(pos, tel) -> [steer, throttle, brake]`` for one control step.

    ``track``: anything with the surrogate ``Track`` fields (x, y, heading, curvature, w_left,
    w_right, length, ds), e.g. ``RealGameEnv.track``. ``pos``: the car's track position
    (``s``, ``lateral``, ``heading_error``; ``RealGameEnv.track_pos``). ``tel``: its telemetry
    (``x``, ``y``, ``yaw``, ``speed``, ``accel_long``, ``accel_lat``, ``yaw_rate``;
    ``RealGameEnv.last_telemetry``). Call ``start_episode()`` after each reset and
    ``end_episode(reason)`` when an episode ends."""

    def __init__(self, track, config: ProbeConfig = ProbeConfig()):
        self.cfg = config
        self.track = _TrackArrays(track)
        self.rng = np.random.default_rng(config.seed)
        # the pace: kept across episodes
        self.lat_accel = config.start_lat_accel
        self.speed_cap = config.start_speed
        self.decel_seen = 0.0  # m/s^2: the hardest braking measured (brake >= 0.8, on track)
        self.pedals = _PedalResponse(config.pedal_gain)
        self._hold_until = -math.inf
        # steering gain per speed band: forgetting least squares of path curvature on steer
        self._g_sxx = np.zeros(len(GAIN_BANDS) + 1)
        self._g_sxy = np.zeros(len(GAIN_BANDS) + 1)
        # bookkeeping
        self.counts = {k: {"done": 0, "aborted": 0, "skipped": 0} for k in MANOEUVRES}
        self.events = {"slide": 0, "edge": 0, "off_track": 0, "stuck": 0}
        self._schedule_i = 0
        self._kind_i = {k: 0 for k in MANOEUVRES}
        self.time = 0.0  # s driven by this policy (all episodes)
        self._last_event_t = -math.inf
        self.start_episode()

    # ------------------------------------------------------------------ episodes
    def start_episode(self) -> None:
        """Reset the per-episode state (the pace and what was learned are kept)."""
        self.mode = "cruise"  # cruise | manoeuvre | recover
        self.manoeuvre: _Manoeuvre | None = None
        self._cruise_until = self.time + self._cruise_gap()
        self._recover_ok_t = 0.0
        self._lat_i = 0.0
        self._speed_i = 0.0
        self._steer_prev = 0.0
        self._steer_lag = 0.0
        self._pedal_prev = 0.0
        self._v_prev: float | None = None
        self._yaw_res = 0.0
        self._cmd_res = 0.0
        self._slide_t = 0.0
        self._r_prev: float | None = None
        self._r_chatter = 0.0  # rad/s: the yaw rate's step-to-step noise, measured
        self._lat_prev: float | None = None
        self._alat_recent: collections.deque = collections.deque([0.0], maxlen=max(1, round(2.0 / self.cfg.dt)))
        self._lat_rate = 0.0
        self._decel_f = 0.0
        self._recover_v = 0.0
        self.target_speed = 0.0

    def end_episode(self, reason: str | None) -> None:
        """The episode ended (``RealGameEnv`` ``info["end_reason"]``): leaving the track backs the pace off."""
        if self.manoeuvre is not None and self.manoeuvre.phase != "approach":
            self.counts[self.manoeuvre.kind]["aborted"] += 1
        self.manoeuvre = None
        if reason in ("off_track", "wrong_way"):
            self.events["off_track"] += 1
            self._back_off(self.cfg.off_track_backoff, at=max(self._alat_recent, default=0.0))
        elif reason == "stuck":
            self.events["stuck"] += 1

    # ------------------------------------------------------------------ helpers
    def _cruise_gap(self) -> float:
        lo, hi = self.cfg.cruise_s
        return float(self.rng.uniform(lo, hi))

    def _back_off(self, factor: float, at: float | None = None) -> None:
        """Lower the pace by ``factor``; below ``factor`` times the lateral acceleration ``at`` which
        the trouble came (but to no less than 0.6 of the pace)."""
        new = self.lat_accel * factor
        if at is not None and at > 0:
            new = min(new, max(factor * at, 0.6 * self.lat_accel))
        self.lat_accel = max(0.5 * self.cfg.start_lat_accel, new)
        self.speed_cap = max(self.cfg.min_speed + 1.0, self.speed_cap * math.sqrt(factor))
        self._hold_until = self.time + self.cfg.hold_s

    def _band(self, v: float) -> int:
        return int(np.searchsorted(GAIN_BANDS, v))

    def steer_gain(self, v: float) -> float:
        """Path curvature per unit of steer at speed v (1/m): measured in v's band, else in all, else the prior."""
        b = self._band(v)
        prior = self.cfg.steer_gain
        if self._g_sxx[b] > 20.0:
            g = self._g_sxy[b] / self._g_sxx[b]
        elif self._g_sxx.sum() > 20.0:
            g = self._g_sxy.sum() / self._g_sxx.sum()
        else:
            return prior
        return float(np.clip(g, 0.2 * prior, 5.0 * prior))

    @property
    def planned_decel(self) -> float:
        """The deceleration the speed plan counts on (m/s^2)."""
        return float(min(self.cfg.max_decel, max(self.cfg.start_decel, 0.6 * self.decel_seen)))

    def allowed_speed(self, s: float, v: float, lat_accel: float | None = None) -> float:
        """The fastest speed at arc length s from which the car can brake (at ``planned_decel``) for
        every corner ahead taken at the allowed lateral acceleration."""
        a_lat = self.lat_accel if lat_accel is None else lat_accel
        d_brk = self.planned_decel
        latency = 0.3 * v  # m travelled before the brakes bite
        horizon = v * v / (2 * d_brk) + latency + 10.0
        ss = self.track.ahead(s, horizon)
        d = ss - s
        v_curve = np.sqrt(a_lat / np.maximum(self.track.interp(self.track.abs_curv, ss), 1e-4))
        return float(np.min(np.sqrt(v_curve ** 2 + 2 * d_brk * np.maximum(d - latency, 0.0))))

    def _room(self, s: float, v: float, dist: float) -> float:
        """Lateral acceleration (m/s^2) the track ahead needs at speed v over ``dist`` metres."""
        return v * v * self.track.max_curvature(s, dist)

    def _next_manoeuvre(self) -> _Manoeuvre:
        kind = SCHEDULE[self._schedule_i % len(SCHEDULE)]
        self._schedule_i += 1
        i = self._kind_i[kind]
        self._kind_i[kind] += 1
        pick = lambda seq: seq[i % len(seq)]  # noqa: E731
        if kind == "launch":
            p = {"from": pick(LAUNCH_FROM), "throttle": pick(LAUNCH_THROTTLE)}
        elif kind == "brake":
            p = {"level": pick(BRAKE_LEVELS), "from": pick(BRAKE_FROM)}
        elif kind == "coast":
            p = {"seconds": pick(COAST_S), "from": pick(COAST_FROM)}
        elif kind == "steer_step":
            p = {"accel": pick(STEP_ACCEL), "hold": pick(STEP_HOLD_S), "from": pick(STEP_FROM),
                 "sign": 1.0 if i % 2 == 0 else -1.0}
        else:
            p = {"hz": pick(SWEEP_HZ), "accel": pick(SWEEP_ACCEL), "from": pick(SWEEP_FROM),
                 "sign": 1.0 if i % 2 == 0 else -1.0}
        return _Manoeuvre(kind, p, t0=self.time)

    def _finish(self, outcome: str) -> None:
        m = self.manoeuvre
        if m is not None:
            self.counts[m.kind][outcome] += 1
        self.manoeuvre = None
        self.mode = "cruise" if outcome != "aborted" else "recover"
        self._cruise_until = self.time + self._cruise_gap()
        self._recover_ok_t = 0.0

    # ------------------------------------------------------------------ the step
    def act(self, pos: Any, tel: Any) -> np.ndarray:
        """Controls [steer, throttle, brake] (float32) for the car at ``pos`` with telemetry ``tel``."""
        c, tr = self.cfg, self.track
        dt = c.dt
        s, lat, he = float(pos.s), float(pos.lateral), float(pos.heading_error)
        x, y, yaw = float(tel.x), float(tel.y), float(tel.yaw)
        v = max(float(tel.speed), 0.0)
        a_long, a_lat, r = float(tel.accel_long), float(tel.accel_lat), float(tel.yaw_rate)
        self.time += dt

        # -- measurements
        kappa = float(tr.interp(tr.curvature, s))
        half = float(tr.interp(tr.w_left if lat >= 0 else tr.w_right, s))
        edge = abs(lat) / max(half, 1e-3)  # fraction of the half-width towards the nearer edge
        if self._lat_prev is not None:
            self._lat_rate += (lat - self._lat_prev) / dt * 0.3 - 0.3 * self._lat_rate
        self._lat_prev = lat
        alpha = dt / (0.15 + dt)
        self._steer_lag += (self._steer_prev - self._steer_lag) * dt / (0.12 + dt)  # the steering the car shows
        g = self.steer_gain(v)
        if self._r_prev is not None:  # white noise of s: E|r - r_prev| = 1.128 s; averaged over ~2 s
            self._r_chatter += dt / (2.0 + dt) * (abs(r - self._r_prev) / 1.128 - self._r_chatter)
        self._r_prev = r
        self._yaw_res += alpha * ((r - v * kappa) - self._yaw_res)  # not following the track
        self._cmd_res += alpha * ((r - v * g * self._steer_lag) - self._cmd_res)  # not following the steering
        self._alat_recent.append(abs(a_lat))
        # learn the steering gain where the car is calm: well inside the pace, steering steady and
        # not saturated, and (once a gain is known) the yaw rate roughly what it predicts
        ratio = (r / v) / (g * self._steer_lag) if v > 1.0 and abs(self._steer_lag) > 0.03 else 1.0
        calm = (v > 3.0 and abs(he) < 0.2 and abs(a_lat) < 0.5 * self.lat_accel and self.mode != "recover"
                and abs(self._steer_lag - self._steer_prev) < 0.05 and abs(self._steer_lag) < 0.9
                and (self._g_sxx.sum() < 20.0 or 0.6 < ratio < 1.6))
        if calm and abs(self._steer_lag) > 0.03:
            b = self._band(v)
            self._g_sxx *= 0.9995
            self._g_sxy *= 0.9995
            self._g_sxx[b] += self._steer_lag ** 2 * 100.0
            self._g_sxy[b] += self._steer_lag * (r / v) * 100.0
        # the pedals' effect: the speed change over the last step against the pedal held through it
        a_meas = None if self._v_prev is None else (v - self._v_prev) / dt
        if a_meas is not None and min(v, self._v_prev) > 0.5:
            self.pedals.update(self._v_prev, max(self._pedal_prev, 0.0), max(-self._pedal_prev, 0.0), a_meas)
        if self._pedal_prev <= -0.8 and a_meas is not None and v > 3.0:  # the hardest braking seen (filtered)
            self._decel_f += alpha * (-a_meas - self._decel_f)
            self.decel_seen = max(self.decel_seen, self._decel_f)
        else:
            self._decel_f = 0.0
        self._v_prev = v

        # -- trouble: a slide, or running towards an edge. A slide: the car does not turn as the
        # steering asks (|yaw_rate - speed * gain * steer| large: understeer past the grip, or
        # oversteer) while it moves away from the line (drifting outwards, or turning unlike the
        # track, |yaw_rate - speed * curvature| large); or it points well off the track's direction.
        # Steering manoeuvres ask for a yaw rate the car may not follow at once: there only the
        # heading and the edges count.
        outwards = lat * self._lat_rate > 0.0
        drifting = outwards and abs(self._lat_rate) > c.drift_rate and edge > 0.2
        # the chatter left in the filtered residuals (a first-order filter keeps alpha / (2 - alpha) of
        # white noise's variance), times slide_noise
        band = c.slide_yaw + c.slide_noise * self._r_chatter * math.sqrt(alpha / (2.0 - alpha))
        off_line = drifting or (outwards and abs(self._yaw_res) > band + c.slide_yaw_rel * abs(v * kappa))
        off_steer = abs(self._cmd_res) > band + c.slide_yaw_rel * abs(v * g * self._steer_lag)
        exciting = (self.manoeuvre is not None and self.manoeuvre.phase == "run"
                    and self.manoeuvre.kind.startswith("steer"))
        self._slide_t = self._slide_t + dt if off_steer and off_line and not exciting else 0.0
        slide = v > 3.0 and (abs(he) > c.slide_heading or self._slide_t >= max(c.slide_persist_s, dt) - 1e-9)
        to_edge = edge > c.edge_frac and lat * self._lat_rate > 0.0
        if (slide or to_edge) and self.mode != "recover":
            fresh = self.time - self._last_event_t > 1.0
            self._last_event_t = self.time
            if fresh:
                self.events["slide" if slide else "edge"] += 1
                self._back_off(c.slide_backoff if slide else c.edge_backoff, at=max(self._alat_recent))
            if self.manoeuvre is not None and self.manoeuvre.phase != "approach":
                self._finish("aborted")
            else:
                self.manoeuvre = None
                self.mode = "recover"
                self._recover_ok_t = 0.0
            self._recover_v = v

        # -- the pace rises while the car is driven at it and nothing is wrong
        steady = self.mode == "cruise" or (self.manoeuvre is not None and self.manoeuvre.phase == "approach")
        if steady and self.time >= self._hold_until and not slide and not drifting and edge < c.edge_frac:
            rise = 1.0 + c.pace_rise * dt
            demand = v * v * abs(kappa)  # the car is at the pace in a corner, and follows it
            if demand >= 0.6 * self.lat_accel and abs(a_lat) >= 0.9 * demand and v > 3.0:
                self.lat_accel = min(c.max_lat_accel, self.lat_accel * rise)
            if v >= 0.9 * self.speed_cap:
                self.speed_cap = min(c.max_speed, self.speed_cap * rise + 0.1 * dt)

        # -- what to do: a target speed (or an open-loop pedal) and a steering excitation
        v_allow = max(c.min_speed, min(self.speed_cap, self.allowed_speed(s, v)))
        v_target, pedal, excite = v_allow, None, 0.0
        if self.mode == "recover":
            if drifting:  # still running wide: slower yet
                self._recover_v = min(self._recover_v, v - 1.0)
            v_target = max(c.min_speed, min(v_allow, 0.85 * self._recover_v))
            ok = edge < 0.3 and abs(he) < 0.15 and not slide
            self._recover_ok_t = self._recover_ok_t + dt if ok else 0.0
            if self._recover_ok_t >= 1.0:
                self.mode = "cruise"
                self._cruise_until = self.time + self._cruise_gap()
        elif self.mode == "cruise":
            if self.time >= self._cruise_until:
                self.manoeuvre = self._next_manoeuvre()
                self.mode = "manoeuvre"
        if self.mode == "manoeuvre":
            v_target, pedal, excite = self._manoeuvre_step(s, v, he, edge, v_allow)

        # -- steering: pure pursuit on the centre line + the integral of the offset + the excitation
        ld = max(c.preview_min, v * c.preview_time)
        ax, ay = float(tr.interp(tr.x, s + ld)), float(tr.interp(tr.y, s + ld))
        dx, dy = ax - x, ay - y
        cy, sy = math.cos(yaw), math.sin(yaw)
        fx, fy = cy * dx + sy * dy, -sy * dx + cy * dy
        curv = 2.0 * fy / max(fx * fx + fy * fy, 1.0)
        if self.mode == "cruise":
            self._lat_i = float(np.clip(self._lat_i * (1 - 0.05 * dt) - c.line_ki * lat * dt, -0.03, 0.03))
        steer = float(np.clip((curv + self._lat_i) / g + excite, -1.0, 1.0))

        # -- speed: PI on the measured speed, unless the manoeuvre sets the pedal
        self.target_speed = v_target
        if pedal is None:
            pedal = self._speed_pedal(v_target, v)
        self._steer_prev, self._pedal_prev = steer, pedal
        return np.array([steer, max(pedal, 0.0), max(-pedal, 0.0)], np.float32)

    def _speed_pedal(self, v_target: float, v: float) -> float:
        """Pedal (throttle > 0, brake < 0) that asks for the acceleration closing the speed error in
        ``speed_tau``, through the pedal response measured so far."""
        c = self.cfg
        err = v_target - v
        b_thr, b_brk, drag = self.pedals.gains(v)
        want = err / max(c.speed_tau, 4 * c.dt) + self._speed_i
        raw = (want - drag) / (b_thr if want >= drag else b_brk)
        if -1.0 < raw < 1.0 or raw * err < 0:  # no wind-up while saturated
            self._speed_i = float(np.clip(self._speed_i + c.speed_ki * err * c.dt, -3.0, 3.0))
        return float(np.clip(raw, -1.0, 1.0))

    def _manoeuvre_step(self, s, v, he, edge, v_allow) -> tuple[float, float | None, float]:
        """(target speed, open-loop pedal or None, steering excitation) for the running manoeuvre."""
        c, m = self.cfg, self.manoeuvre
        p, k = m.params, m.kind
        elapsed = self.time - m.t0
        centred = edge < c.centred_frac and abs(he) < 0.12
        if m.phase == "approach":
            if elapsed > c.approach_timeout_s:
                self._finish("skipped")
                return v_allow, None, 0.0
            if k == "launch":
                target = p["from"] * self.speed_cap
                if target < 0.5:  # to rest: brake, then launch at once (before the env calls it stuck)
                    if v < 0.3:
                        m.phase, m.t0, m.v0 = "run", self.time, v
                    return 0.0, (-0.6 if v > 0.3 else 0.0), 0.0
                target = max(c.min_speed, min(target, v_allow))
                if v <= target + 0.5 and centred:
                    m.phase, m.t0, m.v0 = "run", self.time, v
                return target, None, 0.0
            # the speed it runs at: the scheduled share of the cap, but no faster than leaves room for it
            want = max(c.min_speed, min(p["from"] * self.speed_cap, v_allow, self._room_speed(k, p, s, v)))
            ready = v >= 0.85 * want and v <= 1.15 * want + 1.0 and centred
            if ready and k in ("brake", "coast", "steer_step", "steer_sweep"):
                dist, share = self._room_need(k, p, v)
                ready = (k != "brake" or v > 4.0) and self._room(s, v, dist) <= share * self.lat_accel
                if k == "coast":  # no braking due for a corner beyond the coasting stretch either
                    ready = ready and self.allowed_speed(s + dist, v) >= v
            if ready:
                m.phase, m.t0, m.v0 = "run", self.time, v
            return want, None, 0.0
        # the manoeuvre runs
        if k == "launch":
            top = min(v_allow, self.speed_cap)
            if (v >= 0.95 * top and elapsed > 0.5) or elapsed > 8.0:
                self._finish("done")
                return v_allow, None, 0.0
            return top, p["throttle"], 0.0
        if k == "brake":
            if v <= max(2.5, 0.35 * m.v0) or elapsed > 5.0:
                self._finish("done")
                return v_allow, None, 0.0
            return 0.0, -p["level"], 0.0
        if k == "coast":
            if elapsed >= p["seconds"] or v < max(2.5, 0.4 * m.v0) or v > v_allow + 0.5:
                self._finish("done" if elapsed > 1.0 else "aborted")
                return v_allow, None, 0.0
            return v, 0.0, 0.0
        # steering excitation at the speed it began at: amplitude for a share of the pace's lateral acceleration
        v_run = max(m.v0, c.min_speed)
        amp = float(np.clip(p["accel"] * self.lat_accel / (v_run * v_run * self.steer_gain(v_run)), 0.03, 0.6))
        if k == "steer_step":
            if elapsed >= p["hold"] + 1.0:
                self._finish("done")
                return v_allow, None, 0.0
            return min(m.v0, v_allow), None, (p["sign"] * amp if elapsed < p["hold"] else 0.0)
        if elapsed >= self._sweep_seconds(p):
            self._finish("done")
            return v_allow, None, 0.0
        return min(m.v0, v_allow), None, p["sign"] * amp * math.sin(2 * math.pi * p["hz"] * elapsed)

    def _room_need(self, kind: str, p: dict, v: float) -> tuple[float, float]:
        """(distance ahead, share of the pace's lateral acceleration the track may use there) for a
        manoeuvre run from speed v: the rest is the manoeuvre's."""
        if kind == "brake":
            dist = v * v / (2 * max(self.planned_decel, 2.0)) + 5.0
            return dist, (0.3 if p["level"] >= 0.8 else 0.6)  # locked wheels may not steer: straights only
        if kind == "coast":
            return v * p["seconds"] + 5.0, 0.9
        span = p["hold"] + 1.0 if kind == "steer_step" else self._sweep_seconds(p)
        return v * span + 5.0, 0.9 - p["accel"]

    def _room_speed(self, kind: str, p: dict, s: float, v: float) -> float:
        """The fastest speed from which this manoeuvre leaves the track ahead enough room (inf: any)."""
        if kind not in ("brake", "coast", "steer_step", "steer_sweep"):
            return math.inf
        dist, share = self._room_need(kind, p, max(v, self.cfg.min_speed))
        return math.sqrt(share * self.lat_accel / max(self.track.max_curvature(s, dist), 1e-4))

    @staticmethod
    def _sweep_seconds(p: dict) -> float:
        return float(np.clip(3.0 / p["hz"], 2.0, 6.0))

    # ------------------------------------------------------------------ reporting
    def status(self) -> dict:
        """The pace, what was learned and the manoeuvre counts (JSON-ready)."""
        return {"lat_accel_mps2": round(self.lat_accel, 3), "speed_cap_mps": round(self.speed_cap, 3),
                "planned_decel_mps2": round(self.planned_decel, 3), "decel_seen_mps2": round(self.decel_seen, 3),
                "steer_gain_per_m": {f"<{b:g}": round(self.steer_gain(b - 0.5), 4) for b in GAIN_BANDS},
                "mode": self.mode, "manoeuvre": None if self.manoeuvre is None else self.manoeuvre.kind,
                "manoeuvres": {k: dict(v) for k, v in self.counts.items()}, "back_offs": dict(self.events)}
