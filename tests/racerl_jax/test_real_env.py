"""RealGameEnv over the bridge against the kinematic example game: the surrogate's observation and
reward on game frames, lockstep episodes, derived telemetry, plugin restarts, the real-time
watchdog, and Gymnasium's env checker."""
import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time

import jax.numpy as jnp
import numpy as np
import pytest
import zmq
from gymnasium.utils.env_checker import check_env

from bridge.client import BridgeUnavailable
from bridge.games.kinematic import KinematicCarGame
from bridge.safety import SafetyConfig
from bridge.sdk import LockstepServer, RealtimeServer
from racerl_jax.real_env import RealEnvConfig, RealGameEnv, telemetry_from
from surrogate.env import GOVERNOR_FADE, EnvConfig
from surrogate.observation import ACCEL_SCALE, YAW_RATE_SCALE, ObsConfig, observe
from surrogate.reward import reward
from surrogate.track import interp, project, project_global
from surrogate.track_io import TrackData, save_track

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = EnvConfig(dt=0.04, n_track_points=512, max_episode_steps=400)  # 2 ticks of the game's 0.02 s
GO = np.array([0.0, 0.6, 0.0], np.float32)


class Served:
    """A plugin served from a thread on a random free port; stop() joins it."""

    def __init__(self, server):
        self.server, self.stop_event = server, threading.Event()
        self.thread = threading.Thread(target=server.serve, kwargs={"stop": self.stop_event}, daemon=True)
        self.thread.start()

    def stop(self):
        self.stop_event.set()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive()


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


@pytest.fixture
def lockstep(ctx):
    s = Served(LockstepServer(KinematicCarGame(), "tcp://127.0.0.1:*", context=ctx))
    yield s.server
    s.stop()


def make_env(address, **kw):
    return RealGameEnv(RealEnvConfig(address=address, env=kw.pop("env", ENV), **kw))


def test_observation_and_reward_are_the_surrogate_functions_on_the_game_pose(lockstep):
    env = make_env(lockstep.address)
    try:
        obs, info = env.reset(seed=1)
        f = env.last_frame
        tel = telemetry_from(f)  # the kinematic game sends every motion field
        pos0 = project_global(env.track, tel.x, tel.y, tel.yaw)
        want = observe(env.track, pos0, tel, jnp.zeros(3), ENV.obs)
        np.testing.assert_allclose(obs, np.asarray(want), rtol=1e-6, atol=1e-6)  # jit vs eager: ulps
        assert info["derived"] == ()

        a = np.array([0.2, 0.7, 0.0], np.float32)
        obs1, r, term, trunc, info1 = env.step(a)
        f1 = env.last_frame
        assert f1["ack"] is not None and f1["steer"] == pytest.approx(0.2, abs=1e-6)
        tel1 = telemetry_from(f1)
        pos1 = project(env.track, tel1.x, tel1.y, tel1.yaw, pos0.idx, ENV.projection_window)
        np.testing.assert_allclose(obs1, np.asarray(observe(env.track, pos1, tel1, jnp.asarray(a), ENV.obs)),
                                   rtol=1e-6, atol=1e-6)
        d_s = float(pos1.s - pos0.s)
        dev = pos1.lateral - interp(env.track, env.track.ref_offset, pos1.s)
        want_r, _ = reward(env.config.reward, jnp.float32(d_s), dev, jnp.asarray(a), jnp.zeros(3),
                           jnp.bool_(False), jnp.bool_(False))
        assert r == pytest.approx(float(want_r), rel=1e-5, abs=1e-6)
        assert d_s > 0 and info1["progress"] == pytest.approx(d_s, abs=1e-4)
        # one env step is the surrogate's control period in game ticks
        assert env.ticks == 2 and f1["t"] == pytest.approx(ENV.dt)
        assert env.observation_space.shape == (ENV.obs.size,) and obs1 in env.observation_space
    finally:
        env.close()


