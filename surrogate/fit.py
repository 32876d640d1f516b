"""Fit the surrogate car to a game's telemetry: physical parameters, actuators and a learned
residual, by multi-step open-loop rollout error (JAX, optax, one jit per model).

The models, each fitted and each reported (``fit_all``):
- ``kinematic`` and ``dynamic``: the single-track models of ``surrogate.car`` with the actuator
  side (steering servo lag ``steer_tau`` and rate limit, pedal maps, drive and brake forces, drag
  and rolling resistance) and the input delay in control steps (chosen by validation error);
- ``dynamic+residual``: the dynamic model with ``surrogate.residual``'s small network on top, for
  what the physics misses;
- ``dynamic (one-step)``: the dynamic model fitted on one-step errors only, the usual shortcut,
  reported to show how it drifts over the seconds a policy plans for. Never chosen.

Parameters stay inside ``PARAM_RANGES``: each fitted field is a sigmoid of an unconstrained value,
on a log scale where its range spans orders of magnitude. The mass is not fitted: motion alone
cannot tell a heavy car with strong tyres and engine from a light one with weak ones, so the forces
are fitted relative to the default mass. The loss is the Charbonnier (smooth absolute) error of
position, heading, speed and yaw rate over windows teacher-forced on the recorded controls, the
horizon growing from a few steps to ``FitConfig.horizon_s`` while the fit runs; several starting
points are fitted at once (vmapped) and the best kept. The model is chosen by its validation error
one second ahead on held-out episodes. Each chosen parameter gets an uncertainty (Laplace: the
loss's curvature at the optimum, scaled by the residual error), which training turns into domain
randomisation around the fit.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from surrogate.car import MODELS, PARAM_RANGES, CarParams, CarState, speed
from surrogate.fit_data import FitData, Windows
from surrogate.residual import Residual, apply_residual, init_residual

# Fields fitted per model (the rest keep their defaults: mass, g, the tyre curve's E).
KINEMATIC_FIELDS = ("lf", "lr", "mu", "max_steer", "max_steer_rate", "steer_tau", "engine_power", "max_drive_force",
                    "max_brake_force", "brake_front_share", "drag_coef", "rolling_resistance", "throttle_gamma",
                    "brake_gamma")
FIT_FIELDS = {
    "kinematic": KINEMATIC_FIELDS,
    "dynamic": KINEMATIC_FIELDS + ("yaw_inertia", "tyre_B", "tyre_C", "rear_grip_ratio", "cg_height"),
}
# Error scales of the loss: what counts as one unit of error in each quantity.
SCALES = {"pos": 0.5, "yaw": 0.05, "speed": 0.5, "yaw_rate": 0.1}
REPORT_HORIZONS_S = (0.5, 1.0, 2.0)
MODEL_NAMES = ("kinematic", "dynamic", "dynamic+residual", "dynamic (one-step)")


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """How the fit runs; the defaults fit 10 minutes of telemetry within minutes on a 2-core CPU."""

    steps: int = 600  # Adam steps per model
    delay_steps: int = 250  # Adam steps per candidate input delay (kinematic model)
    residual_steps: int = 400
    batch: int = 128  # windows per step
    starts: int = 4  # starting points fitted at once; the best is kept
    learning_rate: float = 0.05  # in the unconstrained space
    residual_learning_rate: float = 3e-3
    horizon_s: float = 2.0  # longest rollout (also the longest reported error)
    first_horizon: int = 4  # steps, at the start of the horizon ramp
    ramp_frac: float = 0.6  # share of the steps over which the horizon grows to horizon_s
    substeps: int = 4
    max_delay: int = 3  # input delays tried: 0 .. max_delay frames
    residual: bool = True
    residual_hidden: tuple[int, ...] = (32, 32)
    one_step: bool = True  # also fit and report the one-step model
    prior: float = 1e-3  # pull towards the starting point in the unconstrained space (unidentifiable directions)
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "delay_steps", "batch", "starts", "first_horizon", "substeps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"FitConfig.{name} = {getattr(self, name)}; expected an integer >= 1")
        if self.residual_steps < 0 or self.max_delay < 0:
            raise ValueError("FitConfig.residual_steps and max_delay must be >= 0")
        if not (0.0 < self.horizon_s <= 10.0):
            raise ValueError(f"FitConfig.horizon_s = {self.horizon_s}; expected seconds in (0, 10]")


# ----------------------------------------------------------------------------- parameter space


@dataclasses.dataclass(frozen=True)
class Space:
    """The unconstrained space of one model's fitted fields."""

    fields: tuple[str, ...]

    def _t(self):
        lo = np.array([PARAM_RANGES[f][0] for f in self.fields], np.float64)
        hi = np.array([PARAM_RANGES[f][1] for f in self.fields], np.float64)
        log = (lo > 0) & (hi / np.where(lo > 0, lo, 1.0) > 20.0)
        tlo = np.where(log, np.log(np.where(lo > 0, lo, 1.0)), lo)
        thi = np.where(log, np.log(np.where(lo > 0, hi, 1.0)), hi)
        return log, tlo, thi

    def to_z(self, values: np.ndarray) -> np.ndarray:
        log, tlo, thi = self._t()
        v = np.asarray(values, np.float64)
        tv = np.where(log, np.log(np.maximum(v, 1e-12)), v)
        u = np.clip((tv - tlo) / (thi - tlo), 1e-3, 1 - 1e-3)
        return np.log(u / (1 - u)).astype(np.float32)

    def from_z(self, z):
        log, tlo, thi = self._t()
        tv = jnp.asarray(tlo, jnp.float32) + jax.nn.sigmoid(z) * jnp.asarray(thi - tlo, jnp.float32)
        log = jnp.asarray(log)
        # exp only where the scale is logarithmic: exp of a linear value overflows and its gradient is NaN
        return jnp.where(log, jnp.exp(jnp.where(log, tv, 0.0)), tv)

    def car(self, z, base: CarParams) -> CarParams:
        v = self.from_z(z)
        return base.replace(**{f: v[..., i] for i, f in enumerate(self.fields)})

    def values(self, car: CarParams) -> np.ndarray:
        return np.array([float(getattr(car, f)) for f in self.fields])


