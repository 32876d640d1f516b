"""Minimum-lap-time reference: velocity profile, minimum-curvature line, and the TUM reference table."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from surrogate.laptime import (
    LapLimits,
    _CurvatureQP,
    lap_time,
    line_geometry,
    min_curvature_offsets,
    min_time_offsets,
    prepare_track,
    reference_line,
    velocity_profile,
)
from surrogate.track_io import TrackData, load_track

TUM_DIR = Path(__file__).resolve().parents[2].parent / "shared/tracks/tum"
# shared/reference/laptime-limits.md: (centre-line lap, min-curvature-line lap) in seconds.
TABLE = {"Monza": (125.78, 121.26), "Spielberg": (108.62, 105.21), "Catalunya": (135.98, 129.04)}


def circle(radius: float, n: int = 240, clockwise: bool = False, width: float = 6.0) -> TrackData:
    th = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    if clockwise:
        th = -th
    w = np.full(n, width)
    return TrackData("circle", radius * np.cos(th), radius * np.sin(th), w, w)


def drag_car() -> SimpleNamespace:
    # A stand-in with CarParams' field names: power-limited, with drag, rolling resistance, brakes.
    return SimpleNamespace(
        mass=1000.0, mu=1.2, g=9.81, engine_power=300e3, max_drive_force=9000.0,
        max_brake_force=16000.0, drag_coef=0.5, rolling_resistance=100.0,
    )


@pytest.mark.parametrize("clockwise", [False, True])
def test_circle_speed_is_the_cornering_limit_capped_by_top_speed(clockwise):
    radius = 50.0
    _, _, kappa, ds = line_geometry(circle(radius, clockwise=clockwise), np.zeros(240))
    assert np.allclose(kappa, (-1.0 if clockwise else 1.0) / radius, rtol=1e-3)
    v = velocity_profile(kappa, ds, LapLimits.reference())
    assert np.allclose(v, math.sqrt(10.0 * radius), rtol=1e-3)
    slow = LapLimits(a_lat_max=10.0, a_long_max=10.0, drive_force_per_mass=10.0, v_max=20.0)
    assert np.allclose(velocity_profile(kappa, ds, slow), 20.0)
    assert lap_time(np.full(240, 20.0), ds) == pytest.approx(2.0 * math.pi * radius / 20.0, rel=1e-3)


def test_standing_start_on_a_straight_matches_constant_acceleration():
    length, n = 1000.0, 1001
    kappa = np.zeros(n)
    fast = LapLimits(a_lat_max=10.0, a_long_max=10.0, drive_force_per_mass=10.0, v_max=1000.0)
    v = velocity_profile(kappa, 1.0, fast, closed=False)
    assert v[0] == 0.0
    assert v[-1] == pytest.approx(math.sqrt(2.0 * 10.0 * length), rel=1e-9)
    assert lap_time(v, 1.0, closed=False) == pytest.approx(math.sqrt(2.0 * length / 10.0), rel=1e-9)
    # Capped at 80 m/s: accelerate for 8 s over 320 m, then cruise the remaining 680 m.
    v = velocity_profile(kappa, 1.0, LapLimits.reference(), closed=False)
    assert v.max() == pytest.approx(80.0)
    assert lap_time(v, 1.0, closed=False) == pytest.approx(8.0 + 680.0 / 80.0, rel=1e-3)


def test_braking_to_a_stop_follows_the_braking_parabola():
    n, length = 201, 200.0
    s = np.linspace(0.0, length, n)
    v = velocity_profile(np.zeros(n), 1.0, LapLimits.reference(), closed=False, v_start=60.0, v_end=0.0)
    expected = np.minimum(np.minimum(np.sqrt(60.0**2 + 20.0 * s), 80.0), np.sqrt(20.0 * (length - s)))
    assert np.allclose(v, expected, atol=1e-6)


def test_closed_profile_is_periodic_and_independent_of_the_start_point():
    data = prepare_track(load_track("technical"), step=3.0)
    _, _, kappa, ds = line_geometry(data, np.zeros(data.n))
    limits = LapLimits.from_car(drag_car())
    v = velocity_profile(kappa, ds, limits)
    shift = data.n // 3
    v_rolled = velocity_profile(np.roll(kappa, -shift), np.roll(ds, -shift), limits)
    assert np.allclose(v_rolled, np.roll(v, -shift), atol=1e-9)
    # Across the seam the speed change stays within the car's longitudinal limits.
    grip = limits.a_long_max + limits.resistance(v.max())
    assert abs(v[0] ** 2 - v[-1] ** 2) <= 2.0 * grip * ds[-1] + 1e-9
    assert v.max() <= limits.v_max + 1e-9


def test_from_car_top_speed_is_where_power_meets_drag_and_limits_round_trip_json():
    car = drag_car()
    limits = LapLimits.from_car(car)
    v = limits.v_max
    assert car.engine_power / v == pytest.approx(car.drag_coef * v * v + car.rolling_resistance, rel=1e-6)
    assert limits.a_lat_max == pytest.approx(1.2 * 9.81)
    assert limits.brake_force_per_mass == pytest.approx(16.0)
    assert LapLimits(**json.loads(json.dumps(limits.to_dict()))) == limits
    # On a long straight the car approaches that top speed and never passes it.
    speed = velocity_profile(np.zeros(3001), 1.0, limits, closed=False)
    assert v * 0.97 < speed[-1] <= v + 1e-9


def test_from_car_without_drag_or_top_speed_names_the_problem():
    car = drag_car()
    car.drag_coef = 0.0
    with pytest.raises(ValueError, match="drag_coef"):
        LapLimits.from_car(car)
    with pytest.raises(ValueError, match="mass"):
        LapLimits.from_car(SimpleNamespace(mu=1.0, g=9.81, max_drive_force=1.0))


def test_bad_inputs_are_rejected_with_the_fix():
    with pytest.raises(ValueError, match="ds has shape"):
        velocity_profile(np.zeros(10), np.ones(9), LapLimits.reference(), closed=True)
    with pytest.raises(ValueError, match="a_lat_max"):
        LapLimits(a_lat_max=0.0, a_long_max=10.0, drive_force_per_mass=10.0, v_max=80.0)
    with pytest.raises(ValueError, match="narrower than the vehicle width"):
        min_curvature_offsets(circle(50.0, width=0.8), vehicle_width=2.0)
    with pytest.raises(ValueError, match="objective"):
        min_curvature_offsets(circle(50.0), objective="shortest")


def test_min_curvature_offsets_stay_inside_the_widths_less_half_the_car():
    data = prepare_track(load_track("technical"), step=3.0)
    offsets = min_curvature_offsets(data, vehicle_width=2.0)
    assert np.all(offsets <= data.w_left - 1.0 + 1e-6)
    assert np.all(offsets >= -(data.w_right - 1.0) - 1e-6)
    # The line really uses the track: it touches both sides somewhere.
    assert offsets.max() > data.w_left.min() - 1.5 and offsets.min() < -(data.w_right.min() - 1.5)


def test_curvature_objective_has_less_summed_curvature_than_tums_qp():
    data = prepare_track(load_track("technical"), step=3.0)
    lo, hi = -(data.w_right - 1.0), data.w_left - 1.0
    qp = _CurvatureQP(data, lo, hi, 0.12)
    ours = qp.cost(min_curvature_offsets(data))
    tum = qp.cost(min_curvature_offsets(data, objective="tum"))
    centre = qp.cost(np.zeros(data.n))
    assert ours < tum < centre


def test_min_curvature_line_laps_faster_than_the_centre_line():
    data = load_track("technical")
    ref = reference_line(data, LapLimits.reference())
    assert ref.lap_time_s < 0.97 * ref.centre_lap_time_s
    for arr in (ref.offsets, ref.x, ref.y, ref.kappa, ref.speed):
        assert arr.shape == (data.n,)
    # Carried back onto the input's points, the line is still the optimised one.
    nx, ny = -np.gradient(data.y), np.gradient(data.x)
    norm = np.hypot(nx, ny)
    lateral = ((ref.x - data.x) * nx + (ref.y - data.y) * ny) / norm
    assert np.allclose(lateral, ref.offsets, atol=0.1)
    assert np.all(ref.speed <= 80.0 + 1e-9) and ref.speed.min() > 5.0


def _line_lap(data: TrackData, offsets: np.ndarray, limits: LapLimits) -> tuple[float, float]:
    _, _, kappa, ds = line_geometry(data, offsets)
    return lap_time(velocity_profile(kappa, ds, limits), ds), float(np.sum(ds))


def test_at_a_speed_cap_the_minimum_time_line_is_shorter_and_faster_than_the_minimum_curvature_line():
    # grip to spare and a cap that binds everywhere: the lap is the line's length over the cap, so
    # the fastest line is close to the shortest path; the minimum-curvature line swings wide
    data = prepare_track(load_track("oval"), step=3.0)
    capped = LapLimits(a_lat_max=40.0, a_long_max=40.0, drive_force_per_mass=20.0, v_max=30.0)
    curv_s, curv_m = _line_lap(data, min_curvature_offsets(data), capped)
    offsets, weight = min_time_offsets(data, capped)
    fast_s, fast_m = _line_lap(data, offsets, capped)
    assert weight > 0.0 and fast_m < 0.97 * curv_m and fast_s < 0.97 * curv_s
    assert np.all(offsets <= data.w_left - 1.0 + 1e-6) and np.all(offsets >= -(data.w_right - 1.0) - 1e-6)
    # the reference line of that objective is this line, timed the same way
    ref = reference_line(load_track("oval"), capped, objective="time")
    assert ref.lap_time_s == pytest.approx(fast_s, rel=1e-6) and ref.line_length_m == pytest.approx(fast_m, rel=1e-6)


def test_on_a_low_grip_car_the_minimum_time_line_is_never_slower_than_the_minimum_curvature_line():
    # the tyres set the pace in every corner here; the search still starts from the minimum-curvature
    # line and keeps it unless a shorter one laps faster
    data = prepare_track(load_track("oval"), step=3.0)
    low_grip = LapLimits(a_lat_max=4.0, a_long_max=4.0, drive_force_per_mass=4.0, v_max=80.0)
    offsets, _ = min_time_offsets(data, low_grip)
    assert _line_lap(data, offsets, low_grip)[0] <= _line_lap(data, min_curvature_offsets(data), low_grip)[0] + 1e-9
    assert np.all(offsets <= data.w_left - 1.0 + 1e-6) and np.all(offsets >= -(data.w_right - 1.0) - 1e-6)


tum_tracks = pytest.mark.skipif(not TUM_DIR.is_dir(), reason=f"TUM tracks not found at {TUM_DIR}")


@pytest.fixture(scope="module")
def table_results():
    cache: dict[tuple[str, str], object] = {}

    def get(name: str, objective: str):
        if (name, objective) not in cache:
            data = load_track(TUM_DIR / f"{name}.csv")
            cache[name, objective] = reference_line(data, LapLimits.reference(), objective=objective)
        return cache[name, objective]

    return get


@tum_tracks
@pytest.mark.parametrize("name", sorted(TABLE))
def test_tum_flow_lands_within_1p5_percent_of_the_reference_table(name, table_results):
    centre, line = TABLE[name]
    ref = table_results(name, "tum")
    assert ref.centre_lap_time_s == pytest.approx(centre, rel=0.015)
    assert ref.lap_time_s == pytest.approx(line, rel=0.015)


@tum_tracks
@pytest.mark.parametrize("name", sorted(TABLE))
def test_true_minimum_curvature_line_is_faster_than_the_table_line(name, table_results):
    ours = table_results(name, "curvature")
    assert ours.lap_time_s < table_results(name, "tum").lap_time_s
    assert np.abs(ours.kappa).max() <= 0.12 * 1.05


@tum_tracks
def test_curvature_line_respects_the_curvature_bound_in_a_hairpin():
    # Norisring's hairpin folds TUM's single linearised QP into a loop; re-linearising does not.
    data = load_track(TUM_DIR / "Norisring.csv")
    ref = reference_line(data, LapLimits.reference())
    _, _, kappa, _ = line_geometry(ref.resampled, ref.resampled_offsets)
    assert np.abs(kappa).max() <= 0.12 * 1.05
