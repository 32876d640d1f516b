import json
import os

import numpy as np
import pytest

from racerl_jax import run_log


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_json_lines_appends_one_line_per_record_and_a_reopened_file_keeps_them(tmp_path):
    path = tmp_path / "log.jsonl"
    with run_log.JsonLines(path) as f:
        f.append({"a": 1})
        f.append({"b": [1.5, None]})
    with run_log.JsonLines(path) as f:
        f.append({"c": "x"})
    assert _lines(path) == [{"a": 1}, {"b": [1.5, None]}, {"c": "x"}]


def test_json_lines_after_a_cut_last_line_starts_a_fresh_line_so_only_the_cut_record_is_lost(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_bytes(b'{"a":1}\n{"b":')  # a kill -9 in the middle of the second write
    with run_log.JsonLines(path) as f:
        f.append({"c": 3})
    lines = path.read_bytes().split(b"\n")
    assert lines[0] == b'{"a":1}' and lines[1] == b'{"b":' and json.loads(lines[2]) == {"c": 3}


def test_json_lines_refuses_nan_and_writing_after_close(tmp_path):
    f = run_log.JsonLines(tmp_path / "log.jsonl")
    with pytest.raises(ValueError):
        f.append({"x": float("nan")})
    f.close()
    with pytest.raises(ValueError, match="closed"):
        f.append({"x": 1})


def test_numbers_round_and_turn_non_finite_values_into_null():
    assert run_log.numbers([1.23456, np.nan, np.inf, -2.0]) == [1.235, None, None, -2.0]
    assert run_log.number(np.float32(0.5)) == 0.5 and run_log.number(np.nan) is None


def test_write_json_atomic_replaces_the_file_without_leaving_the_temporary(tmp_path):
    path = tmp_path / "t.json"
    run_log.write_json_atomic(path, {"v": 1})
    run_log.write_json_atomic(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 2}
    assert os.listdir(tmp_path) == ["t.json"]


def _traj(n=10, laps=(4,), done_at=None):
    lap = np.zeros(n, bool)
    lap[list(laps)] = True
    done = np.zeros(n, bool)
    if done_at is not None:
        done[done_at] = True
    return dict(x=np.arange(n, dtype=float), y=np.zeros(n), speed=np.full(n, 20.0),
                action=np.tile([[0.1, 0.8, 0.0]], (n, 1)), lap_completed=lap,
                lap_time=np.where(lap, 12.5, np.nan), lap_clean=lap, done=done)


def test_eval_lap_record_keeps_the_first_episode_its_controls_and_its_completed_laps():
    rec = run_log.eval_lap_record(_traj(10, laps=(4, 8), done_at=6), env_steps=1000, wall_s=12.0, dt=0.05,
                                  lap_s=12.5)
    assert len(rec["x"]) == 7 and rec["ended"]  # up to and including the step that ended the episode
    assert rec["steer"] == [0.1] * 7 and rec["throttle"] == [0.8] * 7
    assert rec["lap_end"] == [4] and rec["lap_time"] == [12.5] and rec["lap_clean"] == [True]
    assert rec["env_steps"] == 1000 and rec["dt"] == 0.05
    json.dumps(rec, allow_nan=False)


def test_eval_lap_log_appends_one_line_per_evaluation(tmp_path):
    log = run_log.EvalLapLog(tmp_path, dt=0.05)
    log.write(_traj(), 100, 1.0, float("nan"))
    log.write(_traj(), 200, 2.0, 12.5)
    log.close()
    recs = _lines(tmp_path / run_log.EVAL_LAPS_FILE)
    assert [r["env_steps"] for r in recs] == [100, 200] and recs[0]["lap_s"] is None
    assert not (tmp_path / run_log.TRACK_FILE).exists()


def test_step_log_numbers_episodes_and_keeps_pose_safety_and_end_reason(tmp_path):
    log = run_log.StepLog(tmp_path)
    frame = {"t": 1.0, "x": 5.0, "y": -1.0, "speed": 12.0, "episode": 3}
    log.write(np.array([0.5, 1.0]), np.array([0.2, 1.0, 0.0]), 3.25, 0.1, False,
              {"safety": ("rate_limited",), "end_reason": None}, frame)
    log.write(np.array([0.5, 1.0]), np.array([0.2, 1.0, 0.0]), None, 0.0, True, {"end_reason": "off_track"}, frame)
    log.write(np.array([0.0, 0.0]), np.array([0.0, 0.0, 0.0]), 1.0, 0.0, False)
    log.new_episode()
    log.write(np.array([0.0, 0.0]), np.array([0.0, 0.0, 0.0]), 1.0, 0.0, False)
    log.close()
    a, b, c, d = _lines(tmp_path / run_log.STEPS_FILE)
    assert a["ep"] == 0 and a["safety"] == ["rate_limited"] and a["value"] == 3.25 and a["x"] == 5.0
    assert a["policy"] == [0.5, 1.0] and a["applied"] == [0.2, 1.0, 0.0] and "end" not in a
    assert b["ep"] == 0 and b["end"] == "off_track" and b["value"] is None
    assert c["ep"] == 1 and "x" not in c  # a new episode after the one that ended
    assert d["ep"] == 2


def _small_track(n=64):
    from surrogate.track import make_track
    from surrogate.track_io import load_track

    return make_track(load_track("oval"), n_points=n, ref_offset=np.full(n, 1.0), ref_speed=np.full(n, 30.0))


def test_track_file_holds_the_centre_line_widths_and_the_reference_line_beside_it(tmp_path):
    track = _small_track()
    run_log.write_track(tmp_path, track, "oval", 35.2)
    t = json.loads((tmp_path / run_log.TRACK_FILE).read_text())
    assert t["name"] == "oval" and t["closed"] and t["limit_s"] == 35.2 and len(t["x"]) == 64
    # the reference line runs 1 m left of the centre line (ref_offset = +1)
    gap = np.hypot(np.subtract(t["ref_x"], t["x"]), np.subtract(t["ref_y"], t["y"]))
    np.testing.assert_allclose(gap, 1.0, atol=2e-3)
    assert t["ref_speed"] == [30.0] * 64 and t["length"] == pytest.approx(float(track.length), abs=1e-3)


def test_lap_evaluator_writes_every_evaluation_and_the_track_for_the_dashboard(tmp_path):
    from types import SimpleNamespace

    from racerl_jax import train_racing as tr

    n = 40  # a drive that never completes a lap: no best lap, so no agent checkpoint is needed
    traj = dict(x=np.linspace(0.0, 50.0, n), y=np.zeros(n), speed=np.full(n, 25.0), action=np.zeros((n, 3)),
                reward=np.ones(n), lap_completed=np.zeros(n, bool), lap_time=np.full(n, np.nan),
                lap_clean=np.zeros(n, bool), off_track=np.zeros(n, bool), ref_deviation=np.zeros(n),
                done=np.zeros(n, bool))
    evaluator = tr.LapEvaluator(lambda agent: traj, 35.0, 0.05, tmp_path, 0.0, _small_track(), "oval")
    for steps in (100, 200):
        evaluator(SimpleNamespace(env_steps=np.int32(steps)))
    recs = _lines(tmp_path / run_log.EVAL_LAPS_FILE)
    assert [r["env_steps"] for r in recs] == [100, 200] and recs[1]["x"][-1] == 50.0 and recs[1]["lap_s"] is None
    assert json.loads((tmp_path / run_log.TRACK_FILE).read_text())["limit_s"] == 35.0


def test_step_log_of_a_resumed_run_numbers_its_episodes_after_the_last_one_in_the_file(tmp_path):
    log = run_log.StepLog(tmp_path)
    for done in (False, True, False):
        log.write(np.zeros(2), np.zeros(3), None, 0.0, done)
    log.close()
    with open(tmp_path / run_log.STEPS_FILE, "ab") as f:
        f.write(b'{"w": 1, "ep": 7')  # killed mid-write
    log = run_log.StepLog(tmp_path)
    log.write(np.zeros(2), np.zeros(3), None, 0.0, False)
    log.close()
    assert [r["ep"] for r in _lines_skipping_cut(tmp_path / run_log.STEPS_FILE)] == [0, 0, 1, 2]


def _lines_skipping_cut(path):
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def test_host_loop_records_every_step_with_the_policys_action_and_the_critics_value(tmp_path):
    import gymnasium as gym
    import jax

    from racerl_jax import crossq, train_loop
    from racerl_jax.crossq import CrossQConfig

    config = CrossQConfig.cpu(critic_hidden=(8, 8), actor_hidden=(8, 8), batch_size=4, learning_starts=10,
                              buffer_size=100)
    log = run_log.StepLog(tmp_path)
    # no updates: what is recorded, not what is learned, is under test (and compiling them is slow)
    loop = train_loop.HostLoop(gym.make("Pendulum-v1", max_episode_steps=20), config, seed=0, updates_per_step=0,
                               step_log=log)
    # jitted: eagerly, its few hundred small ops are compiled one by one (seconds each on a busy CPU)
    agent = jax.jit(crossq.init_agent, static_argnums=(1, 2, 3))(jax.random.PRNGKey(0), loop.obs_size,
                                                                 loop.action_size, config)
    agent, _, key, _ = loop.run(agent, loop.init_buffer(), jax.random.PRNGKey(1), 30)
    log.close()
    recs = _lines(tmp_path / run_log.STEPS_FILE)
    assert len(recs) == 30
    assert all(r["value"] is None for r in recs[:10]) and all(isinstance(r["value"], float) for r in recs[10:])
    assert [r["ep"] for r in (recs[19], recs[20])] == [0, 1] and recs[19]["end"] == "done"
    assert all(r["policy"] == r["applied"] and -2.0 <= r["policy"][0] <= 2.0 for r in recs)  # no safety layer here
    # the value is the critics' mean for the action the policy took (the same key gives the same action)
    obs = np.zeros((1, loop.obs_size), np.float32)
    a, q = train_loop.act_and_value(agent, obs, key)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(crossq.act(agent, obs, key, deterministic=False)))
    qs, _ = crossq.apply_critics(config, agent.critic_params, agent.critic_stats, obs, a, train=False)
    np.testing.assert_allclose(np.asarray(q), np.asarray(qs).mean(axis=0), rtol=1e-6)