def initial_car(data: FitData, base: CarParams = CarParams()) -> CarParams:
    """A starting car read off the data: grip from the largest lateral acceleration, drive and brake
    force from the largest longitudinal ones, power from the largest acceleration times speed, and a
    drag that puts the top speed a little above the fastest recorded."""
    seg = data.segments
    cat = lambda f: np.concatenate([f(s) for s in seg])  # noqa: E731
    m, g = base.mass, base.g
    ay = np.abs(cat(lambda s: s.accel_lat[s.usable]))
    ax = cat(lambda s: s.accel_long[s.usable])
    v = cat(lambda s: s.speed[s.usable])
    thr = cat(lambda s: s.controls[s.usable, 1])
    brk = cat(lambda s: s.controls[s.usable, 2])
    clip = lambda name, val: float(np.clip(val, *PARAM_RANGES[name]))  # noqa: E731
    pct = lambda a, q, default: float(np.percentile(a, q)) if a.size > 20 else default  # noqa: E731
    mu = clip("mu", max(pct(ay, 99, 0.0) / g * 1.1, 0.5))
    drive = clip("max_drive_force", m * max(pct(ax[thr > 0.5], 99, 3.0), 1.0) * 1.2)
    brake = clip("max_brake_force", m * max(pct(-ax[brk > 0.5], 99, 5.0), 2.0) * 1.2)
    fast = (thr > 0.8) & (v > 5.0)
    power = clip("engine_power", m * max(pct((ax * v)[fast], 95, 0.0), 1.0) * 1.2) if fast.sum() > 20 else base.engine_power
    v_top = max(pct(v, 99.5, 30.0) * 1.3, 5.0)
    drag = clip("drag_coef", power / v_top ** 3)
    return base.replace(mu=mu, max_drive_force=drive, max_brake_force=brake, engine_power=power, drag_coef=drag)


# ----------------------------------------------------------------------------- rollouts and loss


