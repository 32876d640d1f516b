"""train_crossq.py --tracks / --eval-tracks: one policy over several tracks, evaluated track by track."""
import dataclasses
import json
import re
import shutil

import jax
import numpy as np
import pytest

from racerl_jax import crossq
from racerl_jax import train_racing as tr
from racerl_jax.logs import read_metrics
from racerl_jax.racing_setup import EvalTrack, load_entries, random_tracks
from racerl_jax.saved_agent import load_agent
from surrogate.track import make_track
from surrogate.track_io import BUNDLED_DIR, load_track
from tests.racerl_jax.test_train_racing import TINY

MULTI_LINE = re.compile(r"^first_clean_lap_min=(\S+) best_lap_s=(\S+) limit_s=(\S+) gap_pct=(\S+) "
                        r"tracks=(\d+) mean_gap_pct=(\S+) unseen_mean_gap_pct=(\S+)$")
# TINY without its --track; every run here trains on two tracks and evaluates three (one compilation).
TINY_TRACKS = [a for i, a in enumerate(TINY) if a != "--track" and TINY[i - 1] != "--track"]


def _folder(tmp_path, *names):
    folder = tmp_path / "mine"
    folder.mkdir()
    for i, name in enumerate(names):
        shutil.copy(BUNDLED_DIR / f"{name}.csv", folder / f"{chr(ord('b') - i)}_{name}.csv")
    (folder / "notes.txt").write_text("not a track")
    return folder


# ----------------------------------------------------------------------------- entries


def test_every_entry_form_loads_and_a_folder_is_listed_in_the_saved_config(tmp_path):
    folder = _folder(tmp_path, "figure8", "oval")  # b_figure8.csv, a_oval.csv
    csv = tmp_path / "my_track.csv"
    shutil.copy(BUNDLED_DIR / "technical.csv", csv)
    cfg = tr.parse_args(["--tracks", f"flowing, {csv} ,{folder},random:2", "--eval-tracks", "random:1",
                         "--run-dir", str(tmp_path / "run")])
    assert cfg.tracks == ("flowing", str(csv), str(folder), "random:2") and cfg.eval_tracks == ("random:1",)
    resolved = tr.resolve(cfg)
    listed = (str(folder / "a_oval.csv"), str(folder / "b_figure8.csv"))  # sorted, the .txt left out
    assert resolved.tracks == ("flowing", str(csv), *listed, "random:2") and resolved.track == ""
    assert resolved.run_dir == str(tmp_path / "run")
    assert tr.TrainConfig.from_dict(json.loads(json.dumps(resolved.to_dict()))) == resolved
    assert resolved.run_settings()["tracks"] == list(resolved.tracks) and "eval_tracks" not in resolved.run_settings()
    names = [t.name for t in load_entries(resolved.tracks, seed=0)]
    assert names == ["flowing", "my_track", "a_oval", "b_figure8", "random-0", "random-1"]
    # unresolved (a folder still a folder), the same tracks
    assert [t.name for t in load_entries(cfg.tracks, seed=0)] == names
    assert [t.name for t in load_entries(cfg.eval_tracks, seed=0, stream=1)] == ["random-eval-0"]
    assert tr.resolve(tr.TrainConfig(tracks=("oval", "technical"))).run_dir.startswith("runs/crossq-tracks-")
    assert tr.parse_args(["--tracks", "oval,random:3", "--tracks-refresh-env-steps", "5000"]).tracks_refresh_env_steps == 5000


