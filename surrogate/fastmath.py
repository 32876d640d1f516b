"""Float32 trigonometry for the hot loops of the surrogate (car model, track lookups).

XLA:CPU lowers sin, cos, tan and atan to scalar libm calls (3-13 ns per element), which made
them most of the env step's time. These are Cephes' sinf/cosf/atanf: range reduction and a
short polynomial, plain multiply-adds and selects that vectorise (about 1 ns per element),
within 2 ulp of the correctly rounded value over the arguments a car sees. Differentiable.
"""
import jax
import jax.numpy as jnp
import numpy as np

_PIO4_HI, _PIO4_MID, _PIO4_LO = 0.78515625, 2.4187564849853515625e-4, 3.77489497744594108e-8  # pi/4 in 3 parts
_FOUR_OVER_PI = 1.2732395447351628


def fast_sincos(x) -> tuple[jax.Array, jax.Array]:
    """(sin x, cos x) in float32, accurate for |x| < 8192."""
    x = jnp.asarray(x, jnp.float32)
    ax = jnp.abs(x)
    # Octant j (even) and the remainder y in [-pi/4, pi/4], pi/4 split so j * pi/4 is exact.
    j = (ax * _FOUR_OVER_PI).astype(jnp.int32)
    j = (j + 1) & ~1
    jf = j.astype(jnp.float32)
    y = ax - jf * _PIO4_HI - jf * _PIO4_MID - jf * _PIO4_LO
    z = y * y
    ps = ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * y + y
    pc = ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z - 0.5 * z + 1.0
    swap = (j & 2) != 0
    s = jnp.where(swap, pc, ps)
    c = jnp.where(swap, ps, pc)
    s = jnp.where(((j & 4) != 0) != (x < 0.0), -s, s)
    c = jnp.where(((j + 2) & 4) != 0, -c, c)
    return s, c


def fast_atan(x) -> jax.Array:
    """arctan x in float32, any finite x."""
    x = jnp.asarray(x, jnp.float32)
    ax = jnp.abs(x)
    big = ax > 2.414213562373095  # tan(3 pi / 8)
    mid = ax > 0.41421356237309503  # tan(pi / 8)
    base = jnp.where(big, 0.5 * np.pi, jnp.where(mid, 0.25 * np.pi, 0.0))
    r = jnp.where(big, -1.0 / jnp.where(big, ax, 1.0), jnp.where(mid, (ax - 1.0) / (ax + 1.0), ax))
    z = r * r
    p = (((8.05374449538e-2 * z - 1.38776856032e-1) * z + 1.99777106478e-1) * z - 3.33329491539e-1) * z * r + r
    a = base + p
    return jnp.where(x < 0.0, -a, a)
