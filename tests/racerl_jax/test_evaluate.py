"""racerl_jax.evaluate (scripts/evaluate.py): a saved agent found from any of its paths and restored
with its run's settings, N laps on the surrogate (the run's env: a fitted surrogate's control period
and input delay) and on a game through the bridge, lap accounting, scores, report.json, plots and
the last line; bad agents refused with a clear error."""
import json
import math
import re
import shutil
import threading

import jax
import numpy as np
import pytest
import zmq

from bridge.games.kinematic import KinematicCarGame
from racerl_jax import evaluate as ev
from racerl_jax import laps
from racerl_jax import train_racing as tr
from racerl_jax.checkpoint import Checkpointer
from racerl_jax.saved_agent import AgentError
from surrogate.track_io import save_track

from tests.racerl_jax.conftest import game_track

LAST_LINE = re.compile(r"^clean_lap_rate=(\S+) mean_lap_s=(\S+) best_lap_s=(\S+) limit_s=(\S+) gap_pct=(\S+)$")
# The kinematic game's yaw rate follows the steering within a tick: the baseline's yaw-rate
# feedback, tuned for cars with tyre lag, oscillates there (as tests/racerl_jax/test_record_telemetry.py notes).
BASELINE = ["--baseline-param", "yaw_rate_gain=0"]


@pytest.fixture
def run_dir(kinematic_run):
    return kinematic_run


def _last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def _agrees(line: str, agent: dict) -> None:
    m = LAST_LINE.match(line)
    assert m, line
    values = [float(g) for g in m.groups()]
    for v, key, tol in zip(values, ("clean_lap_rate", "mean_lap_s", "best_lap_s", "limit_s", "gap_pct"),
                           (0.005, 0.005, 0.005, 0.005, 0.05)):
        want = agent[key] if key != "limit_s" else agent["limit_s"]
        if want is None:  # NaN in the report is null
            assert math.isnan(v), (key, line)
        else:
            assert v == pytest.approx(want, abs=tol), (key, line)


# ----------------------------------------------------------------------------- the saved agent


def test_every_agent_path_form_finds_the_runs_agent_and_a_best_agent_is_preferred(run_dir):
    by_run = ev.load_agent(run_dir)
    assert by_run.source == "checkpoint" and by_run.checkpoint == run_dir / "checkpoints" / "400"
    assert by_run.step == 400 and by_run.config.surrogate.endswith("kinematic.json")
    assert by_run.config.pedals == "combined" and by_run.agent.config.critic_hidden == (16, 16)
    for form in (run_dir / "checkpoints", run_dir / "checkpoints" / "400"):
        other = ev.load_agent(form)
        assert other.checkpoint == by_run.checkpoint
        assert jax.tree.all(jax.tree.map(np.array_equal, other.agent.actor_params, by_run.agent.actor_params))

    # The agent alone, saved as the training's LapEvaluator saves its best agent: the run dir now
    # means that one, and it restores to the same networks.
    best = run_dir.parent / "with_best"
    shutil.copytree(run_dir, best)
    with Checkpointer(best / tr.BEST_AGENT_DIR, max_to_keep=1) as ckpt:
        ckpt.save(123, by_run.agent.replace(env_steps=by_run.agent.env_steps * 0 + 123))
    for form in (best, best / tr.BEST_AGENT_DIR, best / tr.BEST_AGENT_DIR / "123"):
        got = ev.load_agent(form)
        assert got.source == "best_agent" and got.step == 123
        assert jax.tree.all(jax.tree.map(np.array_equal, got.agent.actor_params, by_run.agent.actor_params))
        assert jax.tree.all(jax.tree.map(np.array_equal, got.agent.actor_stats, by_run.agent.actor_stats))


