import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from surrogate.car import CarParams, speed
from surrogate.env import GOVERNOR_BRAKE, EnvConfig, RacingEnv, batch_reset, env_action, game_controls, governed
from surrogate.env_params import make_params
from surrogate.observation import (ACCEL_SCALE, YAW_RATE_SCALE, ObsConfig, Telemetry, filter_imu, imu_vector, noisy_telemetry,
                                   observe, sensor_noise_table)
from surrogate.reward import RewardWeights, reward
from surrogate.rollout import batch_rollout, lap_metrics
from surrogate.track import project_global, select_track

# The env's logic does not depend on the car model; the kinematic one compiles fastest.
CFG = EnvConfig(model="kinematic", max_episode_steps=300, n_track_points=1024)


@pytest.fixture(scope="module")
def oval():
    params, refs = make_params(["oval"], config=CFG)
    return params, refs


def _run(env, params, actions_fn, steps, n=1, key=0):
    run = batch_rollout(env, params, lambda obs, st, k: actions_fn(st, k), n, steps,
                        record=lambda obs, st, r, te, tr, info: (obs, r, te, tr, info, st))
    return run(jax.random.PRNGKey(key))


def test_random_actions_on_many_cars_stay_finite_and_auto_reset(oval):
    params, _ = oval
    env = RacingEnv(CFG)
    n = 64

    def rand(st, k):
        u = jax.random.uniform(k, (n, 3))
        return jnp.stack([2 * u[:, 0] - 1, u[:, 1], u[:, 2]], axis=1)

    _, (obs, r, te, tr, info, st) = _run(env, params, rand, 400, n=n)
    assert obs.shape == (400, n, env.observation_size)
    assert np.all(np.isfinite(np.asarray(obs))) and np.all(np.isfinite(np.asarray(r)))
    done = np.asarray(te | tr)
    assert done.any(), "random driving never ended an episode"
    # Every ended episode restarts at step 0 in the same call.
    steps = np.asarray(st.steps)
    assert np.all(steps[done] == 0)
    assert np.all(steps[~done] > 0)


@pytest.mark.parametrize("ending", [[1, 6, 11], [0, 2, 3, 5, 8, 9, 12, 13, 15]], ids=["few", "more_than_slots"])
def test_batch_step_resets_exactly_the_finished_cars(oval, ending):
    """Few finished cars go through the compact reset, more than its slots through the full one;
    either way the others step on exactly as ``step`` moves them and each finished car starts its
    own fresh episode."""
    params, _ = oval
    env = RacingEnv(dataclasses.replace(CFG, reset_slot_frac=0.25))
    n = 16
    assert env.reset_slots(n) == 4
    _, st = batch_reset(env, jax.random.PRNGKey(0), params, n)
    ends = np.isin(np.arange(n), ending)
    st = st.replace(episode=st.episode.replace(steps=jnp.where(ends, CFG.max_episode_steps - 1, 5)))
    action = jnp.tile(jnp.array([[0.02, 0.5, 0.0]]), (n, 1))
    obs, new, r, te, tr, info = jax.jit(env.batch_step)(jax.random.PRNGKey(1), st, action, params)
    obs_ref, new_ref, r_ref, *_ = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))(
        jax.random.split(jax.random.PRNGKey(1), n), st, action, params)

    np.testing.assert_array_equal(np.asarray(te | tr), ends)
    np.testing.assert_allclose(np.asarray(r), np.asarray(r_ref), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(obs)[~ends], np.asarray(obs_ref)[~ends], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(new.car.x)[~ends], np.asarray(new_ref.car.x)[~ends], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(new.steps), np.where(ends, 0, 6))
    assert np.all(np.asarray(new.episode.progress)[ends] == 0.0)
    # The fresh episodes' observations belong to their states, and each car got its own start.
    np.testing.assert_allclose(np.asarray(obs)[ends], np.asarray(jax.vmap(env.observe, in_axes=(None, 0))(params, new))[ends],
                               rtol=1e-5, atol=1e-5)
    assert len(np.unique(np.round(np.asarray(new.pos.s)[ends], 2))) == len(ending)
    np.testing.assert_array_equal(np.asarray(info["final_obs"])[~ends], np.asarray(obs)[~ends])


