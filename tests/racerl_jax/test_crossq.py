import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from racerl_jax import crossq, train_loop
from racerl_jax.crossq import BatchRenorm, CrossQConfig
from racerl_jax.envs import Pendulum
from racerl_jax.replay import Transition

TINY = CrossQConfig.cpu(critic_hidden=(32, 32), actor_hidden=(32, 32), batch_size=16, learning_starts=0)
critic_loss = jax.jit(crossq.critic_loss, static_argnames="config")
apply_critics = jax.jit(crossq.apply_critics, static_argnames=("config", "train"))


def _brn_vars(module, x):
    return module.init(jax.random.PRNGKey(0), x, False)


def _apply_train(module, variables, x):
    y, mutated = module.apply(variables, x, True, mutable=["batch_stats"])
    return y, mutated["batch_stats"]


def _batch(key, b=16, obs_size=3, action_size=1):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return Transition(
        obs=jax.random.normal(k1, (b, obs_size)),
        action=jax.random.uniform(k2, (b, action_size), minval=-1, maxval=1),
        reward=jax.random.normal(k3, (b,)),
        next_obs=jax.random.normal(k4, (b, obs_size)),
        terminated=jnp.zeros((b,)),
    )


# ----------------------------------------------------------------------------- BatchRenorm


def test_batch_renorm_in_warmup_normalises_with_batch_stats_and_tracks_running_stats():
    x = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(1), (4096, 4))
    module = BatchRenorm(momentum=0.9, warmup_steps=10)
    variables = _brn_vars(module, x)
    y, stats = _apply_train(module, variables, x)
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.std(0), 1.0, atol=1e-3)
    np.testing.assert_allclose(stats["mean"], 0.1 * x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * x.var(0), rtol=1e-5)
    assert int(stats["steps"]) == 1


def test_batch_renorm_eval_mode_uses_running_stats_and_each_row_alone():
    module = BatchRenorm(epsilon=1e-3)
    x = jax.random.normal(jax.random.PRNGKey(2), (8, 3))
    variables = _brn_vars(module, x)
    stats = {"mean": jnp.array([1.0, -2.0, 0.5]), "var": jnp.array([4.0, 0.25, 1.0]), "steps": jnp.array(7)}
    variables = {"params": variables["params"], "batch_stats": stats}
    y = module.apply(variables, x, False)
    np.testing.assert_allclose(y, (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-3), rtol=1e-5, atol=1e-6)
    # Eval output of a row does not depend on the rest of the batch; train output does.
    np.testing.assert_allclose(module.apply(variables, x[:1], False), y[:1], rtol=1e-6)
    y_train, _ = _apply_train(module, variables, x)
    y_train_half, _ = _apply_train(module, variables, x[:4])
    assert not np.allclose(y_train[:1], y_train_half[:1])


def test_batch_renorm_after_warmup_clips_r_and_d_to_their_limits():
    module = BatchRenorm(warmup_steps=0, r_max=3.0, d_max=5.0, epsilon=1e-6)
    x = 100.0 + 10.0 * jax.random.normal(jax.random.PRNGKey(3), (4096, 2))
    variables = _brn_vars(module, x)  # running mean 0, var 1
    y, _ = _apply_train(module, variables, x)
    # r = clip(10 / 1, 1/3, 3) = 3 and d = clip(100 / 1, -5, 5) = 5: output ~ N(5, 3^2).
    np.testing.assert_allclose(y.mean(0), 5.0, atol=1e-3)
    np.testing.assert_allclose(y.std(0), 3.0, atol=1e-2)


def test_batch_renorm_relaxes_limits_linearly_after_warmup():
    module = BatchRenorm(warmup_steps=100, relax_steps=200, r_max=3.0, d_max=5.0)
    r, d = module.limits(jnp.array([0, 100, 200, 300, 1000]))
    np.testing.assert_allclose(r, [1.0, 1.0, 2.0, 3.0, 3.0])
    np.testing.assert_allclose(d, [0.0, 0.0, 2.5, 5.0, 5.0])