def test_bad_agent_paths_are_refused_naming_what_to_give(run_dir, tmp_path):
    with pytest.raises(AgentError, match="no such file or directory; give a run dir") as e:
        ev.load_agent(tmp_path / "nowhere")
    assert e.value.code == 2
    with pytest.raises(AgentError, match="is a file"):
        ev.load_agent(run_dir / "config.json")
    with pytest.raises(AgentError, match="not a training run .no config.json"):
        ev.load_agent(tmp_path)
    with pytest.raises(AgentError, match="no such file"):
        ev.load_agent(run_dir / "checkpoints" / "999")

    empty = tmp_path / "empty_run"
    empty.mkdir()
    shutil.copy(run_dir / "config.json", empty)
    with pytest.raises(AgentError, match="holds no saved agent .*train it longer"):
        ev.load_agent(empty)

    broken = tmp_path / "broken_run"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(AgentError, match="cannot read it"):
        ev.load_agent(broken)
    (broken / "config.json").write_text(json.dumps({"crossq": {}}))
    with pytest.raises(AgentError, match="not a run of train_crossq.py"):
        ev.load_agent(broken)

    # A config that does not describe the saved networks: refused, naming config.json.
    other = tmp_path / "other_widths"
    shutil.copytree(run_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["crossq"]["actor_hidden"] = [32, 32]
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(AgentError, match="does not hold the agent that the run's config.json describes") as e:
        ev.load_agent(other)
    assert e.value.code == 1


def test_bad_options_are_refused_with_the_fix():
    with pytest.raises(ev.EvaluateError, match="--laps 0: .*>= 1"):
        ev.EvalConfig(agent="r", laps=0)
    with pytest.raises(ev.EvaluateError, match="add --backend real"):
        ev.EvalConfig(agent="r", mode="realtime")
    with pytest.raises(ev.EvaluateError, match="--baseline-param 'grip=2'.*speed_margin"):
        ev.EvalConfig(agent="r", baseline_param=("grip=2",))
    with pytest.raises(ev.EvaluateError, match="not a number"):
        ev.EvalConfig(agent="r", baseline_param=("speed_margin=fast",))
    with pytest.raises(SystemExit):
        ev.parse_args(["--agent", "r", "--max-steps", "-1"])


# ----------------------------------------------------------------------------- laps and scores


def _row(progress=1.0, completed=False, lap_time=np.nan, clean=False, done=False, reason=None):
    return {"progress": progress, "lap_completed": completed, "lap_time": lap_time, "lap_clean": clean, "done": done,
            "end_reason": reason}


def test_lap_book_counts_standing_flying_and_failed_laps_and_skips_an_untimed_out_lap():
    book = ev.LapBook(laps=4, track_length=100.0)
    book.new_episode(0.0)  # on the line: the first lap is timed from rest
    for _ in range(9):
        assert not book.add(_row(10.0))
    book.add(_row(10.0, completed=True, lap_time=9.5, clean=True))
    for _ in range(3):
        book.add(_row(10.0))
    book.add(_row(1.0, done=True, reason="off_track"))  # the flying lap ends off the track
    book.new_episode(97.0)  # a game's own start, 3 m before the line: an untimed out-lap first
    book.add(_row(2.0))
    book.add(_row(2.0))  # crosses the line untimed: the first timed lap begins at speed
    assert book.out_laps == 1 and len(book.laps) == 2
    for _ in range(9):
        book.add(_row(10.0))
    assert book.add(_row(10.0, completed=True, lap_time=8.0, clean=False)) is False
    assert book.add(_row(0.0, done=True, reason="stuck")) is True  # four laps are over

    laps = [(lap.number, lap.start, lap.end, lap.time_s, lap.clean) for lap in book.laps]
    assert laps == [(1, "standing", "lap", 9.5, True), (2, "flying", "off_track", None, False),
                    (3, "flying", "lap", 8.0, False), (4, "flying", "stuck", None, False)]
    assert (book.laps[0].first, book.laps[0].last) == (0, 9) and book.laps[1].first == 10
    assert book.laps[2].first == 16 and book.laps[2].distance_m == pytest.approx(100.0)


def test_scores_rate_clean_laps_against_the_laps_asked_and_measure_smoothness():
    dt = 0.05
    n = 8
    steer = np.array([0.0, 0.1, 0.3, 0.3, 0.5, 0.5, 0.4, 0.4])
    throttle = np.array([1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    brake = np.array([0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.8, 0.0])
    done = np.zeros(n, bool)
    done[3] = True  # the episode ends at step 3: the jump to step 4 is not a change
    rows = {"action": np.stack([steer, throttle, brake], 1).astype(np.float32), "done": done,
            "dt": np.full(n, dt), "off_track": done.copy(), "ref_deviation": np.array([1, -2, 0, 0, 1, 1, -3, 0.0]),
            "x": np.zeros(n), "y": np.zeros(n), "speed": np.ones(n)}
    book = ev.LapBook(laps=5, track_length=100.0)
    book.new_episode()
    for i in range(n):
        book.add(_row(1.0, completed=i == 7, lap_time=30.0, clean=i == 7, done=bool(done[i]), reason="off_track"))
    s = ev.score(rows, book, limit_s=25.0)
    assert (s["laps_asked"], s["laps_driven"], s["clean_laps"], s["failed_laps"], s["laps_not_reached"]) == (5, 2, 1, 1, 3)
    assert s["clean_lap_rate"] == pytest.approx(1 / 5)  # laps not reached are not clean
    assert s["best_lap_s"] == s["mean_lap_s"] == 30.0 and s["gap_pct"] == pytest.approx(20.0)
    # |d steer| within episodes: 0.1, 0.2, 0 | 0, 0.1, 0 over 6 changes
    assert s["steer_change_mean"] == pytest.approx(0.4 / 6)
    # pedal = throttle - brake: 1, 1, -0.5, 0 | 1, 0, -0.8, 1 -> |d| 0, 1.5, 0.5 | 1, 0.8, 1.8
    assert s["pedal_change_mean"] == pytest.approx(5.6 / 6)
    # throttle -> brake in the first episode, brake -> throttle twice in the second (the middle band skipped)
    assert s["pedal_changes_per_min"] == pytest.approx(3 / (n * dt / 60.0))
    assert s["ref_deviation_mean_abs_m"] == pytest.approx(1.0) and s["ref_deviation_max_abs_m"] == 3.0
    assert s["off_track_s"] == pytest.approx(dt) and s["off_track_laps"] == 1

    # A step the game ended (plugin lost) has no deviation: left out, not a NaN mean.
    assert laps._abs_stats(np.array([np.nan, -2.0, 1.0])) == (1.5, 2.0)

    none = ev.LapBook(laps=2, track_length=100.0)
    s = ev.score({**rows, "done": np.zeros(n, bool)}, none, limit_s=25.0)
    assert s["clean_lap_rate"] == 0.0 and math.isnan(s["best_lap_s"]) and math.isnan(s["gap_pct"])
    assert "best_lap_s=nan" in ev.summary_line(s) and "gap_pct=nan" in ev.summary_line(s)


# ----------------------------------------------------------------------------- the command


def test_surrogate_evaluation_drives_the_runs_env_and_writes_report_plots_and_a_line_that_agrees(run_dir, tmp_path,
                                                                                                 capsys):
    out = tmp_path / "eval"
    rc = ev.main(["--agent", str(run_dir), "--laps", "2", "--out", str(out), "--no-progress", *BASELINE])
    assert rc == 0
    line = _last_line(capsys)
    report = json.loads((out / "report.json").read_text())
    _agrees(line, report["agent"])

    # The fitted surrogate's control period and input delay, the run's pedals, the file's track.
    assert (report["control_period_s"], report["delay_steps"], report["pedals"]) == (0.04, 1, "combined")
    assert report["track"] == "circle" and report["backend"] == "surrogate" and report["agent_env_steps"] == 400
    setup = tr.build_setup(tr.TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text())["command"]))
    assert report["limit_s"] == pytest.approx(setup.limit_s)
    assert report["baseline_params"]["yaw_rate_gain"] == 0.0
    assert report["baseline_params"]["max_steer"] == 0.5  # planned for the fitted car

    for name in ("agent", "baseline"):
        r = report[name]
        assert r["laps_asked"] == 2 and len(r["laps"]) == r["laps_driven"] <= 2
        assert r["clean_lap_rate"] == pytest.approx(r["clean_laps"] / 2)
        assert r["steps"] <= report["max_steps"] and r["limit_s"] == report["limit_s"]
        assert all(lap["start"] in ("standing", "flying") for lap in r["laps"])
        assert (out / f"{name}_lap.png").stat().st_size > 10_000
    assert (out / "lap_times.png").is_file()
    # A few hundred env steps of training do not drive a lap: said as it is.
    assert report["agent"]["clean_laps"] == 0 and "best_lap_s=nan" in line
    # The baseline, planned for the fitted car, laps the circle from the line; the second lap flies.
    b = report["baseline"]
    assert b["clean_laps"] == 2 and [lap["start"] for lap in b["laps"]] == ["standing", "flying"]
    assert report["limit_s"] < b["best_lap_s"] < 1.3 * report["limit_s"]
    assert b["laps"][1]["time_s"] < b["laps"][0]["time_s"]
    assert report["plots"] == [str(out / "agent_lap.png"), str(out / "baseline_lap.png"), str(out / "lap_times.png")]

    # The same --out again: refused, not overwritten.
    assert ev.main(["--agent", str(run_dir), "--out", str(out), "--no-progress"]) == 2
    assert "already holds a report.json" in capsys.readouterr().err
    # Another track for a run that trained on a surrogate file's own: refused.
    assert ev.main(["--agent", str(run_dir), "--track", "oval", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "holds its own track; leave --track out" in capsys.readouterr().err


def _slow_tuning(path, pace, meta=None):
    """A saved baseline tuning: ``pace`` of the reference speed everywhere, the planned line and gains."""
    import jax.numpy as jnp

    from surrogate import tuning

    t = tuning.DriverTuning(jnp.full((4,), math.log(pace)), jnp.zeros((4,)), jnp.zeros((len(tuning.GAINS),)))
    return tuning.save_tuning(path, t, meta)


def test_the_baseline_drives_a_saved_tuning_and_a_tuning_of_another_track_is_refused(run_dir, tmp_path, capsys):
    path = _slow_tuning(tmp_path / "tuning.json", 0.7)
    assert ev.main(["--agent", str(run_dir), "--laps", "1", "--baseline-tuning", str(path), "--out",
                    str(tmp_path / "eval"), "--no-progress", *BASELINE]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    b = report["baseline"]
    assert report["baseline_tuning"] == str(path)
    assert report["baseline_params"]["speed_margin"] == 1.0  # the tuning's own profile sets the pace
    # Seven tenths of the reference pace: slower than the plan, which laps within 1.3 of the limit.
    assert b["clean_laps"] == 1 and b["best_lap_s"] > 1.3 * report["limit_s"], b["best_lap_s"]
    # Its profiles are spread over the track by fraction of a lap: a tuning of another track is refused.
    _slow_tuning(tmp_path / "other.json", 0.7, {"track_length_m": 5000.0})
    assert ev.main(["--agent", str(run_dir), "--baseline-tuning", str(tmp_path / "other.json"),
                    "--out", str(tmp_path / "other"), "--no-progress"]) == 1
    assert "tuned on a track of 5000 m" in capsys.readouterr().err
    with pytest.raises(ev.EvaluateError, match="no such file.*drive_baseline.py --tune"):
        ev.EvalConfig(agent="r", baseline_tuning=str(tmp_path / "missing.json"))


def test_a_run_over_several_tracks_is_driven_on_the_track_asked_for(run_dir, tmp_path, capsys):
    import shutil

    multi = tmp_path / "multi"
    shutil.copytree(run_dir, multi)
    config = json.loads((multi / "config.json").read_text())
    config["command"].update(surrogate="", track="", tracks=["oval", "flowing"])
    (multi / "config.json").write_text(json.dumps(config))
    assert ev.main(["--agent", str(multi), "--out", str(tmp_path / "none"), "--no-progress"]) == 2
    assert "trained on several tracks (oval, flowing): give --track" in capsys.readouterr().err
    tc = ev._run_settings(ev.EvalConfig(agent=str(multi), track="technical"), ev.load_agent(multi))
    assert (tc.track, tc.tracks, tc.eval_tracks) == ("technical", (), ())  # driven alone, as a one-track run


def test_game_evaluation_in_lockstep_drives_both_drivers_at_the_runs_control_period(run_dir, game_address, tmp_path, capsys):
    out = tmp_path / "game"
    # The baseline drives a saved tuning (drive_baseline.py --tune's) on the game too: 85% of the pace.
    tuned = _slow_tuning(tmp_path / "tuning.json", 0.85)
    rc = ev.main(["--agent", str(run_dir / "checkpoints"), "--backend", "real", "--address", game_address, "--laps", "1",
                  "--max-steps", "900", "--out", str(out), "--no-progress", "--baseline-tuning", str(tuned), *BASELINE])
    assert rc == 0
    line = _last_line(capsys)
    report = json.loads((out / "report.json").read_text())
    _agrees(line, report["agent"])
    assert report["game"] == "kinematic-circle" and report["mode"] == "lockstep" and report["track"] == "circle"
    # The fitted surrogate's 0.04 s is two of the game's 0.02 s ticks.
    assert report["ticks_per_step"] == 2 and report["game_control_period_s"] == pytest.approx(0.04)
    assert report["bridge_stats"]["timeouts"] == 0

    agent = report["agent"]
    assert agent["laps_asked"] == 1 and agent["steps"] <= 900
    if agent["clean_laps"] == 0:  # the untrained agent: no clean lap, and the line says so
        assert agent["clean_lap_rate"] == 0.0 and agent["best_lap_s"] is None
        assert "clean_lap_rate=0.00" in line and "mean_lap_s=nan best_lap_s=nan" in line and "gap_pct=nan" in line
    # The game counts its laps from the start, which it puts within a few metres of the line: the
    # baseline's lap is a standing one, timed in game time by the game's count.
    b = report["baseline"]
    assert report["baseline_tuning"] == str(tuned) and report["baseline_params"]["speed_margin"] == 1.0
    assert b["out_laps"] == 0 and b["clean_laps"] == 1 and b["laps"][0]["start"] == "standing"
    assert 1.15 * report["limit_s"] < b["best_lap_s"] < 1.5 * report["limit_s"], (b["best_lap_s"], report["limit_s"])
    assert b["driven_s"] == pytest.approx(b["steps"] * 0.04)
    assert (out / "baseline_lap.png").is_file() and (out / "lap_times.png").is_file()


def test_a_game_that_does_not_answer_is_a_clear_error(run_dir, tmp_path, capsys):
    with zmq.Context() as ctx:  # a port nobody serves
        s = ctx.socket(zmq.REP)
        port = s.bind_to_random_port("tcp://127.0.0.1")
        s.close(linger=0)
    rc = ev.main(["--agent", str(run_dir), "--backend", "real", "--address", f"tcp://127.0.0.1:{port}",
                  "--out", str(tmp_path / "x"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "no game answers" in err and "start the game's plugin" in err
    assert not (tmp_path / "x" / "report.json").exists()


def test_game_evaluation_in_real_time_steps_on_the_clock_at_the_runs_control_period(run_dir, tmp_path, capsys):
    import time

    from bridge.sdk import RealtimeServer

    ctx = zmq.Context()
    server = RealtimeServer(KinematicCarGame(), "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", rate_hz=50,
                            info_address="tcp://127.0.0.1:*", context=ctx)
    stop = threading.Event()
    th = threading.Thread(target=server.serve, kwargs={"stop": stop}, daemon=True)
    th.start()
    out = tmp_path / "rt"
    circle = tmp_path / "circle.csv"  # the game's centre line as a file: --track on a surrogate-file run
    save_track(game_track(), circle)
    try:
        t0 = time.monotonic()
        rc = ev.main(["--agent", str(run_dir), "--backend", "real", "--mode", "realtime", "--address",
                      server.info.address, "--telemetry-address", server.pub_address, "--action-address",
                      server.pull_address, "--track", str(circle), "--laps", "1", "--max-steps", "40", "--out", str(out),
                      "--no-progress"])
        wall = time.monotonic() - t0
    finally:
        stop.set()
        th.join(timeout=5)
        ctx.destroy(linger=0)
    assert rc == 0
    line = _last_line(capsys)
    report = json.loads((out / "report.json").read_text())
    _agrees(line, report["agent"])
    assert report["mode"] == "realtime" and report["game_control_period_s"] == pytest.approx(0.04)
    assert report["track"] == "circle"
    steps = report["agent"]["steps"] + report["baseline"]["steps"]
    assert 2 <= steps <= 80 and report["agent"]["driven_s"] > 0.0
    assert wall > 0.9 * steps * 0.04  # a fixed control period, not as fast as the game answers
