"""The learned residual of a fitted surrogate: a small Flax network on top of the car model for
what its physics misses.

Inputs: the car's velocities, yaw rate and road-wheel angle after the physics step, and the game
controls it applied; outputs: accelerations (vx, vy in m/s^2, yaw rate in rad/s^2) added over the
control period. Trained by ``surrogate.fit`` through the same multi-step rollouts as the physical
parameters; stored in the surrogate file as plain arrays (``residual_to_dict``), never pickled.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from surrogate.car import CarState

FEATURES = ("vx", "vy", "yaw_rate", "steer", "throttle", "brake")
OUTPUTS = ("dvx", "dvy", "dyaw_rate")
# Feature scales that bring each input to order one (speeds in tens of m/s, angles in radians).
IN_SCALE = np.array([30.0, 3.0, 1.0, 0.5, 1.0, 1.0], np.float32)


@flax.struct.dataclass
class Residual:
    """The network's weights and scales (a pytree: it can be fitted and passed through jit)."""

    params: dict
    in_scale: jax.Array
    out_scale: jax.Array
    hidden: tuple[int, ...] = flax.struct.field(pytree_node=False, default=(32, 32))


class ResidualError(ValueError):
    """A residual network that cannot be used: names the field and what was expected."""


class ResidualNet(nn.Module):
    """tanh MLP from scaled features to scaled accelerations; the last layer starts at zero so an
    untrained residual changes nothing."""

    hidden: Sequence[int] = (32, 32)

    @nn.compact
    def __call__(self, x):
        for i, w in enumerate(self.hidden):
            x = jnp.tanh(nn.Dense(w, name=f"hidden_{i}")(x))
        return nn.Dense(len(OUTPUTS), kernel_init=nn.initializers.zeros, name="out")(x)


def init_residual(key: jax.Array, hidden: Sequence[int] = (32, 32), out_scale: Sequence[float] = (2.0, 2.0, 1.0)) -> Residual:
    """A fresh residual (zero output): ``out_scale`` the accelerations one unit of output means."""
    hidden = tuple(int(w) for w in hidden)
    params = ResidualNet(hidden).init(key, jnp.zeros((len(FEATURES),), jnp.float32))["params"]
    return Residual(params=params, in_scale=jnp.asarray(IN_SCALE), out_scale=jnp.asarray(out_scale, jnp.float32),
                    hidden=hidden)


def features(car: CarState, controls: jax.Array) -> jax.Array:
    return jnp.stack([car.vx, car.vy, car.yaw_rate, car.steer, controls[..., 1], controls[..., 2]], axis=-1)


def accelerations(residual: Residual, car: CarState, controls: jax.Array) -> jax.Array:
    """The residual's (dvx, dvy, dyaw_rate) accelerations for a car state and its applied controls."""
    x = features(car, controls) / residual.in_scale
    return ResidualNet(residual.hidden).apply({"params": residual.params}, x) * residual.out_scale


def apply_residual(residual: Residual | None, car: CarState, controls: jax.Array, dt) -> CarState:
    """The car after one control period with the residual's accelerations added (unchanged for None)."""
    if residual is None:
        return car
    a = accelerations(residual, car, controls)
    return car.replace(vx=car.vx + dt * a[..., 0], vy=car.vy + dt * a[..., 1], yaw_rate=car.yaw_rate + dt * a[..., 2],
                       ax=car.ax + a[..., 0], ay=car.ay + a[..., 1])


def residual_to_dict(residual: Residual) -> dict:
    """Plain JSON: hidden widths, layers as [kernel, bias] lists, the scales."""
    names = [f"hidden_{i}" for i in range(len(residual.hidden))] + ["out"]
    return {"hidden": list(residual.hidden),
            "layers": [[np.asarray(residual.params[n]["kernel"], np.float64).tolist(),
                        np.asarray(residual.params[n]["bias"], np.float64).tolist()] for n in names],
            "in_scale": np.asarray(residual.in_scale, np.float64).tolist(),
            "out_scale": np.asarray(residual.out_scale, np.float64).tolist()}


def _finite_array(value: Any, shape: tuple[int, ...], field: str) -> np.ndarray:
    try:
        a = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise ResidualError(f"{field} must be numbers of shape {shape}") from None
    if a.shape != shape:
        raise ResidualError(f"{field} has shape {a.shape}; expected {shape}")
    if not np.all(np.isfinite(a)):
        raise ResidualError(f"{field} holds a value that is not finite")
    return a


def residual_from_dict(d: Any) -> Residual:
    """The pytree from ``residual_to_dict``'s JSON, every shape and number checked."""
    if not isinstance(d, dict) or set(d) != {"hidden", "layers", "in_scale", "out_scale"}:
        raise ResidualError("expected an object with hidden, layers, in_scale and out_scale")
    hidden = d["hidden"]
    if not isinstance(hidden, list) or not all(isinstance(w, int) and not isinstance(w, bool) and 0 < w <= 1024
                                               for w in hidden):
        raise ResidualError(f"hidden is {hidden!r}; expected a list of layer widths in [1, 1024]")
    widths = [len(FEATURES), *hidden, len(OUTPUTS)]
    layers = d["layers"]
    if not isinstance(layers, list) or len(layers) != len(widths) - 1:
        raise ResidualError(f"layers must be a list of {len(widths) - 1} [kernel, bias] pairs for hidden {hidden}")
    names = [f"hidden_{i}" for i in range(len(hidden))] + ["out"]
    params = {}
    for i, (name, layer) in enumerate(zip(names, layers)):
        if not isinstance(layer, list) or len(layer) != 2:
            raise ResidualError(f"layers[{i}] must be a [kernel, bias] pair")
        params[name] = {"kernel": jnp.asarray(_finite_array(layer[0], (widths[i], widths[i + 1]), f"layers[{i}] kernel"), jnp.float32),
                        "bias": jnp.asarray(_finite_array(layer[1], (widths[i + 1],), f"layers[{i}] bias"), jnp.float32)}
    in_scale = _finite_array(d["in_scale"], (len(FEATURES),), "in_scale")
    out_scale = _finite_array(d["out_scale"], (len(OUTPUTS),), "out_scale")
    if np.any(in_scale <= 0):
        raise ResidualError("in_scale must be positive")
    return Residual(params=params, in_scale=jnp.asarray(in_scale, jnp.float32),
                    out_scale=jnp.asarray(out_scale, jnp.float32), hidden=tuple(hidden))


def parameter_count(residual: Residual) -> int:
    return int(sum(math.prod(np.shape(a)) for a in jax.tree_util.tree_leaves(residual.params)))
