"""The batched env's lookups on stacked tracks (``TrackTables``): the windowed projection against
the brute-force one, each car reading its own track, and the env step against what the real game
backend computes (``project``, ``observe``) from the same pose."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from surrogate.car import CarParams, sample_car_params
from surrogate.fastmath import fast_atan, fast_sincos
from surrogate.env import ACTION_HIGH, ACTION_LOW, EnvConfig, RacingEnv, batch_reset
from surrogate.env_params import make_params
from surrogate.observation import Telemetry, observe, observe_tables
from surrogate.track import make_tables, project, project_global, project_tables, select_track

CFG = EnvConfig(model="kinematic", max_episode_steps=200, n_track_points=512)


@pytest.fixture(scope="module")
def two_tracks():
    return make_params(["oval", "technical"], config=CFG)[0]


def _poses_near_track(params, n, key):
    """Random poses within a few metres of each track's centre line, with the segment index of a
    nearby point as the projection hint."""
    k = jax.random.split(key, 5)
    tid = jax.random.randint(k[0], (n,), 0, params.tracks.x.shape[0])
    idx = jax.random.randint(k[1], (n,), 0, params.tracks.x.shape[1])
    h = params.tracks.heading[tid, idx]
    lat = jax.random.uniform(k[2], (n,), minval=-8.0, maxval=8.0)
    x = params.tracks.x[tid, idx] - jnp.sin(h) * lat
    y = params.tracks.y[tid, idx] + jnp.cos(h) * lat
    yaw = h + jax.random.uniform(k[3], (n,), minval=-1.0, maxval=1.0)
    hint = idx - jax.random.randint(k[4], (n,), 0, 4)
    return tid, x, y, yaw, hint


def test_windowed_projection_on_stacked_tracks_equals_the_global_search(two_tracks):
    params = two_tracks
    tables = make_tables(params.tracks, CFG.projection_window)
    tid, x, y, yaw, hint = _poses_near_track(params, 500, jax.random.PRNGKey(0))
    ref = jax.jit(jax.vmap(lambda t, x, y, yaw, hint: project_global(select_track(params.tracks, t), x, y, yaw)))(
        tid, x, y, yaw, hint)
    fast = jax.jit(jax.vmap(lambda t, *a: project_tables(tables, t, *a, CFG.projection_window)[0]))(
        tid, x, y, yaw, hint)
    m = params.tracks.x.shape[1]
    # The end of one segment is the start of the next: compare positions round the loop.
    step = (np.asarray(fast.idx) - np.asarray(ref.idx)) % m
    assert np.all((step == 0) | (step == 1) | (step == m - 1))
    length = np.asarray(params.tracks.length)[np.asarray(tid)]
    ds = (np.asarray(fast.s) - np.asarray(ref.s) + length / 2) % length - length / 2
    np.testing.assert_allclose(ds, 0.0, atol=1e-3)
    for f in ("lateral", "heading_error"):
        np.testing.assert_allclose(np.asarray(getattr(fast, f)), np.asarray(getattr(ref, f)), atol=1e-4, err_msg=f)


def test_observation_on_stacked_tracks_reads_each_cars_own_track(two_tracks):
    params = two_tracks
    tables = make_tables(params.tracks, CFG.projection_window)
    n = 500
    tid, x, y, yaw, hint = _poses_near_track(params, n, jax.random.PRNGKey(1))
    u = jax.random.uniform(jax.random.PRNGKey(2), (n, 7), minval=-1.0, maxval=1.0)
    tel = Telemetry(x, y, yaw, 30.0 + 20.0 * u[:, 0], 5.0 * u[:, 1], 8.0 * u[:, 2], u[:, 3])
    prev = u[:, 4:7]

    def both(t, tel, hint, prev):
        track = select_track(params.tracks, t)
        pos = project(track, tel.x, tel.y, tel.yaw, hint, CFG.projection_window)
        return observe(track, pos, tel, prev, CFG.obs), observe_tables(tables, t, pos, tel, prev, CFG.obs)

    ref, fast = jax.jit(jax.vmap(both))(tid, tel, hint, prev)
    assert ref.shape == (n, CFG.obs.size)
    np.testing.assert_allclose(np.asarray(fast), np.asarray(ref), rtol=1e-5, atol=1e-6)


def test_env_step_observes_and_projects_like_the_real_game_backend(two_tracks):
    """Whatever the step's internals, its state and final observation must be what ``project`` and
    ``observe`` (the functions the real game backend calls) give for the new car pose."""
    params = two_tracks
    env = RacingEnv(dataclasses.replace(CFG, model="dynamic"))
    n = 64

    @jax.jit
    def run(key):
        k0, k1 = jax.random.split(key)
        obs, st = batch_reset(env, k0, params, n)

        def body(st, k):
            ka, ks = jax.random.split(k)
            u = jax.random.uniform(ka, (n, 3))
            a = jnp.stack([0.6 * (2 * u[:, 0] - 1), 0.3 + 0.7 * u[:, 1], 0.2 * u[:, 2]], axis=1)
            obs2, st2, r, te, tr, info = env.batch_step(ks, st, a, params)

            def check(s_old, car, action):
                track = select_track(params.tracks, s_old.track_id)
                pos = project(track, car.x, car.y, car.yaw, s_old.pos.idx, CFG.projection_window)
                tel = Telemetry(car.x, car.y, car.yaw, jnp.hypot(car.vx, car.vy), car.ax, car.ay, car.yaw_rate)
                return pos.s, observe(track, pos, tel, jnp.clip(action, ACTION_LOW, ACTION_HIGH), CFG.obs)

            car = jax.vmap(lambda p, c, a: env._car_step(p, c, a, env.config.dt, env.config.substeps))(st.car_params, st.car, a)
            s_ref, obs_ref = jax.vmap(check)(st, car, a)
            return st2, (info["final_obs"], obs_ref, s_ref, st2.pos.s, te | tr, obs2)

        return jax.lax.scan(body, st, jax.random.split(k1, 150))[1]

    final_obs, obs_ref, s_ref, s_new, done, obs = run(jax.random.PRNGKey(3))
    done = np.asarray(done)
    assert done.any() and (~done).any()
    np.testing.assert_allclose(np.asarray(final_obs), np.asarray(obs_ref), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(s_new)[~done], np.asarray(s_ref)[~done], atol=1e-3)
    # Cars that continue see their final observation; reset ones a fresh episode's.
    np.testing.assert_array_equal(np.asarray(obs)[~done], np.asarray(final_obs)[~done])


def test_reset_without_randomisation_gives_exactly_the_nominal_car(two_tracks):
    env = RacingEnv(CFG)
    car = CarParams(mass=1234.5, mu=1.1)
    params = two_tracks.replace(car=car)
    _, st = jax.jit(lambda p: batch_reset(env, jax.random.PRNGKey(0), p, 8))(params)
    drawn = sample_car_params(jax.random.PRNGKey(5), car, 0.0)
    for name in ("mass", "mu", "lf", "tyre_B"):
        np.testing.assert_array_equal(np.asarray(getattr(st.car_params, name)), np.full(8, getattr(drawn, name)))


def test_fast_trigonometry_matches_float64_to_float32_precision():
    x = np.float32(np.concatenate([np.linspace(-40.0, 40.0, 400_001), np.linspace(-1e-3, 1e-3, 10_001)]))
    s, c = jax.jit(fast_sincos)(x)
    np.testing.assert_allclose(np.asarray(s), np.sin(x.astype(np.float64)), rtol=0, atol=2e-7)
    np.testing.assert_allclose(np.asarray(c), np.cos(x.astype(np.float64)), rtol=0, atol=2e-7)
    a = np.float32(np.concatenate([np.linspace(-60.0, 60.0, 400_001), np.logspace(-8, 8, 10_001), -np.logspace(-8, 8, 10_001)]))
    np.testing.assert_allclose(np.asarray(jax.jit(fast_atan)(a)), np.arctan(a.astype(np.float64)), rtol=4e-7, atol=1e-30)
    # Gradients flow (the car parameters are fitted by gradient).
    g = jax.grad(lambda v: fast_sincos(v)[0] + fast_atan(v))(jnp.float32(0.3))
    assert float(g) == pytest.approx(np.cos(0.3) + 1.0 / (1.0 + 0.09), rel=1e-5)
