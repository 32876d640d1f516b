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

``--breakdown`` instead splits one env step of each into parts, in one process: sbx's whole
``learn`` step, its ``train()`` call, and its jitted update function alone on a fixed batch; ours'
whole loop and its update alone on a fixed batch. What the loop in jit can save is the gap between
a whole step and the update alone. Last line:
``sbx_learn_ms=<f> sbx_train_ms=<f> sbx_update_ms=<f> ours_step_ms=<f> ours_update_ms=<f>``.
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

from racerl_jax import crossq, replay, train_loop  # noqa: E402
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
    model = _make_sbx(config, seed)

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


def _make_sbx(config: CrossQConfig, seed: int):
    from sbx import CrossQ

    return CrossQ(
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


def _ms_per(fn, n: int) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return (time.perf_counter() - t0) / n * 1e3


def breakdown(config: CrossQConfig, steps: int) -> dict[str, float]:
    """Milliseconds per env step (one update each) of the parts of both implementations."""
    from sbx.common.type_aliases import ReplayBufferSamplesNp

    if config.utd_ratio != 1:
        raise ValueError("--breakdown times one update per env step; use a preset with utd_ratio 1")
    warm = config.learning_starts + 1000
    model = _make_sbx(config, 0)
    model.learn(warm)
    out = {"sbx_learn_ms": _ms_per(lambda: model.learn(steps, reset_num_timesteps=False), steps)}

    def sbx_train():
        for _ in range(steps):
            model.train(1, config.batch_size)
        return model.policy.qf_state.params

    out["sbx_train_ms"] = _ms_per(sbx_train, steps)
    # sbx's jitted update (critic steps, every policy_delay-th with an actor step) on one fixed
    # batch of policy_delay minibatches, as its train() passes it.
    d = model.replay_buffer.sample(config.policy_delay * config.batch_size)
    data = ReplayBufferSamplesNp(
        d.observations.numpy(), d.actions.numpy(), d.next_observations.numpy(), d.dones.numpy().flatten(),
        d.rewards.numpy().flatten(), np.full((config.policy_delay * config.batch_size,), config.gamma, np.float32),
    )
    data = jax.tree_util.tree_map(jnp.asarray, data)
    delay = config.policy_delay

    def sbx_update():
        res = None
        for _ in range(steps // delay):
            res = model._train(model.target_entropy, delay, data, delay, 0, model.policy.qf_state,
                               model.policy.actor_state, model.ent_coef_state, model.key)
        return res

    sbx_update()  # compiled outside the timing
    out["sbx_update_ms"] = _ms_per(sbx_update, steps // delay * delay)

    env = Pendulum()
    params = env.default_params()
    run = train_loop.make_train_iteration(env, params, config, num_envs=1, updates_per_iter=1)
    carry = train_loop.init_train_carry(env, params, config, 1, jax.random.PRNGKey(0))
    for _ in range(warm // CHUNK + 1):
        carry, _ = run(carry, CHUNK)
    jax.block_until_ready(carry)

    def ours_loop():
        nonlocal carry
        for _ in range(steps // CHUNK):
            carry, _ = run(carry, CHUNK)
        return carry

    out["ours_step_ms"] = _ms_per(ours_loop, steps // CHUNK * CHUNK)
    batch = replay.sample(carry.buffer, jax.random.PRNGKey(1), config.batch_size)

    @jax.jit
    def ours_updates(agent):
        return jax.lax.scan(lambda a, _: (crossq.update(a, batch, config)[0], None), agent, None, length=CHUNK)[0]

    agent = ours_updates(carry.agent)
    jax.block_until_ready(agent)

    def ours_update():
        nonlocal agent
        for _ in range(steps // CHUNK):
            agent = ours_updates(agent)
        return agent

    out["ours_update_ms"] = _ms_per(ours_update, steps // CHUNK * CHUNK)
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
    parser.add_argument("--breakdown", action="store_true",
                        help="time the parts of one env step of each instead (see the module docstring)")
    parser.add_argument("--breakdown-steps", type=int, default=3000, help="env steps timed per part")
    args = parser.parse_args()
    points = sorted(args.steps)
    config = getattr(CrossQConfig, args.preset)()
    if args.hidden is not None:
        config = dataclasses.replace(config, critic_hidden=(args.hidden,) * 2, actor_hidden=(args.hidden,) * 2)
    print(f"config: {config.to_dict()}")
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs visible; seeds {args.seeds}")
    if args.breakdown:
        parts = breakdown(config, args.breakdown_steps)
        print(f"sbx: update alone {parts['sbx_update_ms'] / parts['sbx_learn_ms']:.0%} of its step; "
              f"ours: update alone {parts['ours_update_ms'] / parts['ours_step_ms']:.0%} of its step; "
              f"our update alone is {parts['sbx_update_ms'] / parts['ours_update_ms']:.2f}x faster than sbx's")
        print(" ".join(f"{k}={v:.3f}" for k, v in parts.items()))
        return

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
