import dataclasses
import json

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from racerl_jax import crossq, train_loop
from racerl_jax.crossq import CrossQConfig
from racerl_jax.envs import Pendulum, PendulumState

TINY = CrossQConfig.cpu(
    critic_hidden=(16, 16), actor_hidden=(16, 16), batch_size=8, learning_starts=50, buffer_size=20_000
)


def _successor_obs(obs: np.ndarray, env_action: np.ndarray) -> np.ndarray:
    """Pendulum's next observation from an observation and a torque (the state is recoverable)."""
    env = Pendulum()
    state = PendulumState(
        theta=jnp.arctan2(obs[:, 1], obs[:, 0]), theta_dot=jnp.asarray(obs[:, 2]), time=jnp.zeros(len(obs), jnp.int32)
    )
    nxt, _ = jax.vmap(env.dynamics, in_axes=(0, 0, None))(state, jnp.asarray(env_action), env.default_params())
    return np.asarray(jax.vmap(Pendulum.observe)(nxt))


def _assert_transitions_follow_dynamics(buffer, low=-2.0, high=2.0):
    n = int(buffer.size)
    data = jax.tree.map(lambda x: np.asarray(x[:n]), buffer.data)
    torque = low + (data.action + 1.0) * 0.5 * (high - low)
    np.testing.assert_allclose(data.next_obs, _successor_obs(data.obs, torque), atol=2e-4)
    assert not data.terminated.any()  # the pendulum only truncates


# ----------------------------------------------------------------------------- JAX Pendulum


def test_jax_pendulum_matches_gymnasium_pendulum_v1_trajectories():
    env = Pendulum()
    params = env.default_params()
    step = jax.jit(env.step)
    rng = np.random.default_rng(0)
    for episode in range(2):
        gym_env = gym.make("Pendulum-v1")
        gym_obs, _ = gym_env.reset(seed=episode)
        theta, theta_dot = gym_env.unwrapped.state
        state = PendulumState(
            theta=jnp.float32(theta), theta_dot=jnp.float32(theta_dot), time=jnp.zeros((), jnp.int32)
        )
        obs = env.observe(state)
        np.testing.assert_allclose(obs, gym_obs, atol=1e-6)
        for t in range(200):
            u = rng.uniform(-2.5, 2.5, size=(1,)).astype(np.float32)  # beyond the limits: both clip
            gym_obs, gym_r, gym_term, gym_trunc, _ = gym_env.step(u)
            obs, state, r, term, trunc, info = step(jax.random.PRNGKey(t), state, jnp.asarray(u), params)
            np.testing.assert_allclose(info["final_obs"], gym_obs, atol=2e-4, err_msg=f"step {t}")
            np.testing.assert_allclose(r, gym_r, rtol=1e-4, atol=1e-4)
            assert bool(term) == gym_term and bool(trunc) == gym_trunc, t
            if not (gym_term or gym_trunc):
                np.testing.assert_array_equal(obs, info["final_obs"])
        assert gym_trunc  # Pendulum-v1's TimeLimit ends the episode at step 200, as ours does
        assert int(state.time) == 0 and not np.allclose(obs, info["final_obs"])  # auto-reset
        assert abs(float(state.theta)) <= np.pi and abs(float(state.theta_dot)) <= 1.0


def test_jax_pendulum_reset_draws_gymnasium_initial_distribution():
    env = Pendulum()
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(0), 2000), env.default_params())
    th, thd = np.asarray(state.theta), np.asarray(state.theta_dot)
    assert th.min() < -3.0 and th.max() > 3.0 and np.abs(th).max() <= np.pi
    assert thd.min() < -0.95 and thd.max() > 0.95 and np.abs(thd).max() <= 1.0
    np.testing.assert_allclose(obs[:, 0] ** 2 + obs[:, 1] ** 2, 1.0, rtol=1e-5)


# ----------------------------------------------------------------------------- jitted loop


