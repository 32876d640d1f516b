"""Recordings made ready for the fit: what is dropped, split and refused, and how windows line up."""
import types

import numpy as np
import pytest

from surrogate.fit_data import FitDataError, make_windows, prepare, sensor_noise

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


def test_recordings_without_a_track_or_a_lap_need_a_track_file(tmp_path):
    rec = recording([episode(0), episode(1, seq0=1000)])
    rec.track = None
    with pytest.raises(FitDataError, match="no complete lap .* with --track"):
        prepare([rec], ["r"], horizon_s=0.4)
    data = prepare([rec], ["r"], horizon_s=0.4, track_file="oval")
    assert data.track.name == "oval"


def laps_on(track_name="oval", laps=3.3, offsets=(1.5, -1.5), step=0.8):
    """Frames of a car driving the track's centre line, one episode: lap k a constant
    ``offsets[k % len(offsets)]`` metres to the left of it."""
    from surrogate.track_io import load_track
    t = load_track(track_name)
    x, y = np.r_[t.x, t.x[0]], np.r_[t.y, t.y[0]]
    d = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
    s = np.arange(0.0, laps * d[-1], step)
    px, py = np.interp(s % d[-1], d, x), np.interp(s % d[-1], d, y)
    hx, hy = np.gradient(px), np.gradient(py)
    norm = np.hypot(hx, hy)
    lat = np.asarray(offsets)[(s // d[-1]).astype(int) % len(offsets)]
    fx, fy = px - hy / norm * lat, py + hx / norm * lat
    fields = {"x": fx, "y": fy, "speed": np.full(len(s), 20.0), "yaw": np.arctan2(hy, hx)}
    return t, fields


def test_a_track_is_built_from_the_recorded_laps_when_the_game_serves_none():
    from surrogate.fit_data import track_from_laps
    from surrogate.fit_data import _resample_closed
    truth, fields = laps_on()  # complete laps 2 and 3 (gate to gate): 1.5 m right of the centre line, 1.5 m left
    built = track_from_laps([fields])
    assert built.length() == pytest.approx(truth.length(), rel=0.02)
    # the centre line is the mean driven line, and the widths cover both laps plus the car's half-width
    dense = _resample_closed(np.r_[truth.x, truth.x[0]], np.r_[truth.y, truth.y[0]], 5000)
    d = np.min(np.hypot(built.x[:, None] - dense[None, :, 0], built.y[:, None] - dense[None, :, 1]), axis=1)
    assert np.median(d) < 0.3
    assert np.median(built.w_left) == pytest.approx(2.4, abs=0.3)
    assert np.median(built.w_right) == pytest.approx(2.4, abs=0.3)


def test_where_the_car_left_the_track_the_built_edge_comes_in():
    from surrogate.fit_data import track_from_laps
    _, fields = laps_on()
    wide = track_from_laps([fields])
    n = len(fields["x"])
    fields["on_track"] = np.ones(n, bool)
    fields["on_track"][n // 2: n // 2 + 10] = False  # off the track, 1.5 m right of the centre line
    narrow = track_from_laps([fields])
    assert wide.w_right.min() > 2.0 and narrow.w_right.min() < 1.0  # the right edge is within a car of there
    assert narrow.w_left.min() == pytest.approx(wide.w_left.min(), abs=0.05)


def test_without_a_track_or_a_complete_lap_the_fit_is_refused_with_the_fix():
    from surrogate.fit_data import track_from_laps
    _, fields = laps_on(laps=0.6)
    with pytest.raises(FitDataError, match="no complete lap"):
        track_from_laps([fields])


def test_sensor_noise_is_measured_per_speed_band_and_a_smooth_signal_reads_as_none():
    rng = np.random.default_rng(0)
    slow = [episode(i, seq0=1000 * i, speed=10.0) for i in range(4)]
    fast = [edit(episode(4 + i, seq0=1000 * (4 + i), speed=50.0), accel_lat=lambda a: a + rng.normal(0.0, 3.0, a.shape))
            for i in range(4)]
    data = prepare([recording(slow + fast)], ["rec"])
    noise = sensor_noise(data.segments)
    assert noise["speed_mps"] == [15.0, 55.0]  # the 10-20 and 50-60 m/s bands
    assert noise["accel_lat"][0] == 0.0 and noise["accel_lat"][1] == pytest.approx(3.0, rel=0.15)
    assert noise["speed"] == [0.0, 0.0] and noise["yaw_rate"] == [0.0, 0.0]
    assert sensor_noise([]) is None
