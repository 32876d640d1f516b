import math

import pytest

from bridge.safety import SafetyConfig, SafetyLayer

N = {"steer": 0.0, "throttle": 0.0, "brake": 0.0}


def layer(**kw):
    return SafetyLayer(SafetyConfig(**kw))


def test_out_of_range_actions_are_clamped():
    s = layer(max_rate={"steer": 1e9, "throttle": 1e9, "brake": 1e9})
    r = s.filter({"steer": -3.0, "throttle": 1.5, "brake": -0.2}, now=0.0)
    assert r.action == {"steer": -1.0, "throttle": 1.0, "brake": 0.0} and "clamped" in r.reasons
    assert not r.truncate and s.stats.clamped == 1


def test_rate_limit_bounds_change_per_second():
    s = layer(max_rate={"steer": 5.0, "throttle": 10.0, "brake": 10.0})
    s.filter(N, now=0.0)
    r = s.filter({"steer": 1.0, "throttle": 1.0, "brake": 0.0}, now=0.02)
    assert r.action["steer"] == pytest.approx(0.1) and r.action["throttle"] == pytest.approx(0.2)
    assert "rate_limited" in r.reasons
    r = s.filter({"steer": 1.0, "throttle": 1.0, "brake": 0.0}, now=0.04)
    assert r.action["steer"] == pytest.approx(0.2)
    # a long pause does not grant an unlimited jump
    r = s.filter({"steer": -1.0, "throttle": 0.0, "brake": 0.0}, now=10.0)
    assert r.action["steer"] == pytest.approx(0.2 - 5.0 * 0.1)


def test_nan_action_gives_neutral_and_nan_observation_truncates():
    s = layer()
    r = s.filter({"steer": math.nan, "throttle": 1.0, "brake": 0.0}, now=0.0)
    assert r.action == N and r.reasons == ("nan_action",)
    r = s.filter({"steer": 0.0, "throttle": 0.1, "brake": 0.0}, observation=[0.0, math.inf], now=0.1)
    assert r.action == N and r.truncate and s.stats.nan_observations == 1
    assert s.filter({"steer": "x", "throttle": 0, "brake": 0}, now=0.2).reasons == ("nan_action",)


def test_stale_telemetry_watchdog_neutral_and_truncate():
    s = layer(stale_after_s=0.1)
    s.filter({"steer": 0.0, "throttle": 0.2, "brake": 0.0}, frame_age_s=0.01, now=0.0)
    r = s.filter({"steer": 0.0, "throttle": 1.0, "brake": 0.0}, frame_age_s=0.5, now=0.02)
    assert r.action == N and r.truncate and r.reasons == ("stale_telemetry",)
    r = s.filter({"steer": 0.0, "throttle": 1.0, "brake": 0.0}, frame_age_s=float("inf"), now=0.04)
    assert r.truncate and s.stats.stale == 2


def test_emergency_stop_latches_until_released():
    s = layer()
    s.estop("operator")
    for t in (0.0, 0.1):
        r = s.filter({"steer": 0.5, "throttle": 1.0, "brake": 0.0}, now=t)
        assert r.action == {"steer": 0.0, "throttle": 0.0, "brake": 1.0} and r.truncate
    s.release()
    s.reset()
    r = s.filter({"steer": 0.0, "throttle": 0.1, "brake": 0.0}, now=1.0)
    assert not r.truncate and r.action["throttle"] == pytest.approx(0.1)


def test_bad_config_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="max_rate"):
        SafetyConfig(max_rate={"steer": 0.0, "throttle": 1.0, "brake": 1.0})