def test_a_resume_keeps_the_track_set_but_may_change_the_unseen_tracks(tmp_path):
    folder = _folder(tmp_path, "figure8", "oval")
    cfg = tr.resolve(tr.TrainConfig(tracks=(str(folder), "random:2"), eval_tracks=("flowing",), run_dir=str(tmp_path / "run"),
                                    resume=True))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"command": cfg.run_settings()}))
    tr.prepare_run_dir(tr.resolve(tr.TrainConfig(tracks=(str(folder), "random:2"), eval_tracks=("technical", "random:1"),
                                                 run_dir=str(tmp_path / "run"), resume=True)), tmp_path / "run")
    shutil.copy(BUNDLED_DIR / "technical.csv", folder / "c_technical.csv")  # the folder gained a track since
    with pytest.raises(SystemExit, match=r"these settings differ .*: tracks \[.*\] -> \[.*c_technical.csv"):
        tr.prepare_run_dir(tr.resolve(dataclasses.replace(cfg, tracks=(str(folder), "random:2"))), tmp_path / "run")
    with pytest.raises(SystemExit, match=r"tracks_refresh_env_steps 0 -> 100"):
        tr.prepare_run_dir(dataclasses.replace(cfg, tracks_refresh_env_steps=100), tmp_path / "run")


@pytest.mark.parametrize("argv, reason", [
    (["--tracks", "oval,random:0"], r"'random:0': expected random:N with N a whole number >= 1"),
    (["--tracks", "random:x"], r"'random:x': expected random:N"),
    (["--eval-tracks", "random:"], r"--eval-tracks 'random:': expected random:N"),
    (["--tracks", ","], r"expected comma-separated tracks"),
    (["--tracks", "oval,technical", "--track", "flowing"], r"give --tracks or --track, not both: put flowing into --tracks \(flowing,oval,technical\)"),
    (["--tracks", "oval", "--surrogate", "fit.json"], r"give --tracks or --surrogate, not both.*drop --tracks"),
    (["--backend", "real", "--tracks", "oval"], r"--backend real trains on the game's own track: drop --tracks"),
    (["--tracks", "oval,technical", "--tracks-refresh-env-steps", "1000"], r"only random:N entries of --tracks are drawn afresh"),
    (["--tracks", "random:2", "--tracks-refresh-env-steps", "-1"], r"must be >= 0"),
])  # fmt: skip
def test_bad_track_entries_are_refused_with_the_fix(argv, reason, capsys):
    with pytest.raises(SystemExit) as e:
        tr.parse_args(argv)
    assert re.search(reason, str(e.value) + capsys.readouterr().err), (e.value, reason)


def test_missing_files_empty_folders_repeats_and_trained_unseen_tracks_are_refused_naming_them(tmp_path):
    (tmp_path / "empty").mkdir()
    cases = [
        (dict(tracks=("oval", str(tmp_path / "nope.csv"))), r"--tracks .*nope.csv: .*file not found.*or random:N"),
        (dict(tracks=("oval", "monza")), r"--tracks monza: no track named 'monza'"),
        (dict(tracks=("oval", str(tmp_path / "empty"))), r"the folder holds no \*.csv track files"),
        (dict(tracks=("oval", str(BUNDLED_DIR / "oval.csv"))), r"oval.csv is given twice"),
        (dict(tracks=("oval", "technical"), eval_tracks=("technical",)), r"--eval-tracks technical is also a training track"),
        (dict(track="oval", eval_tracks=(str(BUNDLED_DIR),)), r"--eval-tracks .*oval.csv is also a training track"),
    ]
    for fields, reason in cases:
        with pytest.raises(SystemExit, match=reason):
            tr.resolve(tr.TrainConfig(**fields))
    tr.resolve(tr.TrainConfig(track="oval", eval_tracks=("technical",)))  # one training track and an unseen one


def test_random_tracks_are_the_same_for_a_seed_and_differ_across_seeds_draws_and_unseen():
    def same(a, b):
        return len(a) == len(b) and all(x.name == y.name and np.array_equal(x.x, y.x) and np.array_equal(x.w_left, y.w_left)
                                        for x, y in zip(a, b))

    first = random_tracks(seed=3, n=2)
    assert same(first, random_tracks(seed=3, n=2)) and [t.name for t in first] == ["random-0", "random-1"]
    assert not np.array_equal(first[0].x[:50], first[1].x[:50])  # two different tracks
    for other in (random_tracks(seed=4, n=2), random_tracks(seed=3, n=2, generation=1), random_tracks(seed=3, n=2, stream=1)):
        assert not any(np.array_equal(a.x[:50], b.x[:50]) for a, b in zip(first, other))
    # a second random:N entry goes on counting from the first one's N: no track twice
    both = load_entries(["random:1", "oval", "random:2"], seed=3)
    assert [t.name for t in both] == ["random-0", "oval", "random-1", "random-2"]
    assert same(both[:1] + both[2:3], first) and same(both[3:], random_tracks(seed=3, n=1, first=2))
    assert same(load_entries(["random:2"], seed=3), first)