def rollout(model: str, delay: int, max_delay: int, substeps: int, car: CarParams, residual: Residual | None,
            init, controls, dts):
    """One window: the model driven open loop from ``init`` under the recorded controls; returns
    (horizon, 5) predictions of x, y, yaw, speed, yaw rate after each step."""
    step = MODELS[model]
    prev = controls[max_delay - delay]
    state = CarState(x=init[0], y=init[1], yaw=init[2], vx=init[3], vy=init[4], yaw_rate=init[5],
                     steer=jnp.clip(prev[0], -1.0, 1.0) * car.max_steer, ax=init[6], ay=init[7])
    horizon = dts.shape[0]
    applied = jax.lax.dynamic_slice_in_dim(controls, max_delay + 1 - delay, horizon)

    def body(s, inp):
        u, dt = inp
        s = step(car, s, u, dt, substeps)
        s = apply_residual(residual, s, u, dt)
        return s, jnp.stack([s.x, s.y, s.yaw, speed(s), s.yaw_rate])

    return jax.lax.scan(body, state, (applied, dts))[1]


def errors(pred, target):
    """Per step: position (m), heading (rad, wrapped), speed (m/s) and yaw-rate (rad/s) errors."""
    pos = jnp.sqrt((pred[..., 0] - target[..., 0]) ** 2 + (pred[..., 1] - target[..., 1]) ** 2 + 1e-12)
    yaw = jnp.abs(jnp.mod(pred[..., 2] - target[..., 2] + jnp.pi, 2 * jnp.pi) - jnp.pi)
    return pos, yaw, jnp.abs(pred[..., 3] - target[..., 3]), jnp.abs(pred[..., 4] - target[..., 4])


def _charbonnier(e, scale):
    r = e / scale
    return jnp.sqrt(1.0 + r * r) - 1.0


def window_loss(pred, target, horizon):
    """Mean over the first ``horizon`` steps (a traced int) of the scaled smooth errors."""
    pos, yaw, spd, rate = errors(pred, target)
    per_step = (_charbonnier(pos, SCALES["pos"]) + _charbonnier(yaw, SCALES["yaw"])
                + _charbonnier(spd, SCALES["speed"]) + _charbonnier(rate, SCALES["yaw_rate"]))
    mask = jnp.arange(per_step.shape[-1]) < horizon
    return jnp.sum(per_step * mask, axis=-1) / jnp.maximum(jnp.sum(mask), 1)


def _batch_loss(model, delay, max_delay, substeps, space, base, z, residual, w: dict, horizon):
    car = space.car(z, base)
    pred = jax.vmap(lambda i, c, d: rollout(model, delay, max_delay, substeps, car, residual, i, c, d))(
        w["init"], w["controls"], w["dt"])
    return jnp.mean(window_loss(pred, w["target"], horizon))


def _as_arrays(w: Windows) -> dict:
    return {"init": jnp.asarray(w.init), "controls": jnp.asarray(w.controls), "dt": jnp.asarray(w.dt),
            "target": jnp.asarray(w.target)}


# ----------------------------------------------------------------------------- one fit


@dataclasses.dataclass
class ModelFit:
    name: str
    model: str  # surrogate.car model
    delay: int  # input delay, frames
    car: CarParams
    residual: Residual | None
    train_loss: float
    val: dict  # errors on the validation windows (see evaluate)
    seconds: float
    spread: dict = dataclasses.field(default_factory=dict)


def _horizon_at(step, steps, first, last, ramp_frac):
    """Geometric ramp from ``first`` to ``last`` steps over ``ramp_frac`` of the fit."""
    f = jnp.clip(step / jnp.maximum(ramp_frac * steps, 1.0), 0.0, 1.0)
    return jnp.round(first * (last / first) ** f).astype(jnp.int32)


