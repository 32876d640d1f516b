"""scripts/record_telemetry.py: drive the kinematic example game and read the recording back."""
import importlib.util
import json
import os
import sys

import numpy as np
import pytest

from bridge.recorder import read_run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("record_telemetry", os.path.join(ROOT, "scripts", "record_telemetry.py"))
rt = importlib.util.module_from_spec(_spec)
sys.modules["record_telemetry"] = rt  # dataclasses look their module up while the script loads
_spec.loader.exec_module(rt)


# The kinematic game's yaw rate follows the steering within a tick: the baseline's yaw-rate feedback,
# tuned for cars with tyre lag, would oscillate there.
ARGS = ["--dt", "0.04", "--quiet", "--baseline-param", "yaw_rate_gain=0"]


def test_baseline_with_noise_records_episodes_that_read_back_with_every_field(game_address, tmp_path, capsys):
    run_dir = tmp_path / "rec"
    rc = rt.main(["--address", game_address, "--policy", "baseline", "--episodes", "2", "--steps", "150",
                  "--run-dir", str(run_dir), "--noise", "ou", "--noise-scale", "0.1", "--seed", "3", *ARGS])
    assert rc == 0
    out = capsys.readouterr().out
    assert "recorded 302 frames in 2 episodes" in out and "rejected frames 0" in out

    rec = read_run(run_dir)
    assert [e.episode for e in rec.episodes] == [0, 1] and rec.rejected == 0 and rec.bad_lines == 0
    for ep in rec.episodes:
        assert len(ep) == 151  # the reset frame and one per step
        f = ep.fields
        for k in ("t", "x", "y", "yaw", "speed", "steer", "throttle", "brake", "accel_long", "yaw_rate", "lap_dist"):
            assert k in f and np.all(np.isfinite(f[k])), k
        assert np.allclose(np.diff(f["t"]), 0.04)
        assert len(ep.actions["steer"]) == 150
        # the baseline drives: the car gets up to speed and stays on the track
        assert f["speed"].max() > 5.0 and f["on_track"].all()
        # the actions recorded are the ones the game applied on the next frame
        np.testing.assert_allclose(ep.actions["steer"], f["steer"][1:], atol=1e-6)
        np.testing.assert_allclose(ep.actions["throttle"], f["throttle"][1:], atol=1e-6)
    # the noise made the two episodes' inputs differ, and steering is not the noiseless constant
    a, b = rec.episodes
    assert not np.allclose(a.fields["steer"], b.fields["steer"]) and a.fields["steer"][1:].std() > 0.02
    assert rec.track is not None and rec.track["name"] == "circle"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["episodes"] == 2 and summary["frames"] == 302 and summary["steps"] == 300
    assert rec.meta["config"]["policy"] == "baseline" and rec.meta["hello"]["game"] == "kinematic-circle"


def test_random_policy_ends_episodes_and_counts_them(game_address, tmp_path):
    s = rt.run(rt.parse(["--address", game_address, "--policy", "random", "--episodes", "3", "--steps", "60",
                         "--run-dir", str(tmp_path / "r"), *ARGS]))
    rec = read_run(tmp_path / "r")
    assert s["episodes"] == 3 and len(rec.episodes) == 3
    assert s["frames"] == sum(len(e) for e in rec.episodes) == s["steps"] + 3
    assert sum(s["episode_ends"].values()) == 3
    steer = np.concatenate([e.fields["steer"][1:] for e in rec.episodes])
    assert steer.min() < -0.5 and steer.max() > 0.5  # uniform random steering, not a driver


