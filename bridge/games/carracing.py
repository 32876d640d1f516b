"""Reference game: Gymnasium's CarRacing-v3 (Box2D) served as a protocol-v1 plugin.

    python -m bridge.games.carracing --mode lockstep            # REP on tcp://127.0.0.1:5555
    python -m bridge.games.carracing --mode realtime [--render] # PUB :5556, PULL :5557, 50 Hz wall clock

Needs the ``game`` extra (``pip install -e '.[game]'``: gymnasium[box2d]). CarRacing renders its
pixel observation inside ``step()``; this adapter steps the Box2D car and world itself, so nothing
is drawn unless ``--render`` is given and lockstep runs far faster than real time.

Conventions mapped onto the contract: Box2D units are taken as metres; the car's body angle is 0
when it faces world +y, so yaw = angle + pi/2. Gymnasium's action[0] is positive to the right (it
calls ``car.steer(-action[0])``); the contract's steer is counter-clockwise positive (left), so this
adapter calls ``car.steer(+steer)``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math

import numpy as np

from bridge.sdk import (DEFAULT_LOCKSTEP_ADDRESS, DEFAULT_PUB_ADDRESS, DEFAULT_PULL_ADDRESS, GamePlugin,
                        serve_lockstep, serve_realtime)

try:
    import gymnasium as gym
    from Box2D.b2 import fixtureDef as _b2_fixture_def
    from gymnasium.envs.box2d import car_dynamics
    from gymnasium.envs.box2d import car_racing as cr
except ImportError as e:  # pragma: no cover - depends on the optional extra
    raise ImportError("the CarRacing reference game needs Box2D: pip install -e '.[game]' "
                      "(gymnasium[box2d])") from e


# A workaround for a leak in pybox2d (Box2D 2.3.10, the one gymnasium[box2d] installs), not in
# our code: assigning a shape to a fixtureDef (``fixtureDef(shape=polygonShape(...))``) takes the
# C++ shape away from its Python object (``shape.thisown`` becomes False, so the shape survives a
# temporary Python object) and nothing ever deletes it. Gymnasium's Car builds its 8 fixtures that
# way, so every new car (each env.reset, each of our same-track resets) leaked 8 polygon shapes:
# 2.4 kB of C++ heap per episode that neither Python's gc nor tracemalloc sees, 2.4 MB per 1,000
# episodes, the plugin's steady RSS growth in the soak (issue 17; the leak of openai/gym#980).
# While this adapter builds a car, gymnasium's car module sees the fixtureDef below instead: the
# Python shape keeps ownership and lives exactly as long as the definition that points at it
# (Box2D copies the shape into the fixture when the body is made), so both are freed together once
# the Car has made its bodies. Swapped in only around our own car building, not for the process:
# Gymnasium is left as it is for any other code that imports it.
def _fixture_def_owning_its_shape(**kwargs):
    fd = _b2_fixture_def(**kwargs)
    shape = kwargs.get("shape")
    if shape is not None:
        shape.thisown = True
        fd._shape_kept_alive = shape
    return fd


@contextlib.contextmanager
def _cars_free_their_shapes():
    """Within: gymnasium's Car (``car_dynamics``) builds its fixtures with the definition above.
    Were two threads to interleave here and leave it swapped, that is harmless: the definition is
    safe for any caller that, as Car does, makes its bodies while the definition is alive."""
    saved = car_dynamics.fixtureDef
    car_dynamics.fixtureDef = _fixture_def_owning_its_shape
    try:
        yield
    finally:
        car_dynamics.fixtureDef = saved


class CarRacingGame(GamePlugin):
    name = "gymnasium-CarRacing-v3"
    dt = 1.0 / cr.FPS

    def __init__(self, render: bool = False, lap_complete_percent: float = 0.95):
        self.render = render
        self.env = gym.make("CarRacing-v3", render_mode="human" if render else None,
                            lap_complete_percent=lap_complete_percent).unwrapped
        self._vel = (0.0, 0.0)
        self._centre: np.ndarray | None = None
        self._seed: int | None = None  # the seed of the track built, None: none built by a reset yet

    # -- track geometry, rebuilt per episode (each seed is a new track)
    def _build_track(self) -> None:
        pts = np.array([(x, y) for _, _, x, y in self.env.track], dtype=np.float64)
        self._centre = pts
        seg = np.roll(pts, -1, axis=0) - pts
        self._seg = seg
        self._seg_len = np.hypot(seg[:, 0], seg[:, 1])
        self._cum = np.concatenate([[0.0], np.cumsum(self._seg_len)[:-1]])

    def _lap_dist(self, x: float, y: float) -> float:
        p = np.array([x, y]) - self._centre
        u = np.clip(np.einsum("ij,ij->i", p, self._seg) / np.maximum(self._seg_len ** 2, 1e-12), 0.0, 1.0)
        d2 = np.sum((p - u[:, None] * self._seg) ** 2, axis=1)
        i = int(np.argmin(d2))
        return float(self._cum[i] + u[i] * self._seg_len[i])

    def track(self) -> dict:
        if self._centre is None:
            with _cars_free_their_shapes():
                self.env.reset(seed=0)  # the hello/track before any reset describe seed 0's track
            self._build_track()
            self._seed = 0
        n = len(self._centre)
        w = np.full(n, cr.TRACK_WIDTH)
        return {"name": "carracing", "closed": True, "x": self._centre[:, 0], "y": self._centre[:, 1],
                "w_left": w, "w_right": w}

    def info(self) -> dict:
        return {"track_seed_note": "each reset seed generates its own track; ask 'track' after a reset"}

    # -- episode
    def reset(self, seed):
        if seed is not None and seed == self._seed and self.env.car is not None:
            self._restart()
        else:
            # env.reset draws one pixel observation (it calls step(None)); once per track is cheap.
            with _cars_free_their_shapes():
                self.env.reset(seed=seed)
            self._build_track()
            self._seed = seed
        self._vel = tuple(self.env.car.hull.linearVelocity)
        return self._fields(0.0, 0.0, 0.0, 1)

    def _restart(self) -> None:
        """A reset to the track already built (the same seed): a new car on the start line and the
        lap bookkeeping cleared, as ``env.reset`` leaves them, without tearing down and rebuilding
        the ~300 Box2D bodies of the road. A trainer resets the same track thousands of times an
        hour: 0.4 ms a reset this way against 120 ms for a new track (2-core CPU). It drives
        exactly as after ``env.reset`` (tests/bridge/test_carracing.py)."""
        env = self.env
        env.car.destroy()
        for tile in env.road:
            tile.road_visited = False
        env.world.contactListener_bug_workaround = cr.FrictionDetector(env, env.lap_complete_percent)
        env.world.contactListener = env.world.contactListener_bug_workaround
        env.reward = env.prev_reward = 0.0
        env.tile_visited_count = 0
        env.t = 0.0
        env.new_lap = False
        with _cars_free_their_shapes():
            env.car = cr.Car(env.world, *env.track[0][1:4])
        # env.reset ends with one tick of physics (its step(None)); so does this
        env.car.step(self.dt)
        env.world.Step(self.dt, 6 * 30, 2 * 30)
        env.t += self.dt

    def step(self, action, ticks):
        env, car = self.env, self.env.car
        car.steer(action["steer"])
        car.gas(action["throttle"])
        car.brake(action["brake"])
        done, reason = False, None
        for _ in range(ticks):
            car.step(self.dt)
            env.world.Step(self.dt, 6 * 30, 2 * 30)
            env.t += self.dt
            if env.tile_visited_count == len(env.track) or env.new_lap:
                done, reason = True, "finish"
                break
            x, y = car.hull.position
            if abs(x) > cr.PLAYFIELD or abs(y) > cr.PLAYFIELD:
                done, reason = True, "out_of_bounds"
                break
        if self.render:
            env.render()
        return self._fields(action["steer"], action["throttle"], action["brake"], ticks, done, reason)

    def _fields(self, steer, throttle, brake, ticks, done=False, reason=None) -> dict:
        hull = self.env.car.hull
        x, y = hull.position
        vx, vy = hull.linearVelocity
        yaw = math.remainder(hull.angle + math.pi / 2, 2 * math.pi)
        # acceleration in the car frame from the velocity change over this step (2D sim: no gravity)
        ax, ay = (vx - self._vel[0]) / (ticks * self.dt), (vy - self._vel[1]) / (ticks * self.dt)
        self._vel = (vx, vy)
        c, s = math.cos(yaw), math.sin(yaw)
        on_track = any(len(w.tiles) > 0 for w in self.env.car.wheels)
        lap = 1 if reason == "finish" else 0  # CarRacing ends the episode when the lap completes
        return {"x": x, "y": y, "yaw": yaw, "speed": math.hypot(vx, vy),
                "steer": steer, "throttle": throttle, "brake": brake,
                "accel_long": ax * c + ay * s, "accel_lat": -ax * s + ay * c,
                "yaw_rate": hull.angularVelocity, "lap": lap, "lap_dist": self._lap_dist(x, y),
                "on_track": on_track, "done": done, "reason": reason}

    def close(self) -> None:
        self.env.close()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bridge.games.carracing", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["lockstep", "realtime"], default="lockstep")
    ap.add_argument("--render", action="store_true", help="open a window (slows lockstep to 50 Hz)")
    ap.add_argument("--address", default=DEFAULT_LOCKSTEP_ADDRESS,
                    help="lockstep REP address; in real time it serves hello/track only")
    ap.add_argument("--pub", default=DEFAULT_PUB_ADDRESS, help="real-time telemetry PUB address")
    ap.add_argument("--pull", default=DEFAULT_PULL_ADDRESS, help="real-time action PULL address")
    ap.add_argument("--action-timeout", type=float, default=0.5)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    game = CarRacingGame(render=args.render)
    if args.mode == "lockstep":
        serve_lockstep(game, args.address)
    else:
        serve_realtime(game, args.pub, args.pull, info_address=args.address, action_timeout=args.action_timeout)


if __name__ == "__main__":
    main()