@pytest.mark.parametrize("shape", [(64, 5), (2, 48, 7)], ids=["batch", "ensemble"])
def test_batch_renorm_closed_form_gradient_equals_autodiff_of_the_formula(shape):
    """``renorm_train``'s hand-written gradient against autodiff of the plain formula, r and d
    held constant, on a loss that weighs every output differently."""
    k = jax.random.split(jax.random.PRNGKey(4), 6)
    f = shape[-1]
    x = 2.0 + 3.0 * jax.random.normal(k[0], shape)
    r = jax.random.uniform(k[1], (f,), minval=0.5, maxval=2.0)
    d = jax.random.uniform(k[2], (f,), minval=-1.0, maxval=1.0)
    scale = jax.random.uniform(k[3], (f,), minval=0.5, maxval=1.5)
    bias = jax.random.normal(k[4], (f,))
    w = jax.random.normal(k[5], shape)

    def formula(x, r, d, scale, bias):
        axes = tuple(range(x.ndim - 1))
        mean = x.mean(axes)
        std = jnp.sqrt(jnp.square(x - mean).mean(axes) + 1e-3)
        r, d = jax.lax.stop_gradient(r), jax.lax.stop_gradient(d)
        return ((x - mean) / std * r + d) * scale + bias

    loss = lambda fn: lambda *a: jnp.sum(w * jnp.tanh(fn(*a)))  # noqa: E731
    args = (x, r, d, scale, bias)
    np.testing.assert_allclose(crossq.renorm_train(*args, 1e-3), formula(*args), rtol=1e-5, atol=1e-5)
    got = jax.grad(loss(lambda *a: crossq.renorm_train(*a, 1e-3)), argnums=(0, 1, 2, 3, 4))(*args)
    want = jax.grad(loss(formula), argnums=(0, 1, 2, 3, 4))(*args)
    for name, g, w_ in zip(("x", "r", "d", "scale", "bias"), got, want):
        np.testing.assert_allclose(g, w_, rtol=1e-4, atol=1e-5, err_msg=name)
    assert float(jnp.abs(got[0]).max()) > 1e-3  # a real gradient, not zeros on both sides


def test_critic_loss_joint_pass_shares_batch_stats_between_current_and_next_half():
    agent = crossq.init_agent(jax.random.PRNGKey(0), 3, 1, TINY)
    batch = _batch(jax.random.PRNGKey(1))
    other = batch.replace(next_obs=batch.next_obs * 5.0 + 3.0)
    next_action = jnp.zeros((16, 1))
    args = (next_action, jnp.zeros(16), jnp.asarray(0.1), TINY)
    _, (_, q_mean_a) = critic_loss(agent.critic_params, agent.critic_stats, batch, *args)
    _, (_, q_mean_b) = critic_loss(agent.critic_params, agent.critic_stats, other, *args)
    # q_mean is Q(s, a) of the FIRST half only: it moves when only s' changes because the
    # two halves are normalised together.
    assert abs(float(q_mean_a) - float(q_mean_b)) > 1e-4
    # In eval mode the same Q(s, a) is independent of anything else in the batch.
    q1, _ = apply_critics(TINY, agent.critic_params, agent.critic_stats, batch.obs, batch.action, False)
    q2, _ = apply_critics(
        TINY, agent.critic_params, agent.critic_stats,
        jnp.concatenate([batch.obs, other.next_obs]), jnp.concatenate([batch.action, next_action]), False,
    )
    np.testing.assert_allclose(q1, q2[:, :16], rtol=1e-6)


def test_critic_loss_does_not_bootstrap_through_termination():
    agent = crossq.init_agent(jax.random.PRNGKey(0), 3, 1, TINY)
    batch = _batch(jax.random.PRNGKey(4)).replace(terminated=jnp.ones(16))
    next_action = jnp.zeros((16, 1))
    loss, _ = critic_loss(
        agent.critic_params, agent.critic_stats, batch, next_action, jnp.zeros(16), jnp.asarray(1.0), TINY
    )
    q, _ = apply_critics(
        TINY, agent.critic_params, agent.critic_stats,
        jnp.concatenate([batch.obs, batch.next_obs]), jnp.concatenate([batch.action, next_action]), True,
    )
    expected = 0.5 * jnp.sum(jnp.mean((q[:, :16] - batch.reward) ** 2, axis=1))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


# ----------------------------------------------------------------------------- update, acting


def test_update_steps_critics_every_time_and_actor_every_policy_delay():
    config = dataclasses.replace(TINY, policy_delay=3)
    agent = crossq.init_agent(jax.random.PRNGKey(0), 3, 1, config)
    batch = _batch(jax.random.PRNGKey(5))
    actor_changed, critic_changed, alpha_changed = [], [], []
    for _ in range(6):
        new, metrics = crossq.jit_update(agent, batch, config)
        leaf = lambda t: jax.tree.leaves(t)[0]
        critic_changed.append(not np.array_equal(leaf(new.critic_params), leaf(agent.critic_params)))
        actor_changed.append(not np.array_equal(leaf(new.actor_params), leaf(agent.actor_params)))
        alpha_changed.append(float(new.log_alpha) != float(agent.log_alpha))
        assert np.isfinite(float(metrics["critic_loss"]))
        assert np.isnan(float(metrics["actor_loss"])) != actor_changed[-1]
        agent = new
    assert critic_changed == [True] * 6
    assert actor_changed == [True, False, False, True, False, False]
    assert alpha_changed == actor_changed
    assert int(agent.updates) == 6


