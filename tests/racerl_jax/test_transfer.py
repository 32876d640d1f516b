"""racerl_jax.transfer: the surrogate's drive and the game's, compared by distance along the track."""
import math

import numpy as np
import pytest

from racerl_jax.transfer import compare_drives, first_drive, load_drive, plot_transfer


def drive(speed, steps, dt=0.1, end=None, episodes=2):
    """``episodes`` drives at a constant speed, each ``steps`` long, the first ended at ``end``."""
    n = steps * episodes
    done = np.zeros(n, bool)
    done[(end if end is not None else steps) - 1] = True
    done[-1] = True
    return {"progress": np.full(n, speed * dt), "speed": np.full(n, speed), "dt": np.full(n, dt), "done": done,
            "x": np.zeros(n)}


def test_drives_agree_up_to_the_shorter_first_drive_and_the_slower_game_shows_as_a_time_gap():
    sur, game = drive(20.0, 100), drive(16.0, 100, end=60)
    cmp = compare_drives(sur, game)
    assert cmp["surrogate_m"] == pytest.approx(200.0) and cmp["game_m"] == pytest.approx(96.0)
    assert cmp["common_m"] == pytest.approx(96.0)
    assert cmp["time_gap_pct"] == pytest.approx(25.0, abs=0.5)  # 20/16 - 1
    assert cmp["speed_diff_mps"] == pytest.approx(4.0) and cmp["speed_diff_max_mps"] == pytest.approx(4.0)
    same = compare_drives(sur, sur)
    assert same["time_gap_pct"] == pytest.approx(0.0, abs=1e-9) and same["speed_diff_mps"] == 0.0


def test_seconds_stood_still_at_the_end_of_a_drive_do_not_count_as_time_to_get_there():
    sur = drive(20.0, 100)
    game = drive(20.0, 100, end=80)
    game["progress"][50:80] = 0.0  # stuck: 3 s at rest before the episode ended
    game["speed"][50:80] = 0.0
    cmp = compare_drives(sur, game)
    assert cmp["common_m"] == pytest.approx(100.0) and cmp["time_gap_pct"] == pytest.approx(0.0, abs=1e-6)


def test_a_drive_that_never_got_going_agrees_over_nothing_and_says_so_with_nan():
    cmp = compare_drives(drive(20.0, 100), drive(0.0, 30))
    assert cmp["common_m"] == 0.0 and math.isnan(cmp["time_gap_pct"]) and math.isnan(cmp["speed_diff_mps"])


def test_a_drive_without_its_per_step_fields_is_refused_with_what_writes_them():
    rows = drive(20.0, 10)
    del rows["progress"]
    with pytest.raises(ValueError, match="missing progress.*agent_drive.npz"):
        first_drive(rows)


def test_the_plot_and_a_saved_drive_round_trip(tmp_path):
    sur, game = drive(20.0, 50), drive(18.0, 50)
    np.savez_compressed(tmp_path / "agent_drive.npz", **sur)
    back = load_drive(tmp_path / "agent_drive.npz")
    assert compare_drives(back, game)["common_m"] == pytest.approx(90.0)
    png = plot_transfer(back, game, tmp_path / "transfer.png")
    assert png.stat().st_size > 10_000