def test_refresh_draws_new_random_tracks_and_keeps_the_others():
    cfg = tr.resolve(tr.TrainConfig(tracks=("oval", "random:1"), tracks_refresh_env_steps=1000, model="kinematic",
                                    eval_max_steps=150))
    setup = tr.build_setup(cfg)
    assert setup.multi and [t.name for t in setup.eval_tracks] == ["oval", "random-0"]
    assert setup.params.tracks.x.shape[0] == 2 and setup.refresh(0) is setup.params
    fresh = setup.refresh(1)
    x0, x1 = np.asarray(setup.params.tracks.x), np.asarray(fresh.tracks.x)
    np.testing.assert_array_equal(x0[0], x1[0])  # the oval stays
    assert not np.allclose(x0[1], x1[1])  # the random track is another
    assert float(fresh.tracks.length[1]) != pytest.approx(float(setup.params.tracks.length[1]))
    # the training params are the same but for the tracks (car, randomisation, reward)
    assert jax.tree.structure(fresh) == jax.tree.structure(setup.params)


# ----------------------------------------------------------------------------- scoring several tracks


def _traj(lap_s: float | None, clean: bool = True, steps: int = 2000, dt: float = 0.05) -> dict:
    """A trajectory of ``steps`` steps with one lap of ``lap_s`` seconds (None: no lap)."""
    lap = np.zeros(steps, bool)
    if lap_s is not None:
        lap[int(round(lap_s / dt)) - 1] = True
    return dict(x=np.linspace(0.0, 1.0, steps), y=np.zeros(steps), speed=np.full(steps, 30.0), action=np.zeros((steps, 3)),
                reward=np.ones(steps), lap_completed=lap, lap_time=np.where(lap, lap_s or 0.0, np.nan),
                lap_clean=lap & clean, off_track=np.zeros(steps, bool), ref_deviation=np.zeros(steps),
                done=np.zeros(steps, bool))


def _stacked(*trajs):
    return {k: np.stack([t[k] for t in trajs]) for k in trajs[0]}


