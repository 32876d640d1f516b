"""Minimum lap time of a track for a point-mass car: the yardstick for a driver's lap times.

    python benchmarks/laptime_limit.py TRACK [--car reference|default] [--objective curvature|tum|time]
        [--speed-limit M/S] [--step 3.0]

TRACK is a TUM-format CSV path or a bundled track name. ``--car reference`` (default) is the car
of shared/reference/laptime-limits.md, so the figures compare with that table; ``--car default``
uses ``surrogate.car.CarParams()``. ``--objective tum`` (default) reproduces TUM's minimum-curvature
QP, the line behind the table, so the last line compares with it; ``curvature`` is the true
minimum-curvature line that the project uses as its limit (tighter: TUM's QP doubles the linear
term of its objective), printed with the TUM-compatible figure beside it; ``time`` the fastest line
between that one and the shortest path (``surrogate.laptime.min_time_offsets``), the line of a fitted
car held at a speed limiter (``--speed-limit`` caps the car's top speed as the env's limiter does).

Last line: lap_time_s=<float> line_length_m=<float>
"""
from __future__ import annotations

import argparse
import dataclasses
import time

from surrogate.laptime import LINES, OBJECTIVES, LapLimits, reference_line
from surrogate.track_io import load_track


def car_limits(which: str) -> LapLimits:
    if which == "reference":
        return LapLimits.reference()
    try:
        from surrogate.car import CarParams
    except ImportError as e:  # the car model is optional for the reference car
        raise SystemExit(f"--car default needs surrogate/car.py (CarParams), which cannot be imported: {e}") from e
    return LapLimits.from_car(CarParams())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("track", help="TUM-format CSV file or bundled track name")
    ap.add_argument("--car", choices=("reference", "default"), default="reference")
    ap.add_argument("--objective", choices=OBJECTIVES + LINES[1:], default="tum")
    ap.add_argument("--speed-limit", type=float, default=0.0, help="m/s cap on the car's top speed (0: none)")
    ap.add_argument("--step", type=float, default=3.0, help="resampling step in metres (TUM: 3.0)")
    ap.add_argument("--vehicle-width", type=float, default=2.0)
    ap.add_argument("--kappa-bound", type=float, default=0.12)
    args = ap.parse_args(argv)

    data = load_track(args.track)
    limits = car_limits(args.car)
    if args.speed_limit > 0.0:
        limits = dataclasses.replace(limits, v_max=min(limits.v_max, args.speed_limit))
    print(f"track: {data.name} ({args.track}), {data.n} points, centre line {data.length():.1f} m")
    print(f"car: {args.car} {limits.to_dict()}")
    print(f"flow: resample at {args.step} m, each line (width {args.vehicle_width} m, "
          f"|kappa| <= {args.kappa_bound} rad/m), forward/backward speed profile, flying lap")
    results = {}
    for objective in dict.fromkeys([args.objective, *OBJECTIVES, *LINES[1:]]):
        t0 = time.perf_counter()
        ref = reference_line(data, limits, args.vehicle_width, args.kappa_bound, args.step, objective=objective)
        results[objective] = ref
        print(f"{objective:>9} line: lap {ref.lap_time_s:.2f} s, length {ref.line_length_m:.1f} m, "
              f"speed {ref.resampled_speed.min():.1f}..{ref.resampled_speed.max():.1f} m/s "
              f"({time.perf_counter() - t0:.1f} s)")
    ref = results[args.objective]
    print(f"centre line (smoothed): length {ref.centre_length_m:.1f} m, lap {ref.centre_lap_time_s:.2f} s")
    print(f"lap_time_s={ref.lap_time_s:.3f} line_length_m={ref.line_length_m:.1f}")


if __name__ == "__main__":
    main()
