import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from surrogate import tuning
from surrogate.baseline import baseline_params_for
from surrogate.env import EnvConfig, RacingEnv
from surrogate.env_params import make_params
from surrogate.rollout import lap_metrics, rollout
from surrogate.track import select_track


@pytest.fixture(scope="module")
def oval():
    cfg = EnvConfig(start="line", max_episode_steps=100_000, pedals="combined")
    params, refs = make_params(["oval"], config=cfg)
    track = select_track(params.tracks, 0)
    return RacingEnv(cfg), params, track, baseline_params_for(params.car), refs[0].lap_time_s


def test_zero_tuning_keeps_the_reference_profile_and_gains(oval):
    env, params, track, base, _ = oval
    tr, bp = tuning.apply_tuning(track, base, tuning.untuned(6), env.config.car_half_width)
    np.testing.assert_allclose(tr.ref_speed, track.ref_speed, rtol=1e-6)
    np.testing.assert_allclose(tr.ref_offset, track.ref_offset, atol=1e-6)
    for g in tuning.GAINS:
        assert float(getattr(bp, g)) == pytest.approx(getattr(base, g))
    # The tuned driver aims at the full reference speed and may use the track up to the clean-lap limit.
    assert bp.speed_margin == 1.0 and bp.edge_margin == -env.config.car_half_width


def test_knot_profile_interpolates_periodically_between_knots():
    prof = np.asarray(tuning._knot_profile(jnp.array([0.0, 1.0, 2.0, 3.0]), 8))
    np.testing.assert_allclose(prof, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 1.5])


def test_score_is_the_flying_lap_the_rollout_drives(oval):
    env, params, track, base, limit = oval
    tun = tuning.DriverTuning(jnp.full((8,), -0.1), jnp.zeros((8,)), jnp.zeros((4,)))  # 90% pace: clean
    score, lap = tuning.score(env, params, track, base, tun, tuning.drive_steps(limit, env.config.dt))
    traj = rollout(env, params, tuning.tuned_policy(env, track, base, tun), jax.random.PRNGKey(0),
                   tuning.drive_steps(limit, env.config.dt))
    laps = traj["lap_time"][traj["lap_completed"].astype(bool)]
    assert float(score) == pytest.approx(float(lap))
    assert float(lap) == pytest.approx(float(laps[1]), abs=1e-3)
    assert lap_metrics(traj)["off_track_steps"] == 0
    assert limit < float(lap) < 1.2 * limit


def test_a_driver_too_fast_for_the_corners_fails_and_is_ranked_by_distance(oval):
    env, params, track, base, limit = oval
    steps = tuning.drive_steps(limit, env.config.dt)
    fast = tuning.DriverTuning(jnp.full((8,), 0.5), jnp.zeros((8,)), jnp.zeros((4,)))
    faster = tuning.DriverTuning(jnp.full((8,), 1.0), jnp.zeros((8,)), jnp.zeros((4,)))
    s_fast, lap = tuning.score(env, params, track, base, fast, steps)
    s_faster, _ = tuning.score(env, params, track, base, faster, steps)
    assert np.isnan(float(lap))
    assert tuning.FAIL_SCORE - tuning.LAPS < float(s_fast) < tuning.FAIL_SCORE
    assert float(s_faster) <= tuning.FAIL_SCORE


def test_tune_starts_from_a_clean_lap_and_improves_on_it(oval):
    env, params, track, base, limit = oval
    steps = tuning.drive_steps(limit, env.config.dt)
    start_score, start_lap = tuning.score(env, params, track, base, tuning.starting_point(6, base), steps)
    assert float(start_score) == pytest.approx(float(start_lap))  # clean
    seen = []
    tun, history = tuning.tune(env, params, track, base, limit, knots=6, population=24, generations=4, seed=1,
                               on_generation=lambda g, b: seen.append((g, b)))
    assert [g for g, _ in seen] == [0, 1, 2, 3] and [b for _, b in seen] == history
    assert all(b <= a for a, b in zip(history, history[1:]))
    assert history[-1] < float(start_score) - 0.1
    # Scored again alone rather than vmapped: the same lap up to float rounding.
    assert float(tuning.score(env, params, track, base, tun, steps)[0]) == pytest.approx(history[-1], abs=2e-3)


def test_a_robust_score_is_the_worst_over_the_drawn_cars_and_a_robust_tune_laps_them_all(oval):
    env, params, track, base, limit = oval
    steps = tuning.drive_steps(limit, env.config.dt)
    one_car = jax.jit(lambda tun, sp, k: tuning.score(env, params.replace(car_spread=sp), track, base, tun, steps, k)[0])

    def each_car(tun, cars, spread, seed):  # robust_score's cars, driven one by one
        keys = jnp.concatenate([jax.random.PRNGKey(0)[None], jax.random.split(jax.random.PRNGKey(seed + 1), cars)])
        return [float(one_car(tun, jnp.float32(sp), k)) for sp, k in zip([0.0] + [spread] * cars, keys)]

    # Cars far from the nominal one (30% on every parameter): the plan for the nominal car laps it and
    # fails one of them; that is what a robust score catches.
    scores = each_car(tuning.starting_point(6, base), 6, 0.3, 0)
    assert tuning.is_lap_time(scores[0]) and not all(tuning.is_lap_time(v) for v in scores)
    # A robust tune's result laps the nominal car and each drawn one; its score is the slowest of them.
    tun, history = tuning.tune(env, params, track, base, limit, knots=6, population=8, generations=1, seed=1,
                               robust_cars=2, robust_spread=0.05)
    scores = each_car(tun, 2, 0.05, 1)
    assert all(tuning.is_lap_time(v) for v in scores) and len(set(scores)) == 3  # three different cars
    assert max(scores) == pytest.approx(history[-1], abs=2e-3)