def test_several_tracks_are_scored_each_and_the_best_mean_over_training_tracks_keeps_the_agent(tmp_path):
    track = make_track(load_track("oval"), n_points=64)
    tracks = [EvalTrack("oval", track, 35.0, False), EvalTrack("technical", track, 70.0, False),
              EvalTrack("flowing", track, 75.0, True)]
    config = crossq.CrossQConfig.cpu(critic_hidden=(8, 8), actor_hidden=(8, 8))
    from racerl_jax.checkpoint import write_config

    write_config(tmp_path, {"crossq": config.to_dict(), "command": tr.TrainConfig().run_settings()})
    agents = [crossq.init_agent(jax.random.PRNGKey(i), tr.ObsConfig().size, 2, config).replace(env_steps=np.int32(100 * (i + 1)))
              for i in range(5)]  # fmt: skip
    evals = iter([
        (_traj(40.0), _traj(80.0, clean=False), _traj(None)),  # technical not clean: no best yet
        (_traj(38.5), _traj(77.0), _traj(90.0)),  # every training track clean: gaps 10% and 10%: the best
        (_traj(36.75), _traj(84.0), _traj(82.5)),  # oval's best lap (5%), but the mean (12.5%) is worse
        (_traj(38.5), _traj(None), _traj(75.0)),  # a perfect unseen lap does not choose the agent
        (_traj(36.75), _traj(73.5), _traj(None)),  # 5% and 5%: the new best
    ])
    evaluator = tr.MultiTrackEvaluator(lambda agent: _stacked(*next(evals)), tracks, 0.05, tmp_path, 0.0)
    eval_fn = tr.keeping_best(evaluator, tmp_path)
    s = [eval_fn(a) for a in agents[:4]]
    assert [x["clean_tracks"] for x in s] == [1.0, 2.0, 2.0, 1.0]
    assert np.isnan(s[0]["mean_gap_pct"]) and np.isnan(s[0]["lap_s"]) and s[0]["lap_s/oval"] == pytest.approx(40.0, abs=0.05)
    assert s[1]["mean_gap_pct"] == pytest.approx(10.0, abs=0.2) and s[1]["lap_s"] == pytest.approx(115.5, abs=0.1)
    assert s[1]["limit_s"] == 105.0 and s[1]["gap_pct"] == pytest.approx(10.0, abs=0.2)
    assert s[1]["unseen_mean_gap_pct"] == pytest.approx(20.0, abs=0.2) and s[1]["unseen_limit_s"] == 75.0
    assert s[2]["gap_pct/oval"] == pytest.approx(5.0, abs=0.2) and s[2]["best_lap_s/oval"] == pytest.approx(36.75, abs=0.05)
    assert s[2]["mean_gap_pct"] == pytest.approx(12.5, abs=0.2) and s[2]["best_mean_gap_pct"] == pytest.approx(10.0, abs=0.2)
    assert s[3]["gap_pct/flowing"] == pytest.approx(0.0, abs=0.2) and np.isnan(s[3]["mean_gap_pct"])
    assert s[3]["best_lap_s"] == pytest.approx(115.5, abs=0.1)
    assert int(load_agent(tmp_path / tr.BEST_AGENT_DIR).agent.env_steps) == 200  # the second evaluation's agent
    best = json.loads((tmp_path / tr.BEST_TRACKS_FILE).read_text())
    assert best["env_steps"] == 200 and best["laps"]["technical"] == pytest.approx(77.0, abs=0.05)
    assert best["unseen_mean_gap_pct"] == pytest.approx(20.0, abs=0.2)
    assert all((tmp_path / tr.TRACKS_DIR / name / "eval_laps.jsonl").is_file() for name in ("oval", "technical", "flowing"))

    # a resumed run goes on from the best so far (its mean and each track's best lap)
    again = tr.MultiTrackEvaluator(lambda agent: _stacked(*next(evals)), tracks, 0.05, tmp_path, 0.0)
    assert again.best_mean_gap_pct == pytest.approx(10.0, abs=0.2) and again.first_clean_lap_min == evaluator.first_clean_lap_min
    assert again.per[0].best_lap_s == pytest.approx(36.75, abs=0.05)
    s4 = tr.keeping_best(again, tmp_path)(agents[4])
    assert again.improved and s4["best_mean_gap_pct"] == pytest.approx(5.0, abs=0.2)
    assert int(load_agent(tmp_path / tr.BEST_AGENT_DIR).agent.env_steps) == 500
    summary = tr._tracks_summary(again)
    assert (summary["tracks"], summary["unseen_tracks"]) == (2, 1) and np.isnan(summary["unseen_mean_gap_pct"])
    assert summary["per_track"]["technical"]["best_agent_lap_s"] == pytest.approx(73.5, abs=0.05)
    assert summary["per_track"]["flowing"]["unseen"] and not summary["per_track"]["oval"]["unseen"]
    line = tr.summary_line({"first_clean_lap_min": 1.0, "best_lap_s": 110.25, "limit_s": 105.0, "gap_pct": 5.0, **summary})
    assert MULTI_LINE.match(line) and line.endswith("tracks=2 mean_gap_pct=5.0 unseen_mean_gap_pct=nan")


# ----------------------------------------------------------------------------- end to end