def test_lockstep_episode_drives_round_the_circle_then_ends_off_track(lockstep):
    env = make_env(lockstep.address)
    try:
        env.reset(seed=0)
        total, progress = 0.0, 0.0
        for _ in range(100):
            obs, r, term, trunc, info = env.step(np.array([0.1, 0.8, 0.0], np.float32))  # gentle left on a CCW circle
            assert not (term or trunc) and np.all(np.isfinite(obs))
            total += r
            progress += info["progress"]
        assert progress > 25.0 and total > 0.0
        assert env.last_frame["episode"] == 0 and info["end_reason"] is None
        for i in range(200):  # full right lock at speed leaves the circle
            obs, r, term, trunc, info = env.step(np.array([-1.0, 1.0, 0.0], np.float32))
            if term or trunc:
                break
        assert term and not trunc and info["end_reason"] == "off_track" and info["off_track"]
        with pytest.raises(RuntimeError, match="reset"):
            env.step(GO)
        _, info = env.reset()
        assert info["episode"] == 1
    finally:
        env.close()


def test_the_speed_limiter_cuts_the_games_throttle_as_it_cuts_the_surrogates(lockstep):
    limit = 4.0
    env = make_env(lockstep.address, env=dataclasses.replace(ENV, speed_limit=limit))
    try:
        env.reset(seed=0)
        sent = []
        for _ in range(100):
            speed = env.last_frame["speed"]
            obs, r, term, trunc, info = env.step(np.array([0.1, 1.0, 0.0], np.float32))
            assert not (term or trunc)
            sent.append((speed, float(info["applied_action"][1]), env.last_frame["throttle"]))
        speeds, throttle, game = (np.array(c) for c in zip(*sent))
        np.testing.assert_allclose(throttle, np.clip((limit - speeds) / GOVERNOR_FADE, 0.0, 1.0), atol=1e-6)
        np.testing.assert_allclose(game, throttle, atol=1e-6)  # what the game applied
        assert throttle[0] == 1.0 and speeds.max() <= limit + 0.5 and speeds[-20:].min() > limit - GOVERNOR_FADE
    finally:
        env.close()


