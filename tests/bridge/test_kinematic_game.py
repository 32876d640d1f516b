"""The kinematic circle game's lap count: whole turns about the centre, whichever line is driven."""
from __future__ import annotations

import math

import pytest

from bridge.games.kinematic import KinematicCarGame


def _circle_at(game: KinematicCarGame, offset: float, turns: float) -> dict:
    """Drive at constant speed on a circle ``offset`` m inside the centre line for ``turns`` turns."""
    game.reset(0)
    radius = game.radius - offset
    x, y, _, _ = game._state
    ang = math.atan2(y, x)
    game._state = (radius * math.cos(ang), radius * math.sin(ang), ang + math.pi / 2, 10.0)
    steer = math.atan(game.wheelbase / radius) / game.max_steer
    ticks = int(turns * 2 * math.pi * radius / (10.0 * game.dt))
    f = None
    for _ in range(ticks):
        f = game.step({"steer": steer, "throttle": 0.0, "brake": 0.0}, 1)
        game._state = game._state[:3] + (10.0,)  # hold the speed: no drag in this game, no throttle needed
    return f


@pytest.mark.parametrize("offset", [-4.0, 0.0, 4.0])
def test_a_lap_is_a_whole_turn_about_the_centre_on_any_line(offset):
    game = KinematicCarGame()
    assert _circle_at(game, offset, 0.97)["lap"] == 0
    assert _circle_at(game, offset, 1.03)["lap"] == 1


def test_driving_backwards_counts_no_lap():
    game = KinematicCarGame()
    game.reset(0)
    x, y, _, _ = game._state
    game._state = (x, y, -math.pi / 2, 10.0)  # facing clockwise
    steer = -math.atan(game.wheelbase / game.radius) / game.max_steer
    for _ in range(int(1.2 * 2 * math.pi * game.radius / (10.0 * game.dt))):
        f = game.step({"steer": steer, "throttle": 0.0, "brake": 0.0}, 1)
        game._state = game._state[:3] + (10.0,)
    assert f["lap"] == 0  # a counter: never negative