def test_tiny_run_on_two_tracks_evaluates_each_and_an_unseen_one_and_random_tracks_are_drawn_afresh(tmp_path, capsys):
    # One test for both runs: they share the compiled training chunk (two tracks) and evaluation (three).
    run_dir = tmp_path / "run"
    summary = tr.main([*TINY_TRACKS, "--tracks", "oval,technical", "--eval-tracks", "flowing", "--run-dir", str(run_dir),
                       "--total-env-steps", "300", "--car-spread", "0.1"])
    out = capsys.readouterr().out.strip().splitlines()
    line = out[-1]
    assert any(x.startswith("final evaluation by track") and "flowing (unseen)" in x for x in out)
    m = MULTI_LINE.match(line)
    assert m, line
    assert int(m.group(5)) == 2 and float(m.group(3)) == pytest.approx(summary["limit_s"], abs=0.01)
    limits = {name: t["limit_s"] for name, t in summary["per_track"].items()}
    assert list(limits) == ["oval", "technical", "flowing"] and summary["per_track"]["flowing"]["unseen"]
    assert 20 < limits["oval"] < 60 and limits["technical"] > limits["oval"]
    assert summary["limit_s"] == pytest.approx(limits["oval"] + limits["technical"])
    config = json.loads((run_dir / "config.json").read_text())["command"]
    assert config["tracks"] == ["oval", "technical"] and config["track"] == "" and config["car_spread"] == 0.1

    evals = [r for r in read_metrics(run_dir / "metrics.jsonl") if "eval_limit_s" in r]
    assert [r["env_steps"] for r in evals] == [200, 300]  # the periodic one and the final one
    for r in evals:
        for name, limit in limits.items():
            assert f"eval_gap_pct/{name}" in r and r[f"eval_distance_m/{name}"] is not None
        assert "eval_mean_gap_pct" in r and "eval_unseen_mean_gap_pct" in r
        assert r["eval_limit_s"] == pytest.approx(limits["oval"] + limits["technical"], abs=0.01)
        assert r["eval_unseen_limit_s"] == pytest.approx(limits["flowing"], abs=0.01)
    # each track was driven alone, from its own start line (all three start at the origin; the
    # reference line runs elsewhere on each, so the deviation from it differs)
    deviations = {r[f"eval_ref_deviation_m/{name}"] for name in limits for r in evals[:1]}
    assert len(deviations) == 3, deviations
    for name in limits:
        t = json.loads((run_dir / tr.TRACKS_DIR / name / "track.json").read_text())
        drives = [json.loads(x) for x in (run_dir / tr.TRACKS_DIR / name / "eval_laps.jsonl").read_text().splitlines()]
        assert len(drives) == 2 and t["name"] == name and t["limit_s"] == pytest.approx(limits[name], abs=0.01)
        assert np.hypot(drives[0]["x"][0] - t["x"][0], drives[0]["y"][0] - t["y"][0]) < 1.0, name
        assert (run_dir / tr.TRACKS_DIR / name / "best_lap.png").is_file()
    for name in ("learning_curve.png", "track_gaps.png", "summary.json"):
        assert (run_dir / name).is_file(), name

    # --tracks-refresh-env-steps: the random track is drawn afresh at the first chunk past every
    # 200 env steps (chunks of 100 here), logged as tracks_draw; the training loop alone, no files.
    cfg = tr.resolve(tr.parse_args([*TINY_TRACKS, "--tracks", "oval,random:1", "--tracks-refresh-env-steps", "200",
                                    "--total-env-steps", "500", "--run-dir", str(tmp_path / "unused")]))
    setup = tr.build_setup(cfg)
    draws = []
    real_refresh = setup.refresh
    setup.refresh = lambda g: draws.append(g) or real_refresh(g)
    # At the run's matmul precision, as tr.run trains: the precision is part of what jit compiles,
    # so this reuses the run's compiled training chunk instead of compiling another.
    with jax.default_matmul_precision(None if cfg.matmul_precision == "default" else cfg.matmul_precision):
        result = tr._train_refreshing(cfg, setup, dict(progress=False))
    assert [(r["env_steps"], r["tracks_draw"]) for r in result.history] == [(100, 0), (200, 0), (300, 1), (400, 1), (500, 2)]
    assert draws == [0, 1, 2] and int(result.carry.agent.env_steps) == 500
    lengths = np.asarray(result.carry.env_state.episode.steps)
    assert np.all(lengths <= 25)  # every car started a new episode on the last draw, one chunk (25 steps a car) ago