@pytest.mark.parametrize("num_envs", [1, 64])
def test_jitted_loop_collects_updates_and_counts_episodes(num_envs):
    env = Pendulum()
    params = env.default_params()
    run = train_loop.make_train_iteration(env, params, TINY, num_envs, updates_per_iter=1)
    carry = train_loop.init_train_carry(env, params, TINY, num_envs, jax.random.PRNGKey(0))
    iterations = 210
    carry, stats = run(carry, iterations)
    assert int(carry.agent.env_steps) == iterations * num_envs
    assert int(carry.buffer.size) == iterations * num_envs
    first_update_iter = -(-TINY.learning_starts // num_envs)  # updates start once 50 steps are in
    assert int(carry.agent.updates) == iterations - first_update_iter + 1
    # Every env finished exactly one 200-step episode; returns are Pendulum-like.
    assert float(stats["episodes"]) == num_envs
    assert float(stats["episode_length"]) == 200.0
    assert -2000 < float(stats["episode_return"]) < 0
    assert np.all(np.isfinite(np.asarray(carry.episodes.last_return)))
    assert np.all(np.asarray(carry.episodes.running_length) == 10)
    assert np.isfinite(float(stats["critic_loss"])) and np.isfinite(float(stats["actor_loss"]))
    # Stored next_obs is the true successor, also across the time-limit reset (final_obs).
    _assert_transitions_follow_dynamics(carry.buffer)


def test_lr_schedule_gets_the_spent_share_of_the_budget_and_is_logged():
    env = Pendulum()
    spent = []
    result = train_loop.train(env, env.default_params(), TINY, total_env_steps=400, num_envs=4, chunk_iterations=25,
                              progress=False, lr_schedule=lambda f: spent.append(f) or 1.0 - f)
    assert spent == [0.0, 0.25, 0.5, 0.75]  # env steps before each chunk over the total
    assert [h["lr_scale"] for h in result.history] == [1.0, 0.75, 0.5, 0.25]
    # A wall-clock budget counts when it is the larger share (here spent before the first chunk).
    spent.clear()
    train_loop.train(env, env.default_params(), TINY, total_env_steps=10**6, num_envs=4, chunk_iterations=25,
                     progress=False, max_wall_seconds=1e-9, lr_schedule=lambda f: spent.append(f) or 1.0)
    assert spent == [1.0]


def test_entropy_schedule_shifts_the_agents_entropy_goal_and_is_logged():
    env = Pendulum()
    config = dataclasses.replace(TINY, learning_starts=0)
    runs = {}
    for name, schedule in (("none", None), ("lower", lambda f: -20.0), ("higher", lambda f: 20.0)):
        runs[name] = train_loop.train(env, env.default_params(), config, total_env_steps=200, num_envs=4,
                                      chunk_iterations=25, progress=False, entropy_schedule=schedule)
    assert "entropy_shift" not in runs["none"].history[0]
    assert [h["entropy_shift"] for h in runs["lower"].history] == [-20.0, -20.0]
    # The temperature falls when the goal is far below the policy's entropy and rises when far above.
    alpha = {k: float(jnp.exp(r.carry.agent.log_alpha)) for k, r in runs.items()}
    assert alpha["lower"] < alpha["none"] < alpha["higher"]


def test_jitted_loop_rejects_a_buffer_smaller_than_one_env_step():
    env = Pendulum()
    small = CrossQConfig.cpu(buffer_size=10)
    with pytest.raises(ValueError, match="buffer_size=10 is smaller than num_envs=64"):
        train_loop.init_train_carry(env, env.default_params(), small, 64, jax.random.PRNGKey(0))


def test_scale_action_maps_unit_box_onto_env_bounds():
    low, high = np.array([-2.0, 0.0]), np.array([2.0, 1.0])
    out = train_loop.scale_action(jnp.array([[-1.0, -1.0], [0.0, 0.0], [1.0, 1.0]]), low, high)
    np.testing.assert_allclose(out, [[-2.0, 0.0], [0.0, 0.5], [2.0, 1.0]])


def test_action_overshoot_reaches_the_env_bounds_before_the_unit_box_edge_and_clips():
    low, high = np.array([-2.0, 0.0]), np.array([2.0, 1.0])
    a = np.array([[-1.0, -1.0], [0.0, 0.0], [0.8, 0.8], [1.0, 1.0]], np.float32)
    for xp in (jnp, np):
        out = np.asarray(train_loop.scale_action(a, low, high, 0.125, xp=xp))
        # widened to [-2.5, 2.5] x [-0.125, 1.125]: 0.8 maps to 2.0 / 1.0 exactly, 1.0 clips there
        np.testing.assert_allclose(out, [[-2.0, 0.0], [0.0, 0.5], [2.0, 1.0], [2.0, 1.0]], atol=1e-6)
    with pytest.raises(ValueError, match="action_overshoot"):
        CrossQConfig.cpu(action_overshoot=1.5)


# ----------------------------------------------------------------------------- host loop


def test_host_loop_trains_on_gymnasium_pendulum_v1():
    env = gym.make("Pendulum-v1")
    loop = train_loop.HostLoop(env, TINY, seed=0)
    agent = crossq.init_agent(jax.random.PRNGKey(0), loop.obs_size, loop.action_size, TINY)
    buffer = loop.init_buffer()
    agent, buffer, key, stats = loop.run(agent, buffer, jax.random.PRNGKey(1), 150)
    agent, buffer, key, stats = loop.run(agent, buffer, key, 100)
    assert int(agent.env_steps) == 250 and int(buffer.size) == 250
    assert int(agent.updates) == 250 - TINY.learning_starts + 1
    assert len(loop.episode_returns) == 1 and -2000 < loop.episode_returns[0] < 0
    assert np.isfinite(stats["critic_loss"])
    _assert_transitions_follow_dynamics(buffer)


def test_host_loop_on_next_step_vector_env_skips_the_reset_steps():
    env = gym.make_vec("Pendulum-v1", num_envs=2, vectorization_mode="sync")
    loop = train_loop.HostLoop(env, TINY, seed=0, updates_per_step=1)
    agent = crossq.init_agent(jax.random.PRNGKey(0), loop.obs_size, loop.action_size, TINY)
    agent, buffer, _, _ = loop.run(agent, loop.init_buffer(), jax.random.PRNGKey(1), 420)
    assert int(buffer.size) == int(agent.env_steps) >= 420
    assert len(loop.episode_returns) == 2
    _assert_transitions_follow_dynamics(buffer)  # no (final obs -> reset obs) junk transitions


def test_train_host_checkpoints_agent_and_buffer_and_resume_continues_the_counters(tmp_path):
    def host_run(total):
        loop = train_loop.HostLoop(gym.make("Pendulum-v1"), TINY, seed=0)
        evals = []
        result = train_loop.train_host(
            loop, total_env_steps=total, seed=0, chunk_env_steps=100, run_dir=tmp_path,
            eval_fn=lambda agent: evals.append(int(agent.env_steps)) or {"steps_seen": float(agent.env_steps)},
            eval_every_env_steps=200, checkpoint_every_env_steps=100, progress=False,
        )
        return result, evals

    first, evals = host_run(300)
    assert int(first.carry.agent.env_steps) == 300 and int(first.carry.buffer.size) == 300
    assert int(first.carry.agent.updates) == 300 - TINY.learning_starts + 1
    assert evals == [200] and first.history[1]["eval_steps_seen"] == 200.0
    assert [h["episodes"] for h in first.history] == [0.0, 1.0, 0.0]  # Pendulum's episodes are 200 steps
    assert first.history[1]["episode_return"] < 0
    assert json.loads((tmp_path / "config.json").read_text())["host_loop"] is True

    second, _ = host_run(500)  # same run dir: resumes from the 300-step checkpoint with its buffer
    assert second.history[0]["env_steps"] == 400
    assert int(second.carry.agent.env_steps) == 500 and int(second.carry.buffer.size) == 500
    assert int(second.carry.agent.updates) == 500 - TINY.learning_starts + 1


def test_the_jitted_loop_draws_the_demo_share_of_every_batch_from_the_demonstrations():
    from racerl_jax import replay

    env = Pendulum()
    params = env.default_params()
    carry = train_loop.init_train_carry(env, params, TINY, 4, jax.random.PRNGKey(0))
    # Demonstrations whose rewards are NaN: the critics' loss is NaN exactly when a batch holds one.
    bad = replay.add_batch(replay.init(16, 3, 1), replay.Transition(
        obs=jnp.zeros((16, 3)), action=jnp.zeros((16, 1)), reward=jnp.full((16,), jnp.nan),
        next_obs=jnp.zeros((16, 3)), terminated=jnp.zeros((16,))))
    _, plain = train_loop.make_train_iteration(env, params, TINY, 4, 1)(carry, 20)
    carry = train_loop.init_train_carry(env, params, TINY, 4, jax.random.PRNGKey(0))
    _, mixed = train_loop.make_train_iteration(env, params, TINY, 4, 1, demos=bad, demo_share=0.5)(carry, 20)
    assert np.isfinite(float(plain["critic_loss"])) and np.isnan(float(mixed["critic_loss"]))
    with pytest.raises(ValueError, match="leaves both"):
        train_loop.make_train_iteration(env, params, TINY, 4, 1, demos=bad, demo_share=0.99)
