"""surrogate.fit_regimes: windows labelled by what the car did, drawn so every regime weighs alike,
and errors reported per regime."""
import numpy as np
import pytest

from surrogate.fit_data import Windows
from surrogate.fit_regimes import (MIN_REGIME_WINDOWS, PEDALS, balanced_probabilities, format_regime_errors,
                                   regime_errors, speed_band_score, trusted_speed, window_regimes)

MAX_DELAY, HORIZON, DT = 2, 10, 0.05


def _windows(controls: list[tuple[float, float, float]], speeds: list[float]) -> Windows:
    n = len(controls)
    ctrl = np.zeros((n, MAX_DELAY + 1 + HORIZON, 3), np.float32)
    for i, c in enumerate(controls):
        ctrl[i, MAX_DELAY + 1:] = c  # the controls that drive the window
        ctrl[i, :MAX_DELAY + 1] = (0.0, 0.0, 1.0)  # before it: ignored
    init = np.zeros((n, 8), np.float32)
    init[:, 3] = speeds
    return Windows(init, ctrl, np.full((n, HORIZON), DT, np.float32), np.zeros((n, HORIZON, 5), np.float32),
                   np.zeros(n, int), np.arange(n))


def test_windows_are_labelled_by_their_opening_pedal_steering_and_speed_band():
    w = _windows([(0.0, 1.0, 0.0), (0.0, 0.5, 0.0), (0.0, 0.0, 0.0), (0.5, 0.0, 0.2), (-0.8, 0.0, 0.9)],
                 [3.0, 15.0, 25.0, 31.0, 55.0])
    r = window_regimes(w, MAX_DELAY, DT)
    assert [PEDALS[i] for i in r["pedal"]] == ["full throttle", "part throttle", "coast", "light brake", "hard brake"]
    assert list(r["steering"]) == [0, 0, 0, 1, 1]
    assert list(r["band"]) == [0, 1, 2, 3, 5]
    assert len(set(r["key"])) == 5


def test_balanced_draws_give_every_regime_the_same_weight_and_tiny_regimes_less():
    keys = np.array([0] * 900 + [1] * 100 + [2] * 5)
    p = balanced_probabilities(keys)
    assert p.sum() == pytest.approx(1.0)
    assert p[keys == 0].sum() == pytest.approx(p[keys == 1].sum())
    # five windows weigh as five of a regime of MIN_REGIME_WINDOWS, not as a whole regime
    assert p[keys == 2].sum() == pytest.approx(p[keys == 1].sum() * 5 / MIN_REGIME_WINDOWS)
    # drawn that way, the rare regime shows up far more often than its share of the windows
    draws = np.random.default_rng(0).choice(len(keys), 20000, p=p)
    assert np.mean(keys[draws] == 1) > 0.35 > 100 / 1005


def test_regime_errors_report_each_regimes_median_and_count():
    w = _windows([(0.0, 1.0, 0.0)] * 3 + [(0.0, 0.0, 0.9)] * 2, [5.0, 5.0, 5.0, 45.0, 45.0])
    pos = np.array([0.1, 0.2, 0.3, 2.0, 4.0])
    spd = np.array([1.0, 1.0, 1.0, 5.0, 7.0])
    rows = regime_errors(window_regimes(w, MAX_DELAY, DT), pos, spd)
    by = {(r["kind"], r["regime"]): r for r in rows}
    assert by[("pedal", "full throttle")] == {"kind": "pedal", "regime": "full throttle", "windows": 3,
                                              "pos_err_median": pytest.approx(0.2), "speed_err_median": 1.0}
    assert by[("pedal", "hard brake")]["pos_err_median"] == pytest.approx(3.0)
    assert by[("speed", "40-50 m/s")]["windows"] == 2 and ("pedal", "coast") not in by
    text = format_regime_errors(rows, 1.0)
    assert "pedal: hard brake" in text and "speed: 0-10 m/s" in text


def test_the_speed_band_score_weighs_every_covered_band_alike():
    band = np.array([0] * 100 + [5] * 25 + [9] * 3)
    pos = np.r_[np.full(100, 0.1), np.full(25, 2.0), np.full(3, 50.0)]
    spd = np.r_[np.full(100, 0.1), np.full(25, 1.0), np.full(3, 50.0)]
    # bands 0 and 5 count (3 windows in band 9 are too few): ((0.1 + 0.1) + (2 + 1)) / 0.5 / 2
    assert speed_band_score(band, pos, spd) == pytest.approx(3.2)
    # over all windows alike the slow majority would hide band 5 entirely: 0.4
    assert np.median(pos) / 0.5 + np.median(spd) / 0.5 == pytest.approx(0.4)
    assert speed_band_score(band[:3], pos[:3], spd[:3]) == pytest.approx(0.4)  # no band big enough: all windows


def _band_rows(errors: list[float], windows: list[int]) -> list[dict]:
    return [{"kind": "speed", "regime": f"{10 * b}-{10 * b + 10} m/s", "windows": n, "pos_err_median": e,
             "speed_err_median": 0.0, "speed_lo": 10.0 * b, "speed_hi": 10.0 * b + 10} for b, (e, n) in
            enumerate(zip(errors, windows))]


def test_the_fit_is_trusted_up_to_the_first_speed_band_off_by_more_than_a_metre_or_five_percent():
    carracing = [0.43, 0.58, 0.83, 1.03, 5.2, 6.4, 7.9]  # round 2's fit, 1 s ahead (docs/experiments.md)
    rows = [{"kind": "pedal", "regime": "coast", "windows": 99, "pos_err_median": 0.1, "speed_err_median": 0.1}]
    assert trusted_speed(rows + _band_rows(carracing, [300] * 7)) == 40.0  # 1.03 m is within 5% of 35 m
    assert trusted_speed(_band_rows([1.2] + carracing[1:], [300] * 7)) is None  # slow driving already off
    assert trusted_speed(_band_rows(carracing, [300, 300, 5, 300, 300, 300, 300])) == 20.0  # too few windows
    gap = _band_rows(carracing, [300] * 7)
    del gap[2]  # nothing recorded at 20-30 m/s: no trust beyond it
    assert trusted_speed(gap) == 20.0
    # with the 1 m floor alone (where the fit refits the steering servo) 1.03 m at 30-40 m/s is out
    assert trusted_speed(_band_rows(carracing, [300] * 7), fraction=0.0) == 30.0