def test_standing_start_probability_sets_the_share_of_episodes_from_rest(oval):
    params, _ = oval
    env = RacingEnv(CFG)
    reset = jax.jit(lambda p: batch_reset(env, jax.random.PRNGKey(4), p, 2000)[1].car)
    speeds = {prob: np.hypot(np.asarray(car.vx), np.asarray(car.vy))
              for prob in (0.0, 0.25, 1.0) for car in [reset(params.replace(standing_start_prob=jnp.float32(prob)))]}
    assert np.all(speeds[1.0] == 0.0)
    assert np.mean(speeds[0.0] == 0.0) < 0.01
    assert 0.2 < np.mean(speeds[0.25] == 0.0) < 0.3
    assert speeds[0.25].max() > 5.0  # the others still start moving


def test_leaving_the_track_terminates_with_the_penalty(oval):
    params, _ = oval
    env = RacingEnv(dataclasses.replace(CFG, start="line"))
    full_left = lambda st, k: jnp.array([[1.0, 1.0, 0.0]])  # noqa: E731
    _, (obs, r, te, tr, info, st) = _run(env, params, full_left, 300)
    te = np.asarray(te)[:, 0]
    assert te.any()
    i = np.flatnonzero(te)[0]
    assert bool(np.asarray(info["off_track"])[i, 0])
    assert float(np.asarray(r)[i, 0]) < -params.reward.off_track + 1.0


def test_an_edge_margin_ends_the_episode_that_far_inside_the_edge_and_changes_nothing_before(oval):
    params, _ = oval
    full_left = lambda st, k: jnp.array([[0.3, 0.6, 0.0]])  # noqa: E731
    runs = {}
    for margin in (0.0, 1.0):
        env = RacingEnv(dataclasses.replace(CFG, start="line", edge_margin=margin))
        _, (obs, r, te, tr, info, st) = _run(env, params, full_left, 300)
        i = int(np.flatnonzero(np.asarray(te)[:, 0])[0])
        runs[margin] = i, np.asarray(obs)[:, 0], np.asarray(st.episode.pos.lateral)[:, 0], np.asarray(st.episode.pos.s)[:, 0]
    (i0, obs0, lat0, s0), (i1, obs1, lat1, _) = runs[0.0], runs[1.0]
    assert i1 < i0  # the same drive leaves the narrower track first
    np.testing.assert_array_equal(obs1[:i1], obs0[:i1])  # the observation is the real track's
    # st holds the reset state at a termination: the margin run ended where the plain run, on the same
    # path, was past the narrowed edge and still on the real track
    w_left = float(np.interp(s0[i1], np.asarray(params.tracks.s[0]), np.asarray(params.tracks.w_left[0])))
    edge = w_left + CFG.car_half_width  # the centre's bound: the whole car past the edge
    assert edge - 1.0 < lat0[i1] <= edge and lat1[i1 - 1] <= edge - 1.0
    with pytest.raises(ValueError, match="edge_margin"):
        EnvConfig(edge_margin=-0.5)


def test_standing_still_is_truncated_by_the_stuck_check(oval):
    params, _ = oval
    cfg = dataclasses.replace(CFG, start="line", stuck_time=2.0)
    env = RacingEnv(cfg)
    idle = lambda st, k: jnp.zeros((1, 3))  # noqa: E731
    _, (obs, r, te, tr, info, st) = _run(env, params, idle, 100)
    tr = np.asarray(tr)[:, 0]
    assert not np.asarray(te).any()
    assert np.flatnonzero(tr)[0] == round(2.0 / cfg.dt) - 1



