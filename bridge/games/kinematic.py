"""A tiny numpy kinematic-bicycle car on a circular track: a dependency-free plugin for tests,
benchmarks and plugin authors to copy. ``python -m bridge.games.kinematic --mode lockstep``."""

from __future__ import annotations

import argparse
import math

import numpy as np

from bridge.sdk import GamePlugin, serve_lockstep, serve_realtime


class KinematicCarGame(GamePlugin):
    name = "kinematic-circle"

    def __init__(self, dt: float = 0.02, radius: float = 50.0, half_width: float = 5.0,
                 wheelbase: float = 2.5, max_steer: float = 0.5, max_accel: float = 6.0,
                 max_brake: float = 10.0):
        self.dt = dt
        self.radius, self.half_width = radius, half_width
        self.wheelbase, self.max_steer = wheelbase, max_steer
        self.max_accel, self.max_brake = max_accel, max_brake
        self._rng = np.random.default_rng(0)
        self._state = (radius, 0.0, math.pi / 2, 0.0)
        # Metres along the centre circle since the reset (the angle turned about the centre times the
        # radius): laps count whole turns, whichever line the car drives; its own path is shorter on
        # the inside.
        self._centre_dist = 0.0

    def reset(self, seed):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        start = float(self._rng.uniform(-0.05, 0.05))  # small random angle along the circle
        self._state = (self.radius * math.cos(start), self.radius * math.sin(start), start + math.pi / 2, 0.0)
        self._centre_dist = 0.0
        return self._fields(0.0, 0.0, 0.0)

    def step(self, action, ticks):
        x, y, yaw, v = self._state
        v_prev = v
        for _ in range(ticks):
            acc = action["throttle"] * self.max_accel - action["brake"] * self.max_brake
            v = max(0.0, v + acc * self.dt)
            yaw_rate = v * math.tan(action["steer"] * self.max_steer) / self.wheelbase
            ang = math.atan2(y, x)
            x += v * math.cos(yaw) * self.dt
            y += v * math.sin(yaw) * self.dt
            yaw += yaw_rate * self.dt
            turned = math.atan2(y, x) - ang
            self._centre_dist += math.atan2(math.sin(turned), math.cos(turned)) * self.radius
        self._state = (x, y, math.atan2(math.sin(yaw), math.cos(yaw)), v)
        return self._fields((v - v_prev) / (self.dt * ticks), v * yaw_rate, yaw_rate)

    def _fields(self, accel_long, accel_lat, yaw_rate):
        x, y, yaw, v = self._state
        lap_len = 2 * math.pi * self.radius
        ang = math.atan2(y, x) % (2 * math.pi)
        return {"x": x, "y": y, "yaw": yaw, "speed": v, "accel_long": accel_long, "accel_lat": accel_lat,
                "yaw_rate": yaw_rate, "lap": max(0, int(self._centre_dist // lap_len)), "lap_dist": ang * self.radius,
                "on_track": abs(math.hypot(x, y) - self.radius) <= self.half_width}

    def track(self):
        th = np.linspace(0, 2 * np.pi, 200, endpoint=False)
        n = len(th)
        return {"name": "circle", "closed": True, "x": self.radius * np.cos(th), "y": self.radius * np.sin(th),
                "w_left": np.full(n, self.half_width), "w_right": np.full(n, self.half_width)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mode", choices=["lockstep", "realtime"], default="lockstep")
    ap.add_argument("--address", default="tcp://127.0.0.1:5555", help="lockstep REP address")
    ap.add_argument("--pub", default="tcp://127.0.0.1:5556")
    ap.add_argument("--pull", default="tcp://127.0.0.1:5557")
    args = ap.parse_args(argv)
    game = KinematicCarGame()
    if args.mode == "lockstep":
        serve_lockstep(game, args.address)
    else:
        serve_realtime(game, args.pub, args.pull, info_address=args.address)


if __name__ == "__main__":
    main()
