"""Recordings made ready for the fit: what is dropped, split and refused, and how windows line up."""
import types

import numpy as np
import pytest

from surrogate.fit_data import FitDataError, make_windows, prepare

DT = 0.04


def circle_track(radius=100.0, n=64, name="circle"):
    th = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return {"name": name, "closed": True, "x": list(radius * np.cos(th)), "y": list(radius * np.sin(th)),
            "w_left": [8.0] * n, "w_right": [8.0] * n}


def episode(number, n=200, dt=DT, seq0=0, speed=10.0):
    """A car driving a straight line at constant speed; controls encode the frame index (throttle = j / n)."""
    j = np.arange(n, dtype=float)
    fields = {"t": j * dt, "seq": seq0 + np.arange(n), "x": speed * j * dt, "y": np.zeros(n), "yaw": np.zeros(n),
              "speed": np.full(n, speed), "yaw_rate": np.zeros(n), "accel_long": np.zeros(n),
              "accel_lat": np.zeros(n), "steer": np.zeros(n), "throttle": j / n, "brake": np.zeros(n),
              "on_track": np.ones(n, bool)}
    return types.SimpleNamespace(episode=number, fields=fields)


def recording(episodes, track=None, meta=None):
    return types.SimpleNamespace(episodes=episodes, track=circle_track() if track is None else track,
                                 meta=meta or {}, rejected=0, bad_lines=0, truncated_lines=0)


def edit(ep, **changes):
    for k, f in changes.items():
        ep.fields[k] = f(ep.fields[k].copy())
    return ep


def test_episodes_are_split_whole_between_training_and_validation():
    rec = recording([episode(i, seq0=1000 * i) for i in range(8)])
    data = prepare([rec], ["r"], horizon_s=0.4, val_fraction=0.25)
    train_eps = {data.segments[i].episode_key for i in set(data.train.source.tolist())}
    val_eps = {data.segments[i].episode_key for i in set(data.val.source.tolist())}
    assert len(val_eps) == 2 and len(train_eps) == 6 and not train_eps & val_eps
    assert data.dt == pytest.approx(DT) and data.horizon == 10
    assert data.control_period == pytest.approx(DT)  # lockstep: a frame per control step


def test_windows_hold_the_controls_that_drove_each_step_for_any_delay():
    ep = episode(0, n=60)
    data = prepare([recording([ep, episode(1, seq0=100)])], ["r"], horizon_s=0.2, max_delay=2, val_fraction=0.5)
    seg = data.segments[0]
    w = make_windows(data.segments, [0], horizon=5, max_delay=2)
    i = int(w.start[3])
    # the step from frame i + k to i + k + 1 was driven by frame i + k + 1's controls (delay 0) ...
    np.testing.assert_allclose(w.controls[3, 3:, 1], seg.controls[i + 1: i + 6, 1])
    # ... and with delay d by those of d steps earlier: index max_delay + 1 - d + k
    np.testing.assert_allclose(w.controls[3, 2 + 1 - 2: 2 + 1 - 2 + 5, 1], seg.controls[i - 1: i + 4, 1])
    np.testing.assert_allclose(w.target[3, :, 0], seg.x[i + 1: i + 6])
    assert w.init[3, 3] == pytest.approx(10.0) and w.init[3, 4] == pytest.approx(0.0)  # vx, vy from the motion


def test_duplicate_and_out_of_order_frames_are_dropped_and_counted():
    ep = episode(0)
    seq = ep.fields["seq"]
    seq[50] = seq[49]  # a duplicate
    seq[80], seq[81] = seq[81], seq[80]  # two frames swapped
    data = prepare([recording([ep, episode(1, seq0=1000), episode(2, seq0=2000)])], ["r"], horizon_s=0.4,
                   val_fraction=0.34)
    assert data.stats.dropped["duplicate seq"] == 1
    assert data.stats.dropped["out-of-order seq"] == 1
    for s in data.segments:
        assert np.all(np.diff(s.x) > 0)  # time and place only move forwards in what is kept


def test_a_gap_splits_the_episode_and_no_window_spans_it():
    ep = edit(episode(0, n=300), t=lambda t: np.where(np.arange(300) >= 150, t + 1.0, t))
    data = prepare([recording([ep, episode(1, n=300, seq0=1000), episode(2, seq0=2000)])], ["r"], horizon_s=0.4,
                   val_fraction=0.34)
    assert data.stats.dropped["gap (segments split)"] == 1
    first = [s for s in data.segments if s.episode_key == (0, 0)]
    assert [s.n for s in first] == [150, 150]
    assert all(np.all(s.dt < 1.5 * DT) for s in data.segments)


def test_non_finite_values_are_dropped_and_off_track_frames_end_windows():
    ep = edit(episode(0, n=200), yaw_rate=lambda a: np.where(np.arange(200) == 30, np.nan, a),
              on_track=lambda a: np.where((np.arange(200) >= 100) & (np.arange(200) < 110), False, a))
    data = prepare([recording([ep, episode(1, seq0=1000), episode(2, seq0=2000)])], ["r"], horizon_s=0.4,
                   val_fraction=0.34, seed=1)
    assert data.stats.dropped["value not finite"] == 1
    w = make_windows(data.segments, [i for i, s in enumerate(data.segments) if s.episode_key == (0, 0)], 10, 3)
    for si, start in zip(w.source, w.start):
        seg = data.segments[si]
        assert np.all(seg.usable[start: start + 11])


@pytest.mark.parametrize("recs, message", [
    (lambda: [recording([episode(0)])], "needs at least 2"),
    (lambda: [recording([episode(0, n=12), episode(1, n=12, seq0=100)])], "too little data on the track"),
    (lambda: [recording([episode(0), episode(1, seq0=1000)], track={}), ], "not a protocol-v1 track"),
    (lambda: [recording([episode(0), episode(1, seq0=1000)]),
              recording([episode(0), episode(1, seq0=1000)], track=circle_track(120.0))], "another track"),
    (lambda: [recording([episode(0), episode(1, seq0=1000)]),
              recording([episode(0, dt=0.06), episode(1, dt=0.06, seq0=1000)])], "one control period"),
])
def test_recordings_that_cannot_be_fitted_are_refused_with_the_fix(recs, message):
    recs = recs()
    with pytest.raises(FitDataError, match=message):
        prepare(recs, [f"run{i}" for i in range(len(recs))], horizon_s=0.4)


def test_recordings_without_a_track_need_a_track_file(tmp_path):
    rec = recording([episode(0), episode(1, seq0=1000)])
    rec.track = None
    with pytest.raises(FitDataError, match="give the centre line .* with --track"):
        prepare([rec], ["r"], horizon_s=0.4)
    data = prepare([rec], ["r"], horizon_s=0.4, track_file="oval")
    assert data.track.name == "oval"