def test_the_speed_limiter_fades_the_throttle_out_below_the_limit_and_brakes_over_it():
    c = np.array([[0.3, 1.0, 0.2]] * 6, np.float32)
    out = governed(c, np.array([10.0, 19.0, 20.0, 20.8, 21.0, 25.0]), 20.0, xp=np)
    np.testing.assert_allclose(out[:, 1], [1.0, 0.5, 0.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(out[:, 0], c[:, 0])  # the steering as it is
    # the driver's brake below the limit; over it at least the limiter's, rising to GOVERNOR_BRAKE
    np.testing.assert_allclose(out[:, 2], [0.2, 0.2, 0.2, 0.2, 0.25, GOVERNOR_BRAKE], atol=1e-6)
    assert governed(np.array([[0.0, 0.0, 0.9]]), np.array([25.0]), 20.0, xp=np)[0, 2] == 0.9  # a harder brake stays
    assert governed(c, np.full(6, 99.0), 0.0, xp=np) is c  # no limit: untouched
    with pytest.raises(ValueError, match="speed_limit"):
        EnvConfig(speed_limit=1.0)


def test_a_car_on_full_throttle_stays_under_the_speed_limit_while_the_policy_still_sees_its_command(oval):
    params, _ = oval
    full = lambda st, k: jnp.array([[0.0, 1.0, 0.0]])  # noqa: E731
    speeds = {}
    for limit in (0.0, 15.0):
        env = RacingEnv(dataclasses.replace(CFG, start="line", speed_limit=limit))
        _, (obs, r, te, tr, info, st) = _run(env, params, full, 150)
        speeds[limit] = np.asarray(info["speed"])[:, 0]
        np.testing.assert_allclose(np.asarray(obs)[-1, 0, 9], 1.0)  # the previous throttle observed: as commanded
    assert speeds[0.0].max() > 25.0
    assert 13.0 < speeds[15.0].max() <= 15.0 + 0.5  # one control period of coasting past the fade at most


def test_a_car_over_the_speed_limit_is_braked_back_to_it(oval):
    """A car that passes the limit (a game's car does, on momentum after the throttle is cut) is
    braked back to it, where coasting would carry it on."""
    params, _ = oval
    speeds = {}
    for limit in (0.0, 15.0):
        env = RacingEnv(dataclasses.replace(CFG, start="line", speed_limit=limit))
        obs, st = env.reset(jax.random.PRNGKey(0), params)
        fast = st.replace(car=st.car.replace(vx=jnp.float32(22.0)))  # 7 m/s over the limit
        step = jax.jit(env.step)
        v = []
        for i in range(25):  # one second
            obs, fast, r, te, tr, info = step(jax.random.PRNGKey(i), fast, jnp.zeros(3), params)
            v.append(float(info["speed"]))
        speeds[limit] = np.asarray(v)
    assert speeds[0.0][-1] > 20.0  # coasting: still far over 15 m/s
    assert speeds[15.0][-1] < 15.0 + 1.0 and speeds[15.0][-1] < speeds[0.0][-1] - 4.0


def test_time_limit_truncates_a_running_episode(oval):
    params, _ = oval
    cfg = dataclasses.replace(CFG, start="line", max_episode_steps=50)
    env = RacingEnv(cfg)
    slow = lambda st, k: jnp.array([[0.0, 0.3, 0.0]])  # noqa: E731
    _, (obs, r, te, tr, info, st) = _run(env, params, slow, 60)
    assert np.flatnonzero(np.asarray(tr)[:, 0])[0] == 49


def test_driving_backwards_terminates_as_wrong_way(oval):
    params, _ = oval
    env = RacingEnv(dataclasses.replace(CFG, start="line", wrong_way_m=20.0))
    obs, st = env.reset(jax.random.PRNGKey(0), params)
    turned = st.car.replace(yaw=st.car.yaw + jnp.pi)
    st = st.replace(car=turned)
    step = jax.jit(env.step)
    for i in range(200):
        obs, st, r, te, tr, info = step(jax.random.PRNGKey(i), st, jnp.array([0.0, 0.5, 0.0]), params)
        if bool(te):
            break
    assert bool(te) and not bool(info["off_track"])
    assert float(r) < 0  # progress was negative


def test_lap_is_timed_once_per_crossing_and_matches_the_clock(oval):
    params, refs = oval
    env = RacingEnv(dataclasses.replace(CFG, start="line", max_episode_steps=100_000))
    from surrogate.baseline import baseline_action, baseline_params_for

    track = select_track(params.tracks, 0)
    bp = baseline_params_for(params.car)
    pol = lambda st, k: jax.vmap(lambda s: baseline_action(track, s.pos, env.telemetry(s.car), bp))(st)  # noqa: E731
    steps = int(2.2 * refs[0].lap_time_s / 0.6 / CFG.dt)
    _, (obs, r, te, tr, info, st) = _run(env, params, pol, steps)
    done = np.asarray(info["lap_completed"])[:, 0]
    times = np.asarray(info["lap_time"])[:, 0][done]
    assert done.sum() >= 2
    assert not np.asarray(te).any()
    # The first lap from standstill started at t=0: its time is the clock at the crossing, within one step.
    first = np.flatnonzero(done)[0]
    assert abs(times[0] - (first + 1) * CFG.dt) <= CFG.dt
    # A flying lap is faster than the standing one, and both are slower than the physical limit.
    assert times[1] < times[0]
    assert times[1] > refs[0].lap_time_s
    assert bool(np.asarray(info["lap_clean"])[:, 0][done][1])


def test_domain_randomisation_varies_the_car_per_episode(oval):
    params, _ = oval
    env = RacingEnv(CFG)
    reset = jax.jit(lambda p: batch_reset(env, jax.random.PRNGKey(0), p, 32))
    obs, st = reset(params.replace(car_spread=jnp.float32(0.1)))
    masses = np.asarray(st.car_params.mass)
    assert masses.std() > 10.0
    assert np.all(np.abs(masses / CarParams().mass - 1.0) <= 0.1 + 1e-6)
    obs, st0 = reset(params)
    assert np.allclose(np.asarray(st0.car_params.mass), CarParams().mass)


def test_the_dynamic_model_drives_the_same_env_as_the_kinematic_one_on_a_straight(oval):
    params, _ = oval
    gentle = lambda st, k: jnp.array([[0.0, 0.5, 0.0]])  # noqa: E731
    progress = {}
    for model in ("dynamic", "kinematic"):
        env = RacingEnv(dataclasses.replace(CFG, model=model, start="line"))
        _, (obs, r, te, tr, info, st) = _run(env, params, gentle, 60)
        assert np.all(np.isfinite(np.asarray(obs)))
        progress[model] = float(np.asarray(info["progress"]).sum())
    assert progress["dynamic"] > 8.0
    assert progress["dynamic"] == pytest.approx(progress["kinematic"], rel=0.05)


def test_several_tracks_are_drawn_at_reset():
    params, refs = make_params(["oval", "technical"], config=CFG)
    env = RacingEnv(CFG)
    obs, st = batch_reset(env, jax.random.PRNGKey(1), params, 64)
    ids = np.asarray(st.track_id)
    assert set(ids.tolist()) == {0, 1}
    assert refs[0].lap_time_s < refs[1].lap_time_s or refs[0].line_length_m != refs[1].line_length_m


def test_observation_is_unchanged_by_moving_the_whole_world(oval):
    """Only relative quantities reach the policy: translate and rotate track and car together."""
    params, _ = oval
    track = select_track(params.tracks, 0)
    i = 100
    tel = Telemetry(track.x[i] + 1.0, track.y[i] - 0.5, track.heading[i] + 0.1, jnp.float32(20.0),
                    jnp.float32(1.0), jnp.float32(-2.0), jnp.float32(0.1))
    prev = jnp.array([0.1, 0.5, 0.0])
    cfg = CFG.obs
    obs0 = observe(track, project_global(track, tel.x, tel.y, tel.yaw), tel, prev, cfg)
    th, dx, dy = 0.7, 300.0, -120.0
    c, s = np.cos(th), np.sin(th)
    moved = track.replace(x=c * track.x - s * track.y + dx, y=s * track.x + c * track.y + dy, heading=track.heading + th)
    tel2 = tel.replace(x=c * tel.x - s * tel.y + dx, y=s * tel.x + c * tel.y + dy, yaw=tel.yaw + th)
    obs1 = observe(moved, project_global(moved, tel2.x, tel2.y, tel2.yaw), tel2, prev, cfg)
    np.testing.assert_allclose(np.asarray(obs0), np.asarray(obs1), atol=2e-3)


def test_observation_accepts_plain_numpy_telemetry_like_a_game_frame(oval):
    params, _ = oval
    track = select_track(params.tracks, 0)
    frame = {"x": 10.0, "y": 2.0, "yaw": 0.2, "speed": 30.0, "accel_long": 0.5, "accel_lat": 3.0, "yaw_rate": 0.05}
    tel = Telemetry(**{k: np.float32(v) for k, v in frame.items()})
    obs = observe(track, project_global(track, tel.x, tel.y, tel.yaw), tel, np.zeros(3, np.float32), CFG.obs)
    assert obs.shape == (CFG.obs.size,) and np.all(np.isfinite(np.asarray(obs)))
    assert float(obs[0]) == pytest.approx(30.0 / 50.0)


def test_observation_without_imu_leaves_out_exactly_the_accelerations_and_yaw_rate(oval):
    params, _ = oval
    track = select_track(params.tracks, 0)
    tel = Telemetry(*(np.float32(v) for v in (10.0, 2.0, 0.2, 30.0, 0.5, 3.0, 0.05)))
    pos = project_global(track, tel.x, tel.y, tel.yaw)
    prev = np.array([0.1, 0.5, 0.0], np.float32)
    full = np.asarray(observe(track, pos, tel, prev, ObsConfig()))
    bare_cfg = ObsConfig(imu=False)
    bare = np.asarray(observe(track, pos, tel, prev, bare_cfg))
    assert bare.shape == (bare_cfg.size,) == (ObsConfig().size - 3,)
    np.testing.assert_array_equal(bare, np.delete(full, [1, 2, 3]))
    # what the IMU reads no longer changes what the policy sees
    loud = tel.replace(accel_long=np.float32(-40.0), accel_lat=np.float32(90.0), yaw_rate=np.float32(1.5))
    np.testing.assert_array_equal(np.asarray(observe(track, pos, loud, prev, bare_cfg)), bare)
    assert RacingEnv(EnvConfig(obs=bare_cfg)).observation_size == bare_cfg.size


def test_reward_terms_add_up_and_punish_jerky_actions():
    w = RewardWeights(progress=0.1, deviation=0.01, action_change=0.5, off_track=5.0, stuck=1.0, time=0.0)
    a, prev = jnp.array([0.5, 1.0, 0.0]), jnp.array([-0.5, 1.0, 0.0])
    r, terms = reward(w, jnp.float32(2.0), jnp.float32(1.0), a, prev, jnp.bool_(False), jnp.bool_(False))
    assert float(r) == pytest.approx(0.2 - 0.01 - 0.5)
    r_smooth, _ = reward(w, jnp.float32(2.0), jnp.float32(1.0), a, a, jnp.bool_(False), jnp.bool_(False))
    assert float(r_smooth) > float(r)
    r_off, _ = reward(w, jnp.float32(2.0), jnp.float32(1.0), a, a, jnp.bool_(True), jnp.bool_(False))
    assert float(r_off) == pytest.approx(float(r_smooth) - 5.0)


def test_pedal_overlap_term_charges_throttle_times_brake_and_nothing_on_one_pedal():
    w = RewardWeights(progress=0.0, deviation=0.0, action_change=0.0, off_track=0.0, stuck=0.0, pedal_overlap=2.0)
    no = jnp.bool_(False)

    def r(action):
        a = jnp.array(action)
        return float(reward(w, jnp.float32(1.0), jnp.float32(0.0), a, a, no, no)[0])

    assert r([0.3, 0.8, 0.5]) == pytest.approx(-2.0 * 0.8 * 0.5)
    assert r([0.3, 1.0, 0.0]) == 0.0 and r([0.3, 0.0, 1.0]) == 0.0


def test_lap_metrics_count_steps_on_both_pedals():
    n = 10
    action = np.zeros((n, 3), np.float32)
    action[:, 1] = 0.9
    action[:4, 2] = 0.3  # brake under throttle on 4 of 10 steps
    action[4, 2] = 0.01  # a brush below the 5% threshold does not count
    traj = {"lap_completed": np.zeros(n, bool), "lap_time": np.full(n, np.nan), "lap_clean": np.zeros(n, bool),
            "action": action, "done": np.zeros(n, bool), "ref_deviation": np.zeros(n), "off_track": np.zeros(n, bool)}
    assert lap_metrics(traj)["pedal_overlap"] == pytest.approx(0.4)


def test_env_config_rejects_unknown_model():
    with pytest.raises(ValueError, match="model"):
        EnvConfig(model="unicycle")


def test_combined_pedal_drives_as_the_same_throttle_or_brake_on_separate_pedals(oval):
    """One pedal axis: its positive half is the throttle, its negative half the brake; the car, the
    reward and the observation's previous controls see the game's three controls."""
    params, _ = oval
    sep, comb = RacingEnv(CFG), RacingEnv(dataclasses.replace(CFG, pedals="combined"))
    assert (comb.action_size, list(comb.action_low), list(comb.action_high)) == (2, [-1, -1], [1, 1])
    assert sep.action_size == 3
    pedal = jnp.array([[0.3, 0.8], [-0.2, 0.8], [0.1, -0.6], [0.0, 0.0], [0.5, 1.7]])
    controls = jnp.array([[0.3, 0.8, 0.0], [-0.2, 0.8, 0.0], [0.1, 0.0, 0.6], [0.0, 0.0, 0.0], [0.5, 1.0, 0.0]])
    _, st = batch_reset(sep, jax.random.PRNGKey(3), params, 5)
    key = jax.random.PRNGKey(4)
    step_c, step_s = jax.jit(comb.batch_step), jax.jit(sep.batch_step)  # op by op it takes a minute
    for _ in range(3):  # the throttle builds speed, then the brake takes it off
        o_c, st_c, r_c, *_ = step_c(key, st, pedal, params)
        o_s, st_s, r_s, *_ = step_s(key, st, controls, params)
        np.testing.assert_array_equal(np.asarray(o_c), np.asarray(o_s))
        np.testing.assert_array_equal(np.asarray(r_c), np.asarray(r_s))
        st = st_s
    np.testing.assert_array_equal(np.asarray(st_c.episode.prev_action), np.asarray(controls))
    with pytest.raises(ValueError, match=r"pedals = 'two'; expected one of \('separate', 'combined'\)"):
        EnvConfig(pedals="two")


@pytest.mark.parametrize("xp", [jnp, np])
def test_env_action_inverts_game_controls_for_either_pedal_setting(xp):
    controls = xp.asarray([[0.3, 0.8, 0.0], [-1.0, 0.0, 0.6], [0.0, 0.0, 0.0]], xp.float32)
    for pedals in ("separate", "combined"):
        back = game_controls(env_action(controls, pedals, xp=xp), pedals, xp=xp)
        np.testing.assert_allclose(np.asarray(back), np.asarray(controls), atol=1e-7)
    np.testing.assert_allclose(np.asarray(env_action(controls, "combined", xp=xp)), [[0.3, 0.8], [-1.0, -0.6], [0.0, 0.0]],
                               atol=1e-7)


def test_an_input_delay_holds_back_the_controls_by_its_control_steps(oval):
    params, _ = oval
    cfg = dataclasses.replace(CFG, start="line")
    steps = 6
    # Full throttle from rest on the start line: with a delay of 2 the car stays put for 2 steps.
    speeds = {}
    for delay in (0, 2):
        env = RacingEnv(dataclasses.replace(cfg, delay_steps=delay))
        _, (obs, r, te, tr, info, st) = _run(env, params, lambda st, k: jnp.array([[0.0, 1.0, 0.0]]), steps)
        speeds[delay] = np.asarray(info["speed"])[:, 0]
        assert st.pending.shape == (steps, 1, max(delay, 1), 3)
    assert np.all(speeds[2][:2] == 0.0) and speeds[2][2] > 0.0
    np.testing.assert_allclose(speeds[2][2:], speeds[0][:-2], rtol=1e-5)
    with pytest.raises(ValueError, match="delay_steps"):
        EnvConfig(delay_steps=11)


def test_sensor_noise_has_the_tables_spread_at_the_cars_speed():
    table = jnp.asarray(sensor_noise_table({"speed_mps": [0.0, 40.0], "accel_lat": [0.0, 20.0], "yaw_rate": [0.0, 1.0]}))
    tel = Telemetry(*(jnp.float32(v) for v in (0.0, 0.0, 0.0, 30.0, 1.0, 2.0, 0.1)))
    noisy = jax.vmap(lambda k: noisy_telemetry(tel, table, k))(jax.random.split(jax.random.PRNGKey(0), 4000))
    assert np.std(np.asarray(noisy.accel_lat)) == pytest.approx(15.0, rel=0.05)  # 20 * 30 / 40
    assert np.std(np.asarray(noisy.yaw_rate)) == pytest.approx(0.75, rel=0.05)
    assert np.all(np.asarray(noisy.speed) == 30.0) and np.all(np.asarray(noisy.accel_long) == 1.0)  # none there


def test_sensor_noise_jitters_only_the_observed_telemetry_and_each_car_draws_its_own(oval):
    """It reaches the observation's speed, acceleration and yaw-rate features and nothing else: not
    the car, not the track features."""
    params, _ = oval
    table = sensor_noise_table({"speed_mps": [0.0, 40.0], "accel_lat": [0.0, 20.0], "yaw_rate": [0.0, 1.0]})
    noisy = params.replace(sensor_noise=jnp.asarray(table, jnp.float32))
    silent = params.replace(sensor_noise=jnp.asarray(table * np.array([1, 0, 0, 0, 0]), jnp.float32))  # one compile
    env, n = RacingEnv(CFG), 8
    _, st = batch_reset(env, jax.random.PRNGKey(0), params, n)
    step = jax.jit(env.batch_step)
    action = jnp.tile(jnp.array([[0.0, 0.3, 0.0]]), (n, 1))
    o0, s0, *_ = step(jax.random.PRNGKey(1), st, action, silent)
    o1, s1, *_ = step(jax.random.PRNGKey(1), st, action, noisy)
    np.testing.assert_array_equal(np.asarray(s0.car.x), np.asarray(s1.car.x))
    d = np.asarray(o1 - o0)
    assert np.all(d[:, 4:] == 0.0) and np.all(d[:, [0, 1]] == 0.0)  # speed and accel_long: no noise in the table
    moving = np.asarray(speed(s0.car)) > 1.0
    assert moving.sum() >= 3 and np.all(d[moving][:, 2] != 0.0) and len(set(d[moving][:, 2].tolist())) == moving.sum()


def test_the_imu_filter_moves_towards_each_reading_by_dt_over_its_time_constant_plus_dt():
    tel = Telemetry(*(jnp.float32(v) for v in (0.0, 0.0, 0.0, 30.0, 10.0, -20.0, 1.0)))
    prev = jnp.array([0.0, 0.0, 0.0])
    np.testing.assert_allclose(filter_imu(ObsConfig(imu_filter_s=0.1), prev, tel, 0.04),
                               np.array([10.0, -20.0, 1.0]) * 0.04 / 0.14, rtol=1e-6)
    np.testing.assert_array_equal(filter_imu(ObsConfig(), prev, tel, 0.04), [10.0, -20.0, 1.0])  # 0: the readings
    with pytest.raises(ValueError, match="imu_filter_s"):
        ObsConfig(imu_filter_s=-0.1)


def test_the_observed_imu_is_the_cars_low_passed_and_restarts_with_each_episode(oval):
    """With a filter the three IMU features are the car's accelerations and yaw rate low-passed,
    starting again from the reading at each reset (episodes of 25 steps here)."""
    params, _ = oval
    tau, n = 0.1, 4
    env = RacingEnv(dataclasses.replace(CFG, max_episode_steps=25, obs=ObsConfig(imu_filter_s=tau)))
    obs, st = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(0), n), params)
    step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    imu, a, scale = [1, 2, 3], CFG.dt / (tau + CFG.dt), np.array([ACCEL_SCALE, ACCEL_SCALE, YAW_RATE_SCALE])
    reading = lambda st: np.asarray(jax.vmap(lambda c: imu_vector(env.telemetry(c)))(st.car)) / scale  # noqa: E731
    prev, resets, lag = reading(st), 0, 0.0
    np.testing.assert_allclose(np.asarray(obs)[:, imu], prev, rtol=1e-5, atol=1e-6)
    for t in range(60):  # full throttle, weaving: the accelerations and the yaw rate change every step
        act = jnp.stack([0.7 * jnp.sin(0.25 * t + jnp.arange(n)), jnp.full((n,), 0.9), jnp.zeros((n,))], axis=1)
        obs, st, _, te, tr, _ = step(jax.random.split(jax.random.PRNGKey(t + 1), n), st, act, params)
        raw, done = reading(st), np.asarray(te | tr)  # after a reset: the new episode's car
        want = np.where(done[:, None], raw, prev + a * (raw - prev))
        np.testing.assert_allclose(np.asarray(obs)[:, imu], want, rtol=1e-4, atol=1e-5)
        prev, resets, lag = want, resets + done.sum(), max(lag, np.abs(want - raw).max())
    assert resets >= n and lag > 0.05  # every car restarted, and the filter did something