class LineBeforeTheMap(KinematicCarGame):
    """Counts its laps at its own line, 11 m before the first point of the track it serves, and ends
    the episode there, as CarRacing does; ``counts=False``: sends no lap count at all."""

    def __init__(self, counts=True):
        super().__init__()
        self.counts = counts

    def _fields(self, *a):
        f = super()._fields(*a)
        lap_len = 2 * np.pi * self.radius
        f["lap"] = int((self._centre_dist + 11.0) // lap_len)
        f["lap_dist"] = (f["lap_dist"] + 11.0) % lap_len
        if f["lap"] >= 1:
            f["done"], f["reason"] = True, "finish"
        if not self.counts:
            del f["lap"]
        return f


@pytest.mark.parametrize("counts", [True, False])
def test_a_game_that_counts_its_laps_is_the_judge_of_a_lap_even_where_its_line_is_not_the_maps(ctx, counts):
    from racerl_jax.evaluate import drive_game
    from racerl_jax.laps import LapBook

    served = Served(LockstepServer(LineBeforeTheMap(counts), "tcp://127.0.0.1:*", context=ctx))
    env = make_env(served.server.address, env=dataclasses.replace(ENV, max_episode_steps=2000))
    try:
        book = LapBook(1, float(env.track.length))
        rows = drive_game(env, lambda obs: np.array([0.1, 0.8, 0.0], np.float32), book, 600, 0, lambda *a: None)
        laps = book.laps
        assert len(laps) == 1 and laps[0].start == "standing" and book.out_laps == 0
        if counts:  # the game's lap: from the start to its line, on its clock, clean
            game_t = float(np.sum(rows["dt"]))
            assert laps[0].end == "lap" and laps[0].clean and laps[0].time_s == pytest.approx(game_t, abs=1e-6)
            assert rows["lap_completed"].sum() == 1 and rows["lap_completed"][-1]
            assert laps[0].distance_m == pytest.approx(env.track.length - 11.0, abs=2.0)
        else:  # no count from the game: the map's line decides, and the game ended the lap before it
            assert laps[0].end == "game:finish" and laps[0].time_s is None and not rows["lap_completed"].any()
    finally:
        env.close()
        served.stop()


def test_combined_pedal_env_sends_the_game_throttle_or_brake_from_one_axis(lockstep):
    env = make_env(lockstep.address, env=EnvConfig(dt=0.04, n_track_points=512, max_episode_steps=400, pedals="combined"))
    try:
        assert env.action_space.shape == (2,)
        env.reset(seed=0)
        _, _, _, _, info = env.step(np.array([0.2, 0.7], np.float32))
        f = env.last_frame
        assert (f["steer"], f["throttle"], f["brake"]) == pytest.approx((0.2, 0.7, 0.0), abs=1e-6)
        _, _, _, _, info = env.step(np.array([-0.1, -0.4], np.float32))
        np.testing.assert_allclose(info["applied_action"], [-0.1, 0.0, 0.4], atol=1e-6)
        assert env.last_frame["brake"] == pytest.approx(0.4, abs=1e-6)
        with pytest.raises(ValueError, match=r"expected \(2,\): \[steer, pedal\]"):
            env.step(GO)
    finally:
        env.close()


class NoMotionGame(KinematicCarGame):
    """Sends only the required fields: the env must derive accelerations and yaw rate."""

    true = {}

    def _fields(self, accel_long, accel_lat, yaw_rate):
        f = super()._fields(accel_long, accel_lat, yaw_rate)
        self.true = {k: f.pop(k) for k in ("accel_long", "accel_lat", "yaw_rate")}
        return f


def test_missing_motion_fields_are_derived_from_successive_frames_and_reported(ctx):
    game = NoMotionGame()
    s = Served(LockstepServer(game, "tcp://127.0.0.1:*", context=ctx))
    env = make_env(s.server.address)
    try:
        _, info = env.reset(seed=0)
        assert set(info["derived"]) == {"accel_long", "accel_lat", "yaw_rate"}
        for _ in range(20):
            _, _, _, _, info = env.step(np.array([0.3, 0.5, 0.0], np.float32))
        tel = env.last_telemetry
        assert set(info["derived"]) == {"accel_long", "accel_lat", "yaw_rate"}
        # constant inputs: the finite differences over the step match the game's own values
        assert float(tel.accel_long) == pytest.approx(game.true["accel_long"], rel=1e-3)
        assert float(tel.yaw_rate) == pytest.approx(game.true["yaw_rate"], rel=0.05)
        assert float(tel.accel_lat) == pytest.approx(float(tel.speed) * float(tel.yaw_rate), rel=1e-5)
    finally:
        env.close()
        s.stop()


class TracklessGame(KinematicCarGame):
    def track(self):
        return None


def test_track_file_is_required_when_the_game_serves_none_and_is_used_when_given(ctx, tmp_path):
    s = Served(LockstepServer(TracklessGame(), "tcp://127.0.0.1:*", context=ctx))
    try:
        with pytest.raises(ValueError, match="does not serve its track.*track file"):
            make_env(s.server.address)
        th = np.linspace(0, 2 * np.pi, 100, endpoint=False)
        path = tmp_path / "circle.csv"
        save_track(TrackData("circle", 50 * np.cos(th), 50 * np.sin(th), np.full(100, 5.0), np.full(100, 5.0)), path)
        env = make_env(s.server.address, track_file=str(path))
        try:
            obs, _ = env.reset(seed=0)
            assert abs(float(env.track_pos.lateral)) < 0.5 and np.all(np.isfinite(obs))
        finally:
            env.close()
    finally:
        s.stop()


class CorruptingServer(LockstepServer):
    """Breaks the next step reply on request: a NaN speed (JSON NaN is not valid protocol JSON)."""

    corrupt_next = False

    def handle(self, data):
        reply, close = super().handle(data)
        if self.corrupt_next and b'"ack"' in reply:
            self.corrupt_next = False
            reply = reply.replace(b'"speed":', b'"speed":NaN,"was":', 1)
        return reply, close


def test_an_invalid_frame_never_reaches_the_agent_and_ends_the_episode(ctx):
    server = CorruptingServer(KinematicCarGame(), "tcp://127.0.0.1:*", context=ctx)
    s = Served(server)
    env = make_env(server.address)
    try:
        env.reset(seed=0)
        for _ in range(3):
            good, *_ = env.step(GO)
        server.corrupt_next = True
        obs, r, term, trunc, info = env.step(GO)
        assert trunc and info["end_reason"] == "plugin_lost" and r == 0.0
        np.testing.assert_array_equal(obs, good)  # the last valid observation, nothing from the bad frame
        assert env.client_stats.invalid == 1
        env.reset()
        _, _, term, trunc, _ = env.step(GO)
        assert not (term or trunc)
    finally:
        env.close()
        s.stop()


def free_port() -> int:
    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        return so.getsockname()[1]


def start_plugin(port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bridge.games.kinematic", "--mode", "lockstep", "--address",
                             f"tcp://127.0.0.1:{port}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def test_plugin_killed_and_restarted_truncates_the_episode_and_the_env_recovers():
    port = free_port()
    procs = [start_plugin(port)]
    env = None
    try:
        env = RealGameEnv(RealEnvConfig(address=f"tcp://127.0.0.1:{port}", env=ENV, timeout_s=0.5, retries=10))
        env.reset(seed=0)
        for _ in range(5):
            obs_before, _, term, trunc, _ = env.step(GO)
            assert not (term or trunc)
        procs[0].kill()
        procs[0].wait(timeout=5)
        procs.append(start_plugin(port))
        t0 = time.monotonic()
        obs, r, term, trunc, info = env.step(GO)
        assert time.monotonic() - t0 < 8.0
        assert trunc and not term and info["end_reason"] == "plugin_lost" and r == 0.0
        np.testing.assert_array_equal(obs, obs_before)  # nothing from the lost episode's successor leaks in
        t0 = time.monotonic()
        _, info = env.reset(seed=0)
        _, _, term, trunc, _ = env.step(GO)
        assert time.monotonic() - t0 < 5.0 and not (term or trunc)
        # killed for good: the step ends the episode in bounded time, the reset says what is wrong
        procs[-1].kill()
        procs[-1].wait(timeout=5)
        env._lockstep.retries, env._lockstep.timeout = 1, 0.3
        t0 = time.monotonic()
        _, _, term, trunc, info = env.step(GO)
        assert trunc and info["end_reason"] == "plugin_unavailable" and time.monotonic() - t0 < 3.0
        with pytest.raises(BridgeUnavailable):
            env.reset()
    finally:
        if env is not None:
            env.close()
        for p in procs:
            p.kill()
            p.wait(timeout=5)


class PausableGame(KinematicCarGame):
    """Real-time game whose frames stop while ``paused`` is set (a hung game or a lost link)."""

    def __init__(self):
        super().__init__()
        self.paused = threading.Event()
        self.applied = []

    def step(self, action, ticks):
        while self.paused.is_set():
            time.sleep(0.005)
        self.applied.append(dict(action))
        return super().step(action, ticks)


def test_realtime_mode_steps_on_the_clock_and_the_watchdog_truncates_on_stale_telemetry(ctx):
    game = PausableGame()
    server = RealtimeServer(game, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", rate_hz=100, action_timeout=0.5,
                            info_address="tcp://127.0.0.1:*", context=ctx)
    s = Served(server)
    env = None
    try:
        env = RealGameEnv(RealEnvConfig(mode="realtime", address=server.info.address,
                                        telemetry_address=server.pub_address, action_address=server.pull_address,
                                        env=ENV, safety=SafetyConfig(stale_after_s=0.15)))
        assert env.hello["modes"] == ["realtime"]
        obs, info = env.reset(seed=0)
        t0 = time.monotonic()
        for i in range(20):
            obs, r, term, trunc, info = env.step(np.array([0.0, 1.0, 0.0], np.float32))
            assert not (term or trunc), info
        elapsed = time.monotonic() - t0
        assert 0.9 * 20 * ENV.dt < elapsed < 3 * 20 * ENV.dt  # a fixed control period, not as fast as possible
        assert {"late_s", "age_s", "fresh", "safety"} <= set(info) and info["late_s"] >= 0.0
        # the rate limiter let throttle rise gradually, and what was sent is what the previous action in obs says
        assert info["applied_action"][1] == pytest.approx(1.0) and obs[9] == pytest.approx(1.0)
        assert env.last_frame["speed"] > 1.0 and game.applied[-1]["throttle"] == 1.0
        game.paused.set()
        t0 = time.monotonic()
        for _ in range(20):
            obs, r, term, trunc, info = env.step(np.array([0.0, 1.0, 0.0], np.float32))
            if trunc:
                break
        assert trunc and info["end_reason"] == "stale_telemetry" and time.monotonic() - t0 < 1.0
        assert np.all(np.isfinite(obs))
        n = len(game.applied)  # the frame being stepped when the game hung still used the old action
        game.paused.clear()
        deadline = time.monotonic() + 2
        while len(game.applied) <= n + 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        # The watchdog's neutral reaches the game within a few frames (delivery is asynchronous, so
        # on a loaded machine a frame or two may still apply the queued throttle) and stays.
        neutral = {"steer": 0.0, "throttle": 0.0, "brake": 0.0}
        after = game.applied[n + 1:n + 7]
        assert neutral in after[:4], after
        assert all(a == neutral for a in after[after.index(neutral):]), after
        _, info = env.reset()  # recovers
        _, _, term, trunc, info = env.step(np.array([np.nan, 1.0, 0.0], np.float32))  # NaN guard
        assert not (term or trunc) and info["safety"] == ("nan_action",) and not info["applied_action"].any()
        env.estop("test")
        time.sleep(0.05)
        assert game.applied[-1] == {"steer": 0.0, "throttle": 0.0, "brake": 1.0}  # brakes at once
        time.sleep(0.7)  # past the plugin's 0.5 s action_timeout without a step: still braking
        assert game.applied[-1] == {"steer": 0.0, "throttle": 0.0, "brake": 1.0}
        _, _, term, trunc, info = env.step(GO)
        assert trunc and info["end_reason"] == "estop: test"
        with pytest.raises(RuntimeError, match="release_estop"):
            env.reset()
        env.release_estop()
        env.reset()
        _, _, term, trunc, _ = env.step(GO)
        assert not (term or trunc)
    finally:
        if env is not None:
            env.close()
        s.stop()


def test_passes_gymnasium_env_checker_against_the_kinematic_game_in_lockstep(lockstep):
    env = make_env(lockstep.address)
    try:
        check_env(env, skip_render_check=True)
    finally:
        env.close()


def test_the_games_imu_reaches_the_policy_through_the_surrogates_filter(lockstep):
    """With ObsConfig.imu_filter_s the game's accelerations and yaw rate are low-passed over the game
    time that elapsed, from the episode's first frame on, by the same ``filter_imu`` as the surrogate."""
    tau = 0.1
    env = make_env(lockstep.address, env=dataclasses.replace(ENV, obs=ObsConfig(imu_filter_s=tau)))
    try:
        obs, _ = env.reset(seed=1)
        prev_frame = env.last_frame
        imu = np.array([prev_frame[k] for k in ("accel_long", "accel_lat", "yaw_rate")], np.float64)
        scale = np.array([ACCEL_SCALE, ACCEL_SCALE, YAW_RATE_SCALE])
        np.testing.assert_allclose(obs[1:4], imu / scale, rtol=1e-5, atol=1e-6)
        lag = 0.0
        for t in range(12):  # full throttle, then a steering step: every IMU channel moves
            obs, *_ = env.step(np.array([0.0 if t < 6 else 0.5, 1.0, 0.0], np.float32))
            f = env.last_frame
            raw = np.array([f[k] for k in ("accel_long", "accel_lat", "yaw_rate")], np.float64)
            dt = f["t"] - prev_frame["t"]
            imu = imu + dt / (tau + dt) * (raw - imu)
            np.testing.assert_allclose(obs[1:4], imu / scale, rtol=1e-4, atol=1e-5)
            lag, prev_frame = max(lag, np.abs(raw - imu).max()), f
        assert lag > 0.1  # the readings moved faster than the filter follows
    finally:
        env.close()
