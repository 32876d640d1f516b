import json
import os

import numpy as np
import pytest

from racerl_jax.dashboard import synthetic
from racerl_jax.dashboard.data import Run


@pytest.fixture(scope="module")
def oval():
    return synthetic.Oval()


def _listing(path):
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*"))


def test_a_run_dir_that_does_not_exist_yet_is_empty_and_fills_in_when_written(tmp_path, oval):
    run = Run(tmp_path / "later")
    assert run.refresh() == set() and run.kind == "not there yet" and run.live(100) is None
    rec = synthetic.recording(tmp_path / "later", 10, oval)
    assert {"live", "track"} <= run.refresh()
    assert run.kind == "recording" and len(run.steps) == 10
    rec.frame(synthetic.frame(oval, 10))
    assert run.refresh() == {"live"} and len(run.live(100)) == 11
    assert run.refresh() == set()  # nothing new, nothing changed
    rec.close()


def test_recording_frames_get_lap_distance_from_the_track_and_episodes_split_the_stream(tmp_path, oval):
    rec = synthetic.recording(tmp_path / "rec", 50, oval)
    for i in range(20):
        rec.frame(synthetic.frame(oval, i, episode=1))
    rec.close()
    run = Run(tmp_path / "rec")
    run.refresh()
    assert [ep for ep, _ in run.steps.episodes] == [0, 1]
    first = run.replay(0)
    # 20 m/s at 50 Hz from the start line: 0.4 m a step along the centre line
    # (on the start line itself the nearest point may be a hair before it: a lap's length, not 0)
    dist = (first["dist"] + 1.0) % run.track.length - 1.0
    np.testing.assert_allclose(dist, 0.4 * np.arange(50), atol=0.05)
    np.testing.assert_allclose(first["t"], 0.02 * np.arange(50), atol=1e-9)
    assert len(run.live(5)) == 5 and run.replay_items() == ["episode 0", "episode 1"]


def test_training_run_gives_metrics_evaluation_laps_the_best_lap_and_the_policys_decisions(tmp_path, oval):
    steps, run_dir = synthetic.training_run(tmp_path / "train", oval, evals=2, steps=120)
    steps.close()
    run = Run(run_dir)
    assert run.refresh() >= {"metrics", "evals", "live", "track", "config"}
    assert run.kind == "training run" and len(run.metrics) == 3 and run.limit_s() == 35.0
    assert [t.label.split(":")[0] for t in run.laps] == ["eval 0 @ 10000 steps, lap 1", "eval 0 @ 10000 steps, lap 2 unfinished (time up)",
                                                         "eval 1 @ 20000 steps, lap 1", "eval 1 @ 20000 steps, lap 2 unfinished (time up)"]
    best = run.best_lap()
    assert best is run.laps[2] and best.lap_s == pytest.approx(oval.length / 32.0, abs=0.06)
    live = run.live(3000)
    assert len(live) == 120 and live.policy.shape == (120, 2)
    np.testing.assert_allclose(live.policy[:, 0], 2.0 * live["steer"], atol=2e-3)  # the safety layer halved it
    assert [r for _, r in live.events] == ["rate_limited"] * 3 and live["value"][0] == 5.0


def test_metrics_replaced_by_a_shorter_file_are_read_again_and_a_cut_last_line_waits(tmp_path, oval):
    steps, run_dir = synthetic.training_run(tmp_path / "train", oval, evals=0, steps=0)
    steps.close()
    run = Run(run_dir)
    run.refresh()
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"env_steps": 99, "critic_')
    assert "metrics" not in run.refresh() and len(run.metrics) == 3
    tmp = run_dir / "m.tmp"
    tmp.write_text(json.dumps(synthetic.metrics_row(0)) + "\n")
    os.replace(tmp, run_dir / "metrics.jsonl")
    assert "metrics" in run.refresh() and len(run.metrics) == 1


def test_the_server_side_reader_never_writes_into_the_run_dir(tmp_path, oval):
    rec = synthetic.recording(tmp_path / "rec", 30, oval)
    rec.close()
    steps, run_dir = synthetic.training_run(tmp_path / "train", oval, evals=1, steps=30)
    steps.close()
    before = _listing(tmp_path)
    for path in (tmp_path / "rec", run_dir):
        run = Run(path)
        run.refresh()
        run.live(100), run.replay(0), run.best_lap()
    assert _listing(tmp_path) == before


def test_the_fastest_lap_of_a_recording_is_found_from_start_line_to_start_line_within_an_episode(tmp_path, oval):
    lap_frames = int(oval.length / 0.4)  # 20 m/s at 50 Hz
    rec = synthetic.recording(tmp_path / "rec", 0, oval)
    for i in range(2 * lap_frames + 10):  # from the line: one whole lap, then most of a second
        rec.frame(synthetic.frame(oval, i))
    half = int(oval.length / 2 / 0.5)
    for i in range(half, half + lap_frames):  # a new, faster episode from half way: it crosses the line once
        rec.frame(synthetic.frame(oval, i, episode=1, speed=25.0))
    rec.close()
    run = Run(tmp_path / "rec")
    run.refresh()
    best = run.best_lap()
    assert best is not None and best.lap_s == pytest.approx(oval.length / 20.0, abs=0.05)
    assert len(best) == pytest.approx(lap_frames, abs=2)


def test_a_run_from_before_the_dashboard_shows_and_replays_its_best_lap_npz(tmp_path, oval):
    d = oval.data
    n = 200
    np.savez(tmp_path / "best_lap.npz", lap_s=np.float64(40.0), env_steps=np.int64(5000), x=d.x[:n] if len(d.x) >= n
             else np.resize(d.x, n), y=np.resize(d.y, n), speed=np.full(n, 30.0), action=np.zeros((n, 3)),
             ref_deviation=np.zeros(n))
    (tmp_path / "config.json").write_text("{}")
    run = Run(tmp_path)
    run.refresh()
    assert run.live(3000) is run.best_npz is run.best_lap() and run.best_lap().lap_s == 40.0
    assert run.replay_items() == ["best lap 40.00 s (best_lap.npz)"] and len(run.replay(0)) == n