def test_a_tuning_of_another_track_is_refused(tmp_path):
    path = tuning.save_tuning(tmp_path / "t.json", tuning.untuned(4), {"track_length_m": 1000.0})
    assert tuning.load_tuning(path, track_length_m=1005.0).knots == 4
    with pytest.raises(ValueError, match="tuned on a track of 1000 m, this one is 1200 m.*--tune"):
        tuning.load_tuning(path, track_length_m=1200.0)


def test_a_tuning_of_another_reference_line_is_refused(tmp_path):
    # its line is a shift from the reference line: on another line it drives somewhere else
    path = tuning.save_tuning(tmp_path / "t.json", tuning.untuned(4), {"track_length_m": 1000.0, "reference": "time"})
    assert tuning.load_tuning(path, 1000.0, "time").knots == 4
    with pytest.raises(ValueError, match="tuned on the time reference line, this run follows the curvature line"):
        tuning.load_tuning(path, 1000.0, "curvature")


def test_tuning_round_trips_through_json_and_bad_files_are_named(tmp_path):
    tun = tuning.DriverTuning(jnp.array([0.1, -0.2, 0.0]), jnp.array([1.0, 0.0, -0.5]), jnp.arange(4.0) / 10)
    path = tuning.save_tuning(tmp_path / "t.json", tun, {"track": "oval"})
    back = tuning.load_tuning(path)
    np.testing.assert_allclose(back.to_vector(), tun.to_vector(), rtol=1e-6)
    assert back.knots == 3 and json.loads(path.read_text())["track"] == "oval"

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"speed_log": [0.0, 0.1], "line_shift": [0.0]}))
    with pytest.raises(ValueError, match="bad.json.*gain_log"):
        tuning.load_tuning(bad)
    bad.write_text(json.dumps({"speed_log": [0.0, 0.1], "line_shift": [0.0],
                               "gain_log": {g: 0.0 for g in tuning.GAINS}}))
    with pytest.raises(ValueError, match="same length"):
        tuning.load_tuning(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="drive_baseline.py --tune"):
        tuning.load_tuning(bad)


def test_scoring_needs_an_env_that_starts_on_the_line(oval):
    _, params, track, base, limit = oval
    with pytest.raises(ValueError, match="start='line'"):
        tuning.score(RacingEnv(EnvConfig()), params, track, base, tuning.untuned(4), 10)


def _widest_past_left_edge(env, params, track, base, tun, limit) -> float:
    """How far past the left edge (m, + outside) the car's centre gets, driving ``tun`` on ``env``, once
    past its first third (the move over from the centre line overshoots)."""
    from surrogate.track import interp, project_global

    traj = rollout(env, params, tuning.tuned_policy(env, track, base, tun), jax.random.PRNGKey(0),
                   tuning.drive_steps(limit, env.config.dt) // 2)
    pos = jax.vmap(lambda x, y: project_global(track, x, y, 0.0))(jnp.asarray(traj["x"]), jnp.asarray(traj["y"]))
    past = pos.lateral - interp(track, track.w_left, pos.s)
    return float(jnp.max(past[past.shape[0] // 3:]))


def test_a_tuning_on_narrowed_edges_keeps_its_margin_when_driven_on_the_real_ones(oval, tmp_path):
    import dataclasses

    env, params, track, base, limit = oval
    narrow = RacingEnv(dataclasses.replace(env.config, edge_margin=1.0))
    # Tuned on the narrowed track, the tuning says so and keeps saying so through its file.
    tun, _ = tuning.tune(narrow, params, track, base, limit, knots=6, population=8, generations=1, seed=1)
    assert tun.edge_margin == 1.0
    back = tuning.load_tuning(tuning.save_tuning(tmp_path / "t.json", tun))
    assert back.edge_margin == 1.0 and tuning.load_tuning(tuning.save_tuning(tmp_path / "u.json", tuning.untuned(4))).edge_margin == 0.0
    # A line shifted far to the left, at 80% pace: the tuning of the real edges runs the car's centre
    # out to the clean-lap limit (0.9 m past the edge) and beyond; the same tuning of a 1 m margin
    # aims 0.1 m inside the edge and keeps near it, driven on the real edges (env) all the same.
    k = 6
    wide = tuning.DriverTuning(jnp.full((k,), np.log(0.8)), jnp.full((k,), 20.0), jnp.zeros((len(tuning.GAINS),)))
    real_edges = _widest_past_left_edge(env, params, track, base, wide, limit)
    kept = _widest_past_left_edge(env, params, track, base, wide.replace(edge_margin=1.0), limit)
    assert real_edges > 0.6 and kept < 0.2, (real_edges, kept)
    assert tuning.apply_tuning(track, base, back, env.config.car_half_width)[1].edge_margin == pytest.approx(0.1)
    bad = json.loads((tmp_path / "t.json").read_text()) | {"edge_margin": -1.0}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="bad.json: edge_margin -1.0 m"):
        tuning.load_tuning(tmp_path / "bad.json")