def test_probe_is_the_default_and_records_minutes_of_game_time_with_the_envelope_in_the_summary(
        game_address, tmp_path, capsys):
    run_dir = tmp_path / "probe"
    rc = rt.main(["--address", game_address, "--minutes", "0.75", "--run-dir", str(run_dir), "--dt", "0.04", "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    rec = read_run(run_dir)
    assert rec.meta["config"]["policy"] == "probe" and rec.rejected == 0 and rec.bad_lines == 0
    # 45 s of game time, in one episode (the probe stays on the track; the time is up mid-episode)
    game_s = sum(float(ep.fields["t"][-1] - ep.fields["t"][0]) for ep in rec.episodes)
    assert 45.0 <= game_s < 45.0 + 0.04 + 1e-6 and len(rec.episodes) == 1
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["policy"] == "probe" and s["episode_ends"] == {"recording_time": 1} and s["game_s"] == pytest.approx(45.0)
    env = s["envelope"]
    assert env["seconds"] == pytest.approx(45.0, abs=0.05)
    assert env["speed"]["min"] < 1.0 and env["speed"]["max"] > 10.0 and env["speed_coverage"] >= 0.8
    assert sum(env["speed_histogram"]["seconds"]) == pytest.approx(env["seconds"], abs=0.1)
    assert env["accel_long"]["max"] > 4.0 and env["accel_long"]["min"] < -5.0  # accelerating and braking
    assert env["time_share"]["full_throttle"] > 0 and env["time_share"]["coast"] > 0
    assert s["probe"]["back_offs"]["off_track"] == 0 and sum(m["done"] for m in s["probe"]["manoeuvres"].values()) >= 4
    assert "envelope covered (45.0 s of game time)" in out and "speed (m/s)" in out and "probe: pace" in out


def test_minutes_and_episodes_bound_the_recording_together(game_address, tmp_path):
    # the episode limit binds first here: one episode of 100 steps, though 10 minutes are allowed
    s = rt.run(rt.parse(["--address", game_address, "--minutes", "10", "--episodes", "1", "--steps", "100",
                         "--run-dir", str(tmp_path / "m"), *ARGS]))
    assert s["episodes"] == 1 and s["steps"] == 100 and s["episode_ends"] == {"time_limit": 1}
    assert s["game_s"] == pytest.approx(4.0)


def test_agent_policy_drives_at_its_runs_control_period_deterministically_and_with_noise(
        game_address, kinematic_run, tmp_path, capsys):
    # --dt 0.06 is not the run's: the agent acts at the 0.04 s (2 ticks) it trained at
    common = ["--address", game_address, "--policy", "agent", "--agent", str(kinematic_run), "--episodes", "2",
              "--steps", "60", "--same-seed", "--dt", "0.06", "--quiet"]
    rc = rt.main([*common, "--noise", "none", "--run-dir", str(tmp_path / "plain")])
    assert rc == 0
    rec = read_run(tmp_path / "plain")
    assert rec.meta["control_period_s"] == pytest.approx(0.04) and rec.meta["ticks_per_step"] == 2
    assert rec.meta["config"]["policy"] == "agent" and rec.meta["agent"]["env_steps"] == 400
    a, b = rec.episodes
    assert np.allclose(np.diff(a.fields["t"]), 0.04)
    # the same start and a deterministic agent: the same drive twice, and it does steer and press pedals
    n = min(len(a), len(b))
    np.testing.assert_allclose(a.fields["steer"][:n], b.fields["steer"][:n], atol=1e-6)
    assert np.abs(a.fields["steer"][1:]).max() > 0 and (a.fields["throttle"][1:] + a.fields["brake"][1:]).max() > 0
    rc = rt.main([*common, "--noise", "gaussian", "--noise-scale", "0.3", "--run-dir", str(tmp_path / "noisy")])
    assert rc == 0
    c, _ = read_run(tmp_path / "noisy").episodes
    m = min(len(a), len(c))
    assert not np.allclose(a.fields["steer"][1:m], c.fields["steer"][1:m])


def test_bad_options_are_refused_with_the_option_named():
    with pytest.raises(ValueError, match="--noise-scale"):
        rt.parse(["--noise-scale", "-1"])
    with pytest.raises(ValueError, match="--baseline-param 'grip=2'.*speed_margin"):
        rt.parse(["--baseline-param", "grip=2"])
    with pytest.raises(SystemExit):
        rt.parse(["--policy", "clever"])
    for bad in ("0", "-1", "nan"):
        with pytest.raises(ValueError, match="--minutes"):
            rt.parse(["--minutes", bad])
    with pytest.raises(ValueError, match="--probe-param 'grip=2'.*max_lat_accel"):
        rt.parse(["--probe-param", "grip=2"])
    with pytest.raises(ValueError, match="--probe-param.*edge_frac.*fraction"):
        rt.parse(["--probe-param", "edge_frac=2"])
    with pytest.raises(ValueError, match="--policy agent needs --agent"):
        rt.parse(["--policy", "agent"])
    with pytest.raises(ValueError, match="--agent is for --policy agent"):
        rt.parse(["--agent", "runs/x"])
    assert rt.main(["--minutes", "0"]) == 2  # the command says so and exits, without a traceback
