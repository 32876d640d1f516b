"""racerl_jax.probe: the recording driver that needs no car model.

Closed-loop checks run the probe on a small numpy kinematic car (with an optional lateral grip
limit) on a circle, and on the kinematic example game through the bridge; the back-off rules are
checked with the episode ends and slides they react to."""
import math
from types import SimpleNamespace

import numpy as np
import pytest

from racerl_jax.probe import MANOEUVRES, ProbeConfig, ProbePolicy
from racerl_jax.real_env import RealEnvConfig, RealGameEnv
from surrogate.env import EnvConfig

R, HW, DT = 50.0, 5.0, 0.04


def circle_track(m: int = 2048) -> SimpleNamespace:
    """A counter-clockwise circle of radius R in the surrogate Track's fields (numpy)."""
    th = np.arange(m) * 2 * np.pi / m
    return SimpleNamespace(x=R * np.cos(th), y=R * np.sin(th), heading=th + np.pi / 2, curvature=np.full(m, 1 / R),
                           w_left=np.full(m, HW), w_right=np.full(m, HW), length=2 * np.pi * R, ds=2 * np.pi * R / m)


class Car:
    """The kinematic example game's car, with the yaw rate limited to grip / speed (past the grip
    it runs wide), seen through the circle's track coordinates."""

    def __init__(self, grip: float = math.inf):
        self.grip = grip
        self.x, self.y, self.yaw, self.v = R, 0.0, math.pi / 2, 0.0
        self.a_long = self.r = 0.0

    def step(self, act, dt=DT):
        steer, throttle, brake = map(float, act)
        v0 = self.v
        self.v = max(0.0, self.v + (6.0 * throttle - 10.0 * brake) * dt)
        r = self.v * math.tan(0.5 * steer) / 2.5
        lim = self.grip / max(self.v, 1e-3)
        self.r = min(max(r, -lim), lim)
        self.x += self.v * math.cos(self.yaw) * dt
        self.y += self.v * math.sin(self.yaw) * dt
        self.yaw += self.r * dt
        self.a_long = (self.v - v0) / dt

    yaw_noise = 0.0  # rad/s of white noise on the reported yaw rate (a game whose physics chatters)
    rng = np.random.default_rng(0)

    def observe(self):
        ang = math.atan2(self.y, self.x) % (2 * math.pi)
        he = (self.yaw - ang - math.pi / 2 + math.pi) % (2 * math.pi) - math.pi
        pos = SimpleNamespace(s=ang * R, lateral=R - math.hypot(self.x, self.y), heading_error=he)
        tel = SimpleNamespace(x=self.x, y=self.y, yaw=self.yaw, speed=self.v, accel_long=self.a_long,
                              accel_lat=self.v * self.r, yaw_rate=self.r + self.yaw_noise * self.rng.normal())
        return pos, tel


def drive(policy: ProbePolicy, car: Car, seconds: float) -> dict[str, np.ndarray]:
    """Run the probe on the car; per-step lateral offsets, speeds and controls."""
    out = {"lat": [], "v": [], "steer": [], "throttle": [], "brake": []}
    for _ in range(round(seconds / DT)):
        pos, tel = car.observe()
        act = policy.act(pos, tel)
        car.step(act)
        for k, v in zip(out, (pos.lateral, tel.speed, *act)):
            out[k].append(float(v))
    return {k: np.asarray(v) for k, v in out.items()}


def steady_probe(**kw) -> ProbePolicy:
    """A probe that only drives steadily (no manoeuvre for a long time)."""
    return ProbePolicy(circle_track(), ProbeConfig(dt=DT, cruise_s=(1e6, 1e6), **kw))


def test_the_pace_rises_while_the_car_corners_at_it_on_the_line():
    p, car = steady_probe(), Car()
    start = (p.lat_accel, p.speed_cap)
    log = drive(p, car, 40.0)
    assert p.lat_accel > 2 * start[0] and p.speed_cap > 2 * start[1]
    assert log["v"][-1] > 12.0 and np.abs(log["lat"]).max() < 0.5 * HW  # faster, and on the line
    assert p.events == {"slide": 0, "edge": 0, "off_track": 0, "stuck": 0}


def test_leaving_the_track_lowers_the_pace_and_the_next_episodes_target_speed():
    p, car = steady_probe(), Car()
    drive(p, car, 30.0)
    pos, tel = car.observe()
    before = (p.lat_accel, p.speed_cap)
    p.end_episode("stuck")  # stalling is no reason to slow down
    assert (p.lat_accel, p.speed_cap) == before
    p.start_episode()
    p.act(pos, tel)
    target_before = p.target_speed
    p.end_episode("off_track")
    assert p.events["off_track"] == 1
    assert p.lat_accel <= 0.7 * before[0] + 1e-9 and p.speed_cap < before[1]
    p.start_episode()
    p.act(pos, tel)
    assert p.target_speed < 0.9 * target_before
    # and it holds the lower pace for a while before it rises again
    held = p.lat_accel
    drive(p, car, 0.8 * p.cfg.hold_s)
    assert p.lat_accel == held