def test_lr_scale_scales_the_step_of_actor_and_critics_and_zero_freezes_them():
    agent = crossq.init_agent(jax.random.PRNGKey(0), 3, 1, TINY)
    batch = _batch(jax.random.PRNGKey(5))
    moved = {}
    for scale in (1.0, 0.5, 0.0):
        # Jitted: op by op the update compiles each of its hundreds of small ops on the first call.
        new, _ = crossq.jit_update(agent, batch, TINY, jnp.float32(scale))  # update 0 steps the actor too
        moved[scale] = [jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), getattr(new, f), getattr(agent, f))
                        for f in ("actor_params", "critic_params")]
    for full, half, none in zip(jax.tree.leaves(moved[1.0]), jax.tree.leaves(moved[0.5]), jax.tree.leaves(moved[0.0])):
        np.testing.assert_allclose(half, 0.5 * full, rtol=1e-4, atol=2e-7)  # float32 rounding of p + step
        assert not np.any(none)
    assert any(np.any(leaf) for leaf in jax.tree.leaves(moved[1.0][0]))  # the actor did move at 1


def test_an_actor_view_is_what_the_actor_learns_from_while_the_critics_learn_from_the_states():
    """Asymmetric actor-critic: each network's input batch statistics are those of what it was fed."""
    agent = crossq.init_agent(jax.random.PRNGKey(0), 3, 1, TINY)
    batch = _batch(jax.random.PRNGKey(5))
    shifted = lambda obs, key: obs + 10.0  # noqa: E731
    seen, _ = crossq.update(agent, batch, TINY, actor_view=shifted)  # update 0 steps the actor too
    plain, _ = crossq.update(agent, batch, TINY)
    momentum_share = 1.0 - TINY.bn_momentum
    actor_in = lambda a: np.asarray(a.actor_stats["BatchRenorm_0"]["mean"])  # noqa: E731
    critic_in = lambda a: np.asarray(jax.tree.leaves(a.critic_stats["BatchRenorm_0"]["mean"])[0])  # noqa: E731
    np.testing.assert_allclose(actor_in(seen) - actor_in(plain), 10.0 * momentum_share, rtol=1e-3)
    # the critics' state features: the states themselves (their action feature differs: the next
    # action is the one the actor takes from what it sees)
    np.testing.assert_allclose(critic_in(seen)[..., :3], critic_in(plain)[..., :3], rtol=1e-6)
    assert not np.allclose(critic_in(seen)[..., 3], critic_in(plain)[..., 3])


def _policy_change(agent, batch):
    a = crossq.act(agent, batch.obs, jax.random.PRNGKey(0), deterministic=True)
    b = crossq.act(agent, batch.next_obs, jax.random.PRNGKey(0), deterministic=True)
    return float(jnp.mean(jnp.linalg.norm(a - b, axis=-1)))


@pytest.mark.parametrize("field", ["smooth_temporal", "smooth_spatial"])
def test_caps_smoothness_makes_the_policy_change_less_between_neighbouring_states(field):
    batch = _batch(jax.random.PRNGKey(5), b=64, action_size=2)
    extra = {}
    if field == "smooth_spatial":  # neighbours: the states under noise of the configured size
        extra = {"smooth_spatial_std": 0.5}
        batch = batch.replace(next_obs=batch.obs + 0.5 * jax.random.normal(jax.random.PRNGKey(6), batch.obs.shape))
    changes, reported = {}, {}
    for weight in (0.0, 5.0):
        # bn_momentum 0.9: the running statistics the acting policy uses catch up within 60 updates.
        config = dataclasses.replace(TINY, batch_size=64, policy_delay=1, bn_momentum=0.9, **extra, **{field: weight})
        agent = crossq.init_agent(jax.random.PRNGKey(0), 3, 2, config)
        for _ in range(60):
            agent, metrics = crossq.jit_update(agent, batch, config)
        changes[weight] = _policy_change(agent, batch)
        reported[weight] = float(metrics["policy_change"])
    assert changes[5.0] < 0.5 * changes[0.0], changes
    if field == "smooth_temporal":  # the actor's own measure of it, logged only when the term is on
        assert np.isnan(reported[0.0]) and 0.0 <= reported[5.0] < changes[0.0]
    else:
        assert np.isnan(reported[0.0]) and np.isnan(reported[5.0])


def test_update_rejects_a_config_the_agent_was_not_built_with():
    agent = crossq.init_agent(jax.random.PRNGKey(0), 3, 1, TINY)
    with pytest.raises(ValueError, match="differs from the one the agent was built with"):
        crossq.update(agent, _batch(jax.random.PRNGKey(0)), dataclasses.replace(TINY, gamma=0.5))