def fit_model(data: FitData, model: str, delay: int, cfg: FitConfig, *, steps: int, base: CarParams,
              one_step: bool = False, progress: Callable[[str], None] | None = None) -> tuple[CarParams, float]:
    """Fit one model's physical parameters at one input delay; returns (car, training loss at the full horizon)."""
    space = Space(FIT_FIELDS[model])
    train = _as_arrays(data.train)
    n = len(data.train)
    rng = np.random.default_rng(cfg.seed)
    z0 = space.to_z(space.values(base))
    starts = np.stack([z0] + [z0 + rng.normal(0.0, 0.7, z0.shape).astype(np.float32) for _ in range(cfg.starts - 1)])
    last = 1 if one_step else data.horizon
    first = 1 if one_step else min(cfg.first_horizon, data.horizon)
    schedule = optax.cosine_decay_schedule(cfg.learning_rate, steps, alpha=0.1)
    opt = optax.adam(schedule)
    loss_fn = lambda z, w, h: _batch_loss(model, delay, data.max_delay, cfg.substeps, space, base, z, None, w, h)  # noqa: E731

    def objective(z, z_start, w, h):
        return loss_fn(z, w, h) + cfg.prior * jnp.sum((z - z_start) ** 2)

    @jax.jit
    def update(zs, z_starts, opt_states, idx, step):
        w = jax.tree_util.tree_map(lambda a: a[idx], train)
        h = _horizon_at(step, steps, first, last, cfg.ramp_frac)

        def one(z, z_start, st):
            loss, g = jax.value_and_grad(objective)(z, z_start, w, h)
            g = jnp.where(jnp.isfinite(g), g, 0.0)
            upd, st = opt.update(g, st, z)
            return optax.apply_updates(z, upd), st, loss

        return jax.vmap(one)(zs, z_starts, opt_states)

    @jax.jit
    def full_loss(zs, w):
        return jax.vmap(lambda z: loss_fn(z, w, last))(zs)

    zs = jnp.asarray(starts)
    z_starts = zs
    states = jax.vmap(opt.init)(zs)
    key_rng = np.random.default_rng(cfg.seed + 1)
    t0 = time.monotonic()
    for i in range(steps):
        idx = jnp.asarray(key_rng.integers(0, n, min(cfg.batch, n)))
        zs, states, loss = update(zs, z_starts, states, idx, jnp.float32(i))
        if progress is not None and (i % 50 == 0 or i == steps - 1):
            progress(f"{model} delay {delay}{' one-step' if one_step else ''}: step {i + 1}/{steps} "
                     f"loss {float(jnp.min(loss)):.4f} ({(i + 1) / (time.monotonic() - t0):.0f} steps/s)")
    # score every start on the same (up to 1024) training windows at the full horizon
    sel = jnp.asarray(key_rng.choice(n, min(n, 1024), replace=False))
    scores = np.asarray(full_loss(zs, jax.tree_util.tree_map(lambda a: a[sel], train)))
    scores = np.where(np.isfinite(scores), scores, np.inf)
    best = int(np.argmin(scores))
    return space.car(zs[best], base), float(scores[best])


def fit_residual(data: FitData, delay: int, cfg: FitConfig, car: CarParams,
                 progress: Callable[[str], None] | None = None) -> tuple[CarParams, Residual, float]:
    """The residual network on top of the fitted dynamic car, both refined together at the full horizon."""
    space = Space(FIT_FIELDS["dynamic"])
    train = _as_arrays(data.train)
    n = len(data.train)
    residual0 = init_residual(jax.random.PRNGKey(cfg.seed), cfg.residual_hidden)
    z0 = jnp.asarray(space.to_z(space.values(car)))
    params = {"z": z0, "net": residual0.params}
    opt = optax.multi_transform(
        {"z": optax.adam(cfg.learning_rate * 0.1),
         "net": optax.adamw(optax.cosine_decay_schedule(cfg.residual_learning_rate, cfg.residual_steps, 0.1),
                            weight_decay=1e-4)},
        {"z": "z", "net": jax.tree_util.tree_map(lambda _: "net", residual0.params)})

    def loss_fn(p, w):
        res = residual0.replace(params=p["net"])
        return _batch_loss("dynamic", delay, data.max_delay, cfg.substeps, space, car, p["z"], res, w, data.horizon)

    @jax.jit
    def update(p, st, idx):
        w = jax.tree_util.tree_map(lambda a: a[idx], train)
        loss, g = jax.value_and_grad(loss_fn)(p, w)
        g = jax.tree_util.tree_map(lambda a: jnp.where(jnp.isfinite(a), a, 0.0), g)
        upd, st = opt.update(g, st, p)
        return optax.apply_updates(p, upd), st, loss

    st = opt.init(params)
    rng = np.random.default_rng(cfg.seed + 2)
    t0 = time.monotonic()
    for i in range(cfg.residual_steps):
        params, st, loss = update(params, st, jnp.asarray(rng.integers(0, n, min(cfg.batch, n))))
        if progress is not None and (i % 50 == 0 or i == cfg.residual_steps - 1):
            progress(f"dynamic+residual: step {i + 1}/{cfg.residual_steps} loss {float(loss):.4f} "
                     f"({(i + 1) / (time.monotonic() - t0):.0f} steps/s)")
    sel = jnp.asarray(rng.choice(n, min(n, 1024), replace=False))
    final = float(jax.jit(loss_fn)(params, jax.tree_util.tree_map(lambda a: a[sel], train)))
    return space.car(params["z"], car), residual0.replace(params=params["net"]), final