def test_on_a_car_with_little_grip_it_backs_off_at_the_slide_and_stays_on_the_track():
    p, car = steady_probe(), Car(grip=3.0)
    log = drive(p, car, 90.0)
    assert p.events["slide"] + p.events["edge"] >= 1  # it found the limit ...
    assert np.abs(log["lat"]).max() < HW  # ... without leaving the track
    assert p.lat_accel < 4.0  # and keeps its pace near the grip of 3 m/s^2, not the 40 it may rise to
    assert log["v"][-200:].mean() > 8.0  # still driving: sqrt(3 * 50) = 12 m/s is the limit


def test_a_yaw_rate_that_chatters_from_step_to_step_is_not_taken_for_a_slide():
    p, car = steady_probe(), Car()
    car.yaw_noise = 1.0  # CarRacing's above 60 m/s
    drive(p, car, 40.0)
    assert p.events["slide"] == 0 and p.speed_cap > 12.0
    # judged step by step (slide_persist_s 0), the same chatter reads as slides
    p, car = steady_probe(slide_persist_s=0.0), Car()
    car.yaw_noise = 1.0
    drive(p, car, 40.0)
    assert p.events["slide"] > 0


def test_a_manoeuvre_near_an_edge_is_aborted_and_the_car_recovers_on_the_line():
    p, car = ProbePolicy(circle_track(), ProbeConfig(dt=DT, cruise_s=(1.0, 1.0))), Car()
    drive(p, car, 4.0)  # the first manoeuvre (a launch) is under way
    while p.manoeuvre is None or p.manoeuvre.phase != "run":
        drive(p, car, DT)
    kind = p.manoeuvre.kind
    # push the car towards the outer edge, heading out
    ang = math.atan2(car.y, car.x)
    car.x, car.y = (R + 3.5) * math.cos(ang), (R + 3.5) * math.sin(ang)
    car.yaw = ang + math.pi / 2 - 0.15
    drive(p, car, 2 * DT)
    assert p.counts[kind]["aborted"] == 1 and p.mode == "recover"
    assert p.events["edge"] + p.events["slide"] == 1
    log = drive(p, car, 6.0)
    assert np.abs(log["lat"]).max() < HW and abs(log["lat"][-1]) < 0.5 and p.mode != "recover"


def test_bad_probe_settings_are_refused_with_the_setting_named():
    with pytest.raises(ValueError, match="slide_backoff"):
        ProbeConfig(slide_backoff=1.5)
    with pytest.raises(ValueError, match="start_speed"):
        ProbeConfig(start_speed=0.0)


# ----------------------------------------------------------------------------- through the bridge


def test_probe_drives_the_kinematic_game_over_speeds_pedals_and_both_steering_directions(game_address):
    env = RealGameEnv(RealEnvConfig(address=game_address, env=EnvConfig(dt=DT, max_episode_steps=10**6)))
    try:
        p = ProbePolicy(env.track, ProbeConfig(dt=env.ticks * env.hello["dt"], seed=1))
        rows, on, ends = [], [], []
        env.reset(seed=0)
        p.start_episode()
        for _ in range(round(100.0 / DT)):
            act = p.act(env.track_pos, env.last_telemetry)
            _, _, term, trunc, info = env.step(act)
            f = env.last_frame
            rows.append((f["speed"], f["accel_long"], *info["applied_action"]))
            on.append(f["on_track"])
            if term or trunc:
                ends.append(info["end_reason"])
                p.end_episode(info["end_reason"])
                env.reset(seed=len(ends))
                p.start_episode()
    finally:
        env.close()
    v, a_long, steer, throttle, brake = np.asarray(rows).T
    assert ends == [] and np.mean(on) == 1.0  # on the track all the time
    assert v.min() < 1.0 and v.max() > 15.0  # from (near) rest to speed
    assert a_long.max() >= 5.9 and a_long.min() <= -9.9  # full throttle and full brake (6 and 10 m/s^2)
    assert np.any((brake > 0.2) & (brake < 0.5)) and np.any((brake > 0.5) & (brake < 0.9))  # several brake levels
    assert np.any((throttle == 0) & (brake == 0) & (v > 5))  # coasting
    # steering excited both ways around what following the circle takes (a steady left turn)
    k = round(3.0 / DT)
    base = np.array([np.median(steer[max(0, i - k):i + k]) for i in range(len(steer))])
    assert np.quantile(steer - base, 0.01) < -0.04 and np.quantile(steer - base, 0.99) > 0.04
    assert all(p.counts[k]["done"] >= 1 for k in MANOEUVRES), p.counts
