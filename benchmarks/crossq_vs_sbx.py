"""Benchmark: this CrossQ against sbx's CrossQ (the reference JAX implementation) on Pendulum-v1.

Same hyperparameters (a ``CrossQConfig`` preset mapped onto sbx's arguments), same env steps,
same seeds, one env. Ours runs the pure-JAX Pendulum (identical dynamics to Gymnasium's
Pendulum-v1) inside the jit-compiled loop; sbx runs Gymnasium's Pendulum-v1. Both policies are
evaluated deterministically on Gymnasium's Pendulum-v1 with the same episode seeds. Update
throughput is measured between the first and the last evaluation point (steady state: compilation
excluded for both, every env step is followed by one update).

Needs the bench extra: ``pip install torch==2.13.0`` (CPU build) then ``pip install -e '.[bench]'``.
Usage: ``python benchmarks/crossq_vs_sbx.py [--seeds 3] [--steps 5000 10000] [--preset cpu]``.
The last line reads
``ours_return_10k=<f> sbx_return_10k=<f> ours_updates_per_s=<f> sbx_updates_per_s=<f>``.
Timings depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gymnasium as gym  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from racerl_jax import crossq, train_loop  # noqa: E402
from racerl_jax.crossq import CrossQConfig  # noqa: E402
from racerl_jax.envs import Pendulum  # noqa: E402


CHUNK = 500


def evaluate_on_gym(policy, seed: int, episodes: int) -> float:
    """Mean return of ``policy(obs) -> action in env units`` over Pendulum-v1 episodes."""
    env = gym.make("Pendulum-v1")
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=10_000 + 100 * seed + ep)
        total, done = 0.0, False
        while not done:
            obs, reward, term, trunc, _ = env.step(policy(obs))
            total += float(reward)
            done = term or trunc
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def run_ours(config: CrossQConfig, seed: int, points: list[int], episodes: int) -> dict:
    env = Pendulum()
    params = env.default_params()
    run = train_loop.make_train_iteration(env, params, config, num_envs=1, updates_per_iter=config.utd_ratio)
    carry = train_loop.init_train_carry(env, params, config, 1, jax.random.PRNGKey(seed))
    low, high = env.action_low, env.action_high

    def policy(obs: np.ndarray) -> np.ndarray:
        a = crossq.act(carry.agent, jnp.asarray(obs, jnp.float32)[None], jax.random.PRNGKey(0), deterministic=True)
        return np.asarray(train_loop.scale_action(a, low, high))[0]

    out, done, timing = {"returns": {}}, 0, {}
    for point in points:
        t0 = time.perf_counter()
        # Fixed-size chunks: a new chunk length would compile the loop again inside the timing.
        for _ in range((point - done) // CHUNK):
            carry, _ = run(carry, CHUNK)
        if (point - done) % CHUNK:
            carry, _ = run(carry, (point - done) % CHUNK)
        jax.block_until_ready(carry)
        timing[point] = (time.perf_counter() - t0, int(carry.agent.updates))
        done = point
        out["returns"][point] = evaluate_on_gym(policy, seed, episodes)
    out["updates_per_s"] = _steady_updates_per_s(points, timing)
    return out


def run_sbx(config: CrossQConfig, seed: int, points: list[int], episodes: int) -> dict:
    from sbx import CrossQ

    model = CrossQ(
        "MlpPolicy",
        "Pendulum-v1",
        learning_rate=config.learning_rate,
        buffer_size=config.buffer_size,
        learning_starts=config.learning_starts,
        batch_size=config.batch_size,
        gamma=config.gamma,
        train_freq=1,
        gradient_steps=config.utd_ratio,
        policy_delay=config.policy_delay,
        ent_coef=f"auto_{config.init_entropy_coef}",
        policy_kwargs=dict(
            net_arch={"pi": list(config.actor_hidden), "qf": list(config.critic_hidden)},
            n_critics=config.n_critics,
            batch_norm_momentum=config.bn_momentum,
            renorm_warmup_steps=config.renorm_warmup_steps,
            optimizer_kwargs={"b1": config.adam_b1},
        ),
        seed=seed,
        verbose=0,
    )

    def policy(obs: np.ndarray) -> np.ndarray:
        return model.predict(obs, deterministic=True)[0]

    out, done, timing = {"returns": {}}, 0, {}
    for point in points:
        t0 = time.perf_counter()
        model.learn(point - done, reset_num_timesteps=done == 0)
        timing[point] = (time.perf_counter() - t0, int(model._n_updates))
        done = point
        out["returns"][point] = evaluate_on_gym(policy, seed, episodes)
    out["updates_per_s"] = _steady_updates_per_s(points, timing)
    return out


def _steady_updates_per_s(points: list[int], timing: dict) -> float:
    if len(points) < 2:
        seconds, updates = timing[points[0]]
        return updates / seconds
    seconds = sum(timing[p][0] for p in points[1:])
    updates = timing[points[-1]][1] - timing[points[0]][1]
    return updates / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, nargs="+", default=[5_000, 10_000], help="evaluation points (env steps)")
    parser.add_argument("--preset", choices=["cpu", "paper"], default="cpu")
    parser.add_argument("--hidden", type=int, default=None, help="override actor and critic widths (2 layers)")
    parser.add_argument("--eval-episodes", type=int, default=10)
    args = parser.parse_args()
    points = sorted(args.steps)
    config = getattr(CrossQConfig, args.preset)()
    if args.hidden is not None:
        config = dataclasses.replace(config, critic_hidden=(args.hidden,) * 2, actor_hidden=(args.hidden,) * 2)
    print(f"config: {config.to_dict()}")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs visible; seeds {args.seeds}")

    results = {"ours": [], "sbx": []}
    for seed in range(args.seeds):
        # Interleaved so both see the same background load on a shared machine.
        for name, fn in (("ours", run_ours), ("sbx", run_sbx)):
            t0 = time.perf_counter()
            r = fn(config, seed, points, args.eval_episodes)
            results[name].append(r)
            rets = " ".join(f"return@{p}={r['returns'][p]:.1f}" for p in points)
            print(f"{name:4s} seed {seed}: {rets} updates/s={r['updates_per_s']:.1f} ({time.perf_counter() - t0:.0f} s)", flush=True)

    summary = {}
    for name, rs in results.items():
        for p in points:
            vals = np.array([r["returns"][p] for r in rs])
            summary[(name, p)] = vals.mean()
            print(f"{name:4s} return@{p}: mean {vals.mean():.1f} std {vals.std():.1f} over {len(vals)} seeds")
        ups = np.array([r["updates_per_s"] for r in rs])
        summary[(name, "ups")] = ups.mean()
        print(f"{name:4s} updates/s: mean {ups.mean():.1f} std {ups.std():.1f}")
    last = points[-1]
    print(f"speed-up: {summary[('ours', 'ups')] / summary[('sbx', 'ups')]:.2f}x")
    print(
        f"ours_return_10k={summary[('ours', last)]:.2f} sbx_return_10k={summary[('sbx', last)]:.2f} "
        f"ours_updates_per_s={summary[('ours', 'ups')]:.2f} sbx_updates_per_s={summary[('sbx', 'ups')]:.2f}"
    )


if __name__ == "__main__":
    main()
