"""What the car was doing in each of the fit's windows (pedal, steering, speed band), so the fit can
weigh rare manoeuvres as much as the steady driving around them, and the report can show where a
model is wrong.

A recording is mostly steady driving: in 10 minutes of CarRacing with the probe, coasting below
20 m/s is half the frames and full-throttle launches about 2%. A loss averaged over windows drawn
uniformly then barely sees a launch, and the median error hides it: the fit that printed 0.27 m and
0.47 m/s one second ahead accelerated at 90 m/s^2 from rest where the game does 44, and a driver
trained on it met a different car at the first corner. Drawing the windows in inverse proportion
to their regime's share (``balanced_probabilities``) makes every regime the recording covers count
alike; ``regime_errors`` reports each regime's error, so a user sees which manoeuvre the model
gets wrong.
"""
from __future__ import annotations

import numpy as np

from surrogate.fit_data import Windows

PEDALS = ("full throttle", "part throttle", "coast", "light brake", "hard brake")
STEERING = ("straight", "steering")
SPEED_BAND = 10.0  # m/s
# Thresholds on the window's opening controls (the first LOOK_S seconds, the part that decides
# where the window goes): a brake press anywhere in it, else the mean throttle.
LOOK_S = 0.5
HARD_BRAKE = 0.5
LIGHT_BRAKE = 0.05
FULL_THROTTLE = 0.9
PART_THROTTLE = 0.05
STEERING_ABS = 0.3  # |steer| reached in the opening
# A regime with fewer windows than this is weighed as if it had this many: a handful of windows is
# noise, and weighing each of them like a whole regime would fit the noise.
MIN_REGIME_WINDOWS = 20


def window_regimes(w: Windows, max_delay: int, dt: float) -> dict[str, np.ndarray]:
    """Per window: ``pedal`` (index into PEDALS), ``steering`` (index into STEERING), ``band`` (speed
    band index, SPEED_BAND m/s wide) and ``key`` (one integer per combination)."""
    look = max(1, int(round(LOOK_S / dt)))
    c = w.controls[:, max_delay + 1: max_delay + 1 + look]
    throttle, brake, steer = c[..., 1].mean(axis=1), c[..., 2].max(axis=1), np.abs(c[..., 0]).max(axis=1)
    pedal = np.select([brake >= HARD_BRAKE, brake >= LIGHT_BRAKE, throttle >= FULL_THROTTLE, throttle >= PART_THROTTLE],
                      [4, 3, 0, 1], default=2)
    steering = (steer >= STEERING_ABS).astype(int)
    band = np.floor(np.hypot(w.init[:, 3], w.init[:, 4]) / SPEED_BAND).astype(int)
    key = (band * len(PEDALS) + pedal) * len(STEERING) + steering
    return {"pedal": pedal, "steering": steering, "band": band, "key": key}


def balanced_probabilities(keys: np.ndarray, min_windows: int = MIN_REGIME_WINDOWS) -> np.ndarray:
    """Sampling probabilities that give every regime (``keys``) the same total weight, a regime
    with fewer than ``min_windows`` windows proportionally less."""
    if len(keys) == 0:
        return np.zeros(0)
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    w = 1.0 / np.maximum(counts, min_windows)[inverse]
    return w / w.sum()


def regime_errors(regimes: dict[str, np.ndarray], pos: np.ndarray, speed: np.ndarray) -> list[dict]:
    """Median position and speed errors (one horizon's column per window) per pedal regime, per
    steering regime and per speed band; each row names its regime and counts its windows."""
    rows = []

    def add(kind: str, name: str, sel: np.ndarray, **extra) -> None:
        if sel.any():
            rows.append({"kind": kind, "regime": name, "windows": int(sel.sum()),
                         "pos_err_median": float(np.median(pos[sel])), "speed_err_median": float(np.median(speed[sel])),
                         **extra})

    for i, name in enumerate(PEDALS):
        add("pedal", name, regimes["pedal"] == i)
    for i, name in enumerate(STEERING):
        add("steering", name, regimes["steering"] == i)
    for b in np.unique(regimes["band"]):
        lo, hi = float(b * SPEED_BAND), float((b + 1) * SPEED_BAND)
        add("speed", f"{lo:.0f}-{hi:.0f} m/s", regimes["band"] == b, speed_lo=lo, speed_hi=hi)
    return rows


# A speed band is one the fit can be trusted in when its median position error one second ahead is
# within TRUST_FLOOR_M or TRUST_FRACTION of the distance the car covers in that second, whichever is
# more. On CarRacing's probe and driver recordings: 0.4-1.0 m up to 40 m/s, then 5-11 m.
TRUST_FLOOR_M = 1.0
TRUST_FRACTION = 0.05


def trusted_speed(rows: list[dict], min_windows: int = MIN_REGIME_WINDOWS, fraction: float = TRUST_FRACTION) -> float | None:
    """The top of the speed bands, contiguous from standstill, each with at least ``min_windows``
    windows, whose error 1 s ahead (``regime_errors`` rows) is within max(TRUST_FLOOR_M, ``fraction``
    of the distance); None when the slowest band already is not. What ``--speed-limit`` can hold a
    driver to in training; with ``fraction`` 0, where the fit refits the steering servo."""
    bands = sorted((r for r in rows if r["kind"] == "speed"), key=lambda r: r["speed_lo"])
    top = None
    for r in bands:
        mid = 0.5 * (r["speed_lo"] + r["speed_hi"])
        ok = r["windows"] >= min_windows and r["pos_err_median"] <= max(TRUST_FLOOR_M, fraction * mid)
        if not ok or r["speed_lo"] != (top if top is not None else 0.0):
            break
        top = r["speed_hi"]
    return top


def speed_band_score(band: np.ndarray, pos: np.ndarray, speed: np.ndarray, min_windows: int = MIN_REGIME_WINDOWS,
                     goal: float = 0.5) -> float:
    """Median position plus speed error, each over ``goal``, averaged over the speed bands with at
    least ``min_windows`` windows (all windows alike where no band has that many)."""
    per_band = [np.median(pos[band == b]) / goal + np.median(speed[band == b]) / goal
                for b in np.unique(band) if np.sum(band == b) >= min_windows]
    if not per_band:
        return float(np.median(pos) / goal + np.median(speed) / goal)
    return float(np.mean(per_band))


def format_regime_errors(rows: list[dict], horizon_s: float) -> str:
    lines = [f"held-out error {horizon_s:g} s ahead by regime (median):",
             f"  {'regime':<24} {'windows':>8} {'pos m':>8} {'speed m/s':>10}"]
    for r in rows:
        lines.append(f"  {r['kind'] + ': ' + r['regime']:<24} {r['windows']:8d} {r['pos_err_median']:8.3f} "
                     f"{r['speed_err_median']:10.3f}")
    return "\n".join(lines)
