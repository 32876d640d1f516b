import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bridge.recorder import TELEMETRY_FILE, Recorder, read_run


def frame(seq, episode, t, x, y, yaw, speed, **kw):
    return {"type": "telemetry", "v": 1, "seq": seq, "episode": episode, "t": t, "x": x, "y": y, "yaw": yaw,
            "speed": speed, "steer": 0.0, "throttle": 0.5, "brake": 0.0, **kw}


def circle_frames(n, episode=0, seq0=0, r=50.0, v=10.0, dt=0.1):
    out = []
    for i in range(n):
        th = v * dt * i / r
        out.append(frame(seq0 + i, episode, dt * i, r * np.cos(th), r * np.sin(th), th + np.pi / 2, v))
    return out


TRACK = {"name": "circle", "closed": True, "x": list(50 * np.cos(np.linspace(0, 2 * np.pi, 400, endpoint=False))),
         "y": list(50 * np.sin(np.linspace(0, 2 * np.pi, 400, endpoint=False))),
         "w_left": [5.0] * 400, "w_right": [5.0] * 400}


def test_round_trip_per_episode_arrays_and_actions(tmp_path):
    with Recorder(tmp_path, source="test") as rec:
        for f in circle_frames(5, episode=0):
            rec.frame(f)
            rec.action({"steer": 0.1, "throttle": 1.0, "brake": 0.0}, seq=f["seq"])
        for f in circle_frames(3, episode=1, seq0=5):
            rec.frame({**f, "lap": 0, "on_track": True, "lap_dist": None})
    run = read_run(tmp_path)
    assert [e.episode for e in run.episodes] == [0, 1] and [len(e) for e in run.episodes] == [5, 3]
    e0 = run.episodes[0]
    assert e0.fields["seq"].dtype == np.int64 and e0.fields["x"].dtype == np.float64
    np.testing.assert_array_equal(e0.actions["seq"], np.arange(5))
    assert e0.actions["throttle"].tolist() == [1.0] * 5
    assert run.meta["source"] == "test" and run.truncated_lines == 0 and run.rejected == 0
    assert run.episodes[1].fields["on_track"].dtype == bool


def test_optional_fields_are_derived_and_reported(tmp_path):
    with Recorder(tmp_path, track=TRACK) as rec:
        for f in circle_frames(20):
            rec.frame(f)
    e = read_run(tmp_path).episodes[0]
    assert e.derived == {"yaw_rate", "accel_long", "accel_lat", "lap_dist", "lap", "on_track"}
    assert e.missing == {"ack", "done", "reason"}
    np.testing.assert_allclose(e.fields["yaw_rate"], 10.0 / 50.0, rtol=1e-6)  # v / r
    np.testing.assert_allclose(e.fields["accel_lat"], 10.0 ** 2 / 50.0, rtol=1e-6)
    np.testing.assert_allclose(e.fields["accel_long"], 0.0, atol=1e-9)
    np.testing.assert_allclose(e.fields["lap_dist"], 10.0 * 0.1 * np.arange(20), atol=0.05)
    assert e.fields["on_track"].all() and (e.fields["lap"] == 0).all()


def test_without_track_map_track_fields_are_missing(tmp_path):
    with Recorder(tmp_path) as rec:
        for f in circle_frames(4):
            rec.frame(f)
    e = read_run(tmp_path).episodes[0]
    assert {"lap_dist", "lap", "on_track"} <= e.missing and "lap_dist" not in e.fields


def test_invalid_frames_are_counted_never_recorded(tmp_path):
    good = circle_frames(3)
    with Recorder(tmp_path) as rec:
        assert rec.frame(good[0])
        assert not rec.frame({**good[1], "speed": float("nan")})
        assert not rec.frame({**good[1], "steer": 3.0})
        assert rec.frame(good[2])
    run = read_run(tmp_path)
    assert run.rejected == 2 and len(run.episodes[0]) == 2
    assert "NaN" not in (tmp_path / TELEMETRY_FILE).read_text()


def test_truncated_last_line_is_ignored_and_counted(tmp_path):
    with Recorder(tmp_path) as rec:
        for f in circle_frames(3):
            rec.frame(f)
    with open(tmp_path / TELEMETRY_FILE, "ab") as fh:
        fh.write(b'{"k":"f","w":1.0,"d":{"type":"telemetry","v":1,"seq":3,"epi')
    run = read_run(tmp_path)
    assert run.truncated_lines == 1 and len(run.episodes[0]) == 3


WRITER = """
import sys, numpy as np
from bridge.recorder import Recorder
rec = Recorder(sys.argv[1])
i = 0
print("ready", flush=True)
while True:
    rec.frame({"type":"telemetry","v":1,"seq":i,"episode":i // 500,"t":0.01*(i % 500),"x":float(i),"y":0.0,
               "yaw":0.0,"speed":1.0,"steer":0.0,"throttle":0.5,"brake":0.0})
    i += 1
"""


def test_survives_kill_9_mid_recording(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    try:
        assert p.stdout.readline().strip() == b"ready"
        time.sleep(0.5)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=5)
        p.stdout.close()
    run = read_run(tmp_path)
    n = sum(len(e) for e in run.episodes)
    assert n > 100 and run.bad_lines == 0
    seqs = np.concatenate([e.fields["seq"] for e in run.episodes])
    np.testing.assert_array_equal(seqs, np.arange(n))  # every whole frame, in order, none lost


def test_missing_run_dir_names_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="run directory"):
        read_run(tmp_path / "nope")