# ----------------------------------------------------------------------------- evaluation


def evaluate(data: FitData, windows: Windows, model: str, delay: int, car: CarParams, residual: Residual | None,
             substeps: int = 4, chunk: int = 512) -> dict:
    """Open-loop errors on ``windows`` at 0.5, 1 and 2 s ahead (medians and 90th percentiles) and
    the normalised score the model is chosen by (median position plus speed error at 1 s, each over
    its goal of 0.5)."""
    run = jax.jit(jax.vmap(lambda i, c, d: rollout(model, delay, data.max_delay, substeps, car, residual, i, c, d)))
    preds = []
    for a in range(0, len(windows), chunk):
        w = windows.take(slice(a, a + chunk))
        preds.append(np.asarray(run(jnp.asarray(w.init), jnp.asarray(w.controls), jnp.asarray(w.dt))))
    pred = np.concatenate(preds)
    pos, yaw, spd, rate = (np.asarray(e) for e in errors(jnp.asarray(pred), jnp.asarray(windows.target)))
    out = {}
    for h in REPORT_HORIZONS_S:
        k = min(max(int(round(h / data.dt)), 1), data.horizon) - 1
        for name, e in (("pos", pos), ("speed", spd), ("yaw", yaw), ("yaw_rate", rate)):
            col = e[:, k]
            col = np.where(np.isfinite(col), col, np.inf)
            out[f"{name}_err_{h:g}s_median"] = float(np.median(col))
            out[f"{name}_err_{h:g}s_p90"] = float(np.percentile(col, 90))
    out["score"] = out["pos_err_1s_median"] / 0.5 + out["speed_err_1s_median"] / 0.5
    out["windows"] = int(len(windows))
    return out


def predict(data: FitData, windows: Windows, fit: ModelFit, substeps: int = 4) -> np.ndarray:
    """(w, horizon, 5) predictions of a fitted model on ``windows`` (for plots)."""
    run = jax.jit(jax.vmap(lambda i, c, d: rollout(fit.model, fit.delay, data.max_delay, substeps, fit.car,
                                                   fit.residual, i, c, d)))
    return np.asarray(run(jnp.asarray(windows.init), jnp.asarray(windows.controls), jnp.asarray(windows.dt)))


