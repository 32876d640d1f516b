"""Env steps per second of the full surrogate step (dynamics, track projection, reward,
observation, auto-reset) at several batch sizes, beside a bare kinematic bicycle step measured in
the same run, so the ratio is comparable across machines.

    python benchmarks/env_throughput.py [--sizes 1,256,4096,16384] [--steps 200] [--model dynamic]

Last line: full_env_steps_per_s=<at N=4096> bare_bicycle_steps_per_s=<at N=4096> ratio=<full/bare>
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from surrogate.env import EnvConfig, RacingEnv, batch_reset, batch_step, make_params


def bare_bicycle(n: int, steps: int, dt: float):
    """The cheapest credible car: a kinematic bicycle, one Euler step, structure of arrays."""
    wheelbase = 2.6

    def step(c, a):
        x, y, yaw, v = c
        steer, acc = a
        x = x + v * jnp.cos(yaw) * dt
        y = y + v * jnp.sin(yaw) * dt
        yaw = yaw + v / wheelbase * jnp.tan(steer) * dt
        v = jnp.maximum(v + acc * dt, 0.0)
        return (x, y, yaw, v), None

    @jax.jit
    def run(key):
        z = jnp.zeros((n,))
        a = jax.random.uniform(key, (2, n), minval=-0.3, maxval=0.3)
        c, _ = jax.lax.scan(lambda c, _: step(c, (a[0], a[1])), (z, z, z, z + 10.0), None, length=steps)
        return c

    return run


def full_env(env: RacingEnv, params, n: int, steps: int):
    @jax.jit
    def run(key):
        k0, k1 = jax.random.split(key)
        obs, st = batch_reset(env, k0, params, n)

        def body(carry, k):
            st, obs = carry
            ka, ks = jax.random.split(k)
            u = jax.random.uniform(ka, (n, 3))
            # Mostly throttle, some steering: keeps cars driving, crashing and resetting.
            a = jnp.stack([0.6 * (2 * u[:, 0] - 1), 0.3 + 0.7 * u[:, 1], 0.2 * u[:, 2]], axis=1)
            obs, st, r, te, tr, info = batch_step(env, ks, st, a, params)
            return (st, obs), r.sum()

        (_, obs), r = jax.lax.scan(body, (st, obs), jax.random.split(k1, steps))
        return obs, r

    return run


def measure(fn, repeats: int = 3) -> float:
    jax.block_until_ready(fn(jax.random.PRNGKey(0)))  # compile
    best = float("inf")
    for i in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(jax.random.PRNGKey(i + 1)))
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1,256,4096,16384")
    p.add_argument("--steps", type=int, default=200, help="env steps per timed call")
    p.add_argument("--model", default="dynamic", choices=["dynamic", "kinematic"])
    p.add_argument("--track", default="flowing")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cfg = EnvConfig(model=args.model)
    env = RacingEnv(cfg)
    params, _ = make_params([args.track], config=cfg)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), model {args.model}, "
          f"dt {cfg.dt} s, {cfg.substeps} substeps, obs size {env.observation_size}")
    results = {}
    for n in sizes:
        steps = args.steps if n >= 256 else args.steps * 10
        full = n * steps / measure(full_env(env, params, n, steps))
        bare = n * steps / measure(bare_bicycle(n, steps, cfg.dt))
        results[n] = (full, bare)
        print(f"N={n:6d}  full env {full:14,.0f} steps/s   bare bicycle {bare:16,.0f} steps/s   ratio {full / bare:.3f}", flush=True)
    n_ref = 4096 if 4096 in results else sizes[-1]
    full, bare = results[n_ref]
    print(f"full_env_steps_per_s={full:.0f} bare_bicycle_steps_per_s={bare:.0f} ratio={full / bare:.3f}")


if __name__ == "__main__":
    main()
