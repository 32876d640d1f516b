"""Env steps per second of the full surrogate step (dynamics, track projection, reward,
observation, auto-reset) at several batch sizes, beside a bare kinematic bicycle step measured in
the same run, so the ratio is comparable across machines.

    python benchmarks/env_throughput.py [--sizes 1,256,4096,16384] [--steps 200] [--model dynamic]
    python benchmarks/env_throughput.py --profile [--profile-n 4096]   # per-component times


Last line: full_env_steps_per_s=<at N=4096> bare_bicycle_steps_per_s=<at N=4096> ratio=<full/bare>
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from surrogate.env import EnvConfig, RacingEnv, batch_reset
from surrogate.env_params import make_params
from surrogate.rollout import batch_rollout
from surrogate.track import project_tables


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
    # One action per car, drawn once, as for the bare bicycle: timing the policy's random numbers
    # (a threefry draw of N x 3 every step costs as much as the env step itself) is not the env's.
    # Mostly throttle, some steering: cars drive, leave the track and reset.
    u = jax.random.uniform(jax.random.PRNGKey(1), (n, 3))
    fixed = jnp.stack([0.6 * (2 * u[:, 0] - 1), 0.3 + 0.7 * u[:, 1], 0.2 * u[:, 2]], axis=1)
    return batch_rollout(env, params, lambda obs, st, k: fixed, n, steps, record=lambda obs, st, r, *_: r.sum())


def _driving_states(env: RacingEnv, params, n: int):
    """A batch of mid-episode states (cars moving, spread over the track) to time components on."""
    obs, st = jax.jit(lambda k: batch_reset(env, k, params, n))(jax.random.PRNGKey(7))
    step = jax.jit(lambda k, s: env.batch_step(k, s, jnp.tile(jnp.array([[0.05, 0.6, 0.0]]), (n, 1)), params))
    for i in range(20):
        obs, st, *_ = step(jax.random.PRNGKey(100 + i), st)
    return st


def profile_components(env: RacingEnv, params, n: int, steps: int) -> dict[str, float]:
    """Seconds per batched call of each part of the step, each timed alone in a scan of ``steps``
    iterations whose carry depends on the result (so XLA cannot hoist or drop the work)."""
    cfg = env.config
    st = _driving_states(env, params, n)
    action = jnp.tile(jnp.array([[0.05, 0.6, 0.0]]), (n, 1))
    car_step = jax.vmap(lambda p, c, a: env._car_step(p, c, a, cfg.dt, cfg.substeps))

    def car_only(key):
        def body(c, _):
            return car_step(st.car_params, c, action), None
        c, _ = jax.lax.scan(body, st.car, None, length=steps)
        return c.x

    def proj_only(key):
        tables = env.tables(params)

        def body(pos, i):
            # Jitter the pose a little each iteration so every projection is real work.
            f = lambda tid, x, y, yaw, hint: project_tables(tables, tid, x + 1e-3 * i, y, yaw, hint, cfg.projection_window)[0]  # noqa: E731
            return jax.vmap(f)(st.track_id, st.car.x, st.car.y, st.car.yaw, pos.idx), None
        pos, _ = jax.lax.scan(body, st.pos, jnp.arange(steps, dtype=jnp.float32))
        return pos.s

    def obs_only(key):
        def body(acc, i):
            # Move the car and its track position: with a fixed position XLA hoists the lookups
            # (most of the work) out of the loop.
            jitter = 1e-6 * acc[:, 0]
            moved = st.replace(car=st.car.replace(x=st.car.x + jitter),
                               episode=st.episode.replace(pos=st.pos.replace(s=st.pos.s + jitter)))
            return jax.vmap(env.observe, in_axes=(None, 0))(params, moved), None
        acc, _ = jax.lax.scan(body, jnp.zeros((n, env.observation_size)), jnp.arange(steps))
        return acc

    def reset_only(key):
        def body(acc, k):
            obs, s = batch_reset(env, k, params, n)
            return acc + obs, None
        acc, _ = jax.lax.scan(body, jnp.zeros((n, env.observation_size)), jax.random.split(key, steps))
        return acc

    def step_only(key):
        # The observation stays in the carry: returned only from the step, XLA would drop it.
        def body(carry, k):
            s, acc = carry
            obs, s, *_ = env.batch_step(k, s, action, params)
            return (s, acc + obs), None
        (s, acc), _ = jax.lax.scan(body, (st, jnp.zeros((n, env.observation_size))), jax.random.split(key, steps))
        return acc

    parts = {"car_step": car_only, "projection": proj_only, "observation": obs_only, "reset": reset_only,
             "full_step": step_only}
    return {name: measure(jax.jit(fn)) / steps for name, fn in parts.items()}


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
    p.add_argument("--profile", action="store_true", help="time the parts of the step alone instead")
    p.add_argument("--profile-n", type=int, default=4096, help="batch size for --profile")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cfg = EnvConfig(model=args.model)
    env = RacingEnv(cfg)
    params, _ = make_params([args.track], config=cfg)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), model {args.model}, "
          f"dt {cfg.dt} s, {cfg.substeps} substeps, obs size {env.observation_size}")
    if args.profile:
        n = args.profile_n
        times = profile_components(env, params, n, args.steps)
        for name, t in times.items():
            print(f"N={n}  {name:12s} {t * 1e3:9.3f} ms/call  {n / t:14,.0f} car-steps/s", flush=True)
        return
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