def test_act_returns_bounded_actions_deterministic_or_sampled():
    agent = crossq.init_agent(jax.random.PRNGKey(0), 3, 2, TINY)
    obs = 10.0 * jax.random.normal(jax.random.PRNGKey(1), (64, 3))
    det = crossq.act(agent, obs, jax.random.PRNGKey(2), deterministic=True)
    assert det.shape == (64, 2)
    np.testing.assert_array_equal(det, crossq.act(agent, obs, jax.random.PRNGKey(3), deterministic=True))
    np.testing.assert_allclose(crossq.act(agent, obs[:1], jax.random.PRNGKey(2), deterministic=True), det[:1], rtol=1e-6)
    s1 = crossq.act(agent, obs, jax.random.PRNGKey(2), deterministic=False)
    s2 = crossq.act(agent, obs, jax.random.PRNGKey(3), deterministic=False)
    assert not np.allclose(s1, s2)
    for a in (det, s1, s2):
        assert np.all(np.abs(np.asarray(a)) <= 1.0)


def test_tanh_gaussian_log_prob_is_the_change_of_variables_density():
    mean = jnp.array([[0.3, -0.5]])
    log_std = jnp.array([[-0.2, 0.1]])
    key = jax.random.PRNGKey(7)
    a, logp = crossq.sample_tanh_gaussian(mean, log_std, key)
    u = jnp.arctanh(a)
    std = jnp.exp(log_std)
    gauss = -0.5 * ((u - mean) / std) ** 2 - jnp.log(std) - 0.5 * math.log(2 * math.pi)
    expected = jnp.sum(gauss - jnp.log(1 - a**2), axis=-1)
    np.testing.assert_allclose(logp, expected, rtol=1e-4)


def test_agent_state_is_one_pytree_with_counters_key_and_optimiser_states():
    agent = crossq.init_agent(jax.random.PRNGKey(0), 3, 1, TINY)
    leaves = jax.tree.leaves(agent)
    assert all(isinstance(x, jax.Array) for x in leaves)
    assert agent.env_steps.dtype == jnp.int32 and agent.updates.dtype == jnp.int32
    # The critic ensemble is stacked on axis 0: two independently initialised critics.
    kernels = jax.tree.leaves(agent.critic_params)
    assert all(k.shape[0] == TINY.n_critics for k in kernels)
    first_dense = agent.critic_params["Dense_0"]["kernel"]
    assert not np.allclose(first_dense[0], first_dense[1])


# ----------------------------------------------------------------------------- config


def test_config_presets_record_their_name_and_paper_widths():
    paper = CrossQConfig.paper()
    assert paper.preset == "paper" and paper.critic_hidden == (2048, 2048) and paper.actor_hidden == (256, 256)
    assert (paper.learning_rate, paper.adam_b1, paper.policy_delay, paper.utd_ratio) == (1e-3, 0.5, 3, 1)
    cpu = CrossQConfig.cpu()
    assert cpu.preset == "cpu" and max(cpu.critic_hidden) < 2048
    assert CrossQConfig.from_dict(cpu.to_dict()) == cpu
    assert CrossQConfig.cpu(batch_size=64).batch_size == 64


def test_config_rejects_bad_values_naming_the_field():
    with pytest.raises(ValueError, match="CrossQConfig.policy_delay"):
        CrossQConfig(policy_delay=0)
    with pytest.raises(ValueError, match="CrossQConfig.critic_hidden"):
        CrossQConfig(critic_hidden=())
    with pytest.raises(ValueError, match="CrossQConfig.smooth_temporal"):
        CrossQConfig(smooth_temporal=-0.1)
    with pytest.raises(ValueError, match="unknown CrossQConfig field"):
        CrossQConfig.from_dict({"critic_width": 5})


# ----------------------------------------------------------------------------- learning


def test_crossq_learns_pendulum_from_random_to_better_than_minus_600():
    env = Pendulum()
    params = env.default_params()
    config = CrossQConfig.cpu(
        critic_hidden=(64, 64), actor_hidden=(64, 64), batch_size=128, learning_starts=500,
        renorm_warmup_steps=1000, renorm_relax_steps=1000,  # exercise the renorm phase too
    )
    run = train_loop.make_train_iteration(env, params, config, num_envs=1)
    evaluate = train_loop.make_evaluate(env, params, num_envs=10)
    carry = train_loop.init_train_carry(env, params, config, 1, jax.random.PRNGKey(0))
    before = float(evaluate(carry.agent, jax.random.PRNGKey(9)).mean())
    carry, _ = run(carry, 1500)
    carry, stats = run(carry, 1500)
    after = float(evaluate(carry.agent, jax.random.PRNGKey(9)).mean())
    assert before < -900, before
    assert after > -600, (before, after)
    # The exploring policy improved too (random play scores about -1200; its episodes in the last
    # chunk are few and noisy: -250 to -790 over seeds 0-3).
    assert float(stats["episode_return"]) > -900
    assert int(carry.agent.updates) == 3000 - 500 + 1