def uncertainty(data: FitData, fit: ModelFit, cfg: FitConfig, windows: int = 512) -> dict[str, float]:
    """Each fitted parameter's uncertainty as the half-width of a uniform spread, a fraction of its
    value: the Laplace approximation in the unconstrained space (the inverse curvature of the summed
    loss, scaled by the mean loss as the error variance), counting one independent observation per
    horizon of data since neighbouring windows overlap. Capped at 0.3."""
    space = Space(FIT_FIELDS[fit.model])
    z = jnp.asarray(space.to_z(space.values(fit.car)))
    n = len(data.train)
    sel = np.random.default_rng(cfg.seed + 3).choice(n, min(n, windows), replace=False)
    w = _as_arrays(data.train.take(sel))
    loss = lambda zz: _batch_loss(fit.model, fit.delay, data.max_delay, cfg.substeps, space, fit.car, zz,  # noqa: E731
                                  fit.residual, w, data.horizon)
    hess = np.asarray(jax.jit(jax.hessian(loss))(z), np.float64)
    mean = float(loss(z))
    n_eff = max(n / data.horizon, 1.0)
    hess = 0.5 * (hess + hess.T) + 1e-6 * np.eye(len(z))
    try:
        cov = np.linalg.inv(hess) * mean / n_eff
    except np.linalg.LinAlgError:
        return {}
    var = np.clip(np.diag(cov), 0.0, None)
    jac = np.asarray(jax.jacfwd(space.from_z)(z), np.float64).diagonal()
    values = space.values(fit.car)
    sd = np.abs(jac) * np.sqrt(var) / np.maximum(np.abs(values), 1e-9)
    return {f: float(min(math.sqrt(3.0) * s, 0.3)) for f, s in zip(space.fields, sd) if np.isfinite(s)}


# ----------------------------------------------------------------------------- all models


@dataclasses.dataclass
class FitResult:
    fits: dict[str, ModelFit]
    chosen: str
    delay_scores: dict[int, float]
    minutes: float

    @property
    def best(self) -> ModelFit:
        return self.fits[self.chosen]


def fit_all(data: FitData, cfg: FitConfig = FitConfig(), progress: Callable[[str], None] | None = None) -> FitResult:
    """Every model fitted and scored on the held-out episodes; the best by validation error at 1 s."""
    t_start = time.monotonic()
    base = initial_car(data)
    fits: dict[str, ModelFit] = {}

    def add(name, model, delay, car, residual, loss, t0):
        fits[name] = ModelFit(name, model, delay, car, residual, loss,
                              evaluate(data, data.val, model, delay, car, residual, cfg.substeps),
                              time.monotonic() - t0)

    # The input delay: the kinematic model fitted at each candidate, scored on validation.
    delay_scores, kin = {}, {}
    for d in range(min(cfg.max_delay, data.max_delay) + 1):
        t0 = time.monotonic()
        car, loss = fit_model(data, "kinematic", d, cfg, steps=cfg.delay_steps, base=base, progress=progress)
        kin[d] = (car, loss, t0)
        delay_scores[d] = evaluate(data, data.val, "kinematic", d, car, None, cfg.substeps)["score"]
    delay = min(delay_scores, key=lambda d: (delay_scores[d], d))
    t0 = time.monotonic()
    car, loss = fit_model(data, "kinematic", delay, cfg, steps=cfg.steps, base=kin[delay][0], progress=progress)
    add("kinematic", "kinematic", delay, car, None, loss, t0)
    t0 = time.monotonic()
    dyn_base = base.replace(**{f: getattr(car, f) for f in KINEMATIC_FIELDS})
    car_d, loss_d = fit_model(data, "dynamic", delay, cfg, steps=cfg.steps, base=dyn_base, progress=progress)
    add("dynamic", "dynamic", delay, car_d, None, loss_d, t0)
    if cfg.residual and cfg.residual_steps:
        t0 = time.monotonic()
        car_r, res, loss_r = fit_residual(data, delay, cfg, car_d, progress=progress)
        add("dynamic+residual", "dynamic", delay, car_r, res, loss_r, t0)
    if cfg.one_step:
        t0 = time.monotonic()
        car_1, loss_1 = fit_model(data, "dynamic", delay, cfg, steps=cfg.steps, base=dyn_base, one_step=True,
                                  progress=progress)
        add("dynamic (one-step)", "dynamic", delay, car_1, None, loss_1, t0)
    candidates = [n for n in fits if n != "dynamic (one-step)"]
    chosen = min(candidates, key=lambda n: fits[n].val["score"])
    fits[chosen].spread = uncertainty(data, fits[chosen], cfg)
    return FitResult(fits, chosen, delay_scores, (time.monotonic() - t_start) / 60.0)
