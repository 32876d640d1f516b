"""benchmarks/sim_to_real.py: seeds summed up by their median and their worst, finished stages skipped
on a rerun."""
import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("sim_to_real_benchmark", ROOT / "benchmarks" / "sim_to_real.py")
s2r = importlib.util.module_from_spec(spec)
spec.loader.exec_module(s2r)


def report(times, clean, start="standing"):
    laps = [{"time_s": t, "clean": c, "start": start} for t, c in zip(times, clean)]
    return {"agent": {"laps": laps, "clean_lap_rate": sum(clean) / len(clean)},
            "baseline": {"laps": [{"time_s": 30.0, "clean": False, "start": start}], "clean_lap_rate": 0.0}}


AGREE = {"common_m": 900.0, "time_gap_pct": 1.0, "speed_diff_mps": 1.5}


def test_a_seed_without_a_game_lap_is_the_worst_and_lap_times_are_medians_of_the_seeds_that_lapped():
    rows = [s2r.seed_row(0, report([20.0, 22.0], [True, True]), report([20.0, 20.0], [True, True]), AGREE, None),
            s2r.seed_row(1, report([None], [False]), report([19.0], [True]), AGREE, None),
            s2r.seed_row(2, report([18.0], [True]), report([18.0], [True]), AGREE,
                         report([None], [False]))]
    assert rows[0]["transfer_gap_pct"] == pytest.approx(5.0)
    assert math.isinf(rows[1]["transfer_gap_pct"])
    line = s2r.summarise(rows, [])
    assert line.startswith("game_clean_lap_rate=1.00 game_mean_lap_s=19.50 surrogate_mean_lap_s=19.00 "
                           "transfer_gap_pct=5.0 baseline_game_lap_s=nan agree_m=900 ")
    assert "seeds=3 worst_game_clean_lap_rate=0.00 worst_transfer_gap_pct=inf" in line
    assert line.endswith("control_game_clean_lap_rate=0.00 control_game_mean_lap_s=nan")


def test_the_surrogate_lap_compared_is_from_rest_where_the_surrogate_drove_one():
    sur = report([15.0, 14.0], [True, True])
    sur["agent"]["laps"][1]["start"] = "flying"
    row = s2r.seed_row(0, report([15.3], [True]), sur, AGREE, None)
    assert row["surrogate_mean_lap_s"] == 15.0 and row["transfer_gap_pct"] == pytest.approx(2.0)


def test_a_finished_stage_is_skipped_on_a_rerun_and_a_failed_one_is_not(tmp_path):
    marker = tmp_path / "hits"
    cmd = [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x'); print('figures=1')"]
    s2r.stage("one", cmd, tmp_path / "one.log")
    s2r.stage("one", cmd, tmp_path / "one.log")
    assert marker.read_text() == "x" and (tmp_path / "one.done").exists()
    fail = [sys.executable, "-c", "raise SystemExit(3)"]
    with pytest.raises(SystemExit, match="failed"):
        s2r.stage("two", fail, tmp_path / "two.log")
    assert not (tmp_path / "two.done").exists()


def test_nonsense_counts_are_refused():
    with pytest.raises(SystemExit, match="--control-seeds"):
        s2r.main(["--seeds", "2", "--control-seeds", "3"])


def test_the_seeds_train_with_the_tuned_baselines_demonstrations_and_the_controls_with_their_own_baselines(tmp_path):
    fit, tuning = tmp_path / "fit", tmp_path / "baseline" / "tuning.json"
    plain = s2r.train_command(tmp_path, fit, tmp_path / "t", 1, 20.0, ["--reward", "stuck=5"])
    assert "--demos" not in plain and plain[-2:] == ["--reward", "stuck=5"]
    with pytest.raises(SystemExit, match="no tuned baseline"):
        s2r.train_command(tmp_path, fit, tmp_path / "t", 1, 20.0, [], demos=tuning)
    tuning.parent.mkdir()
    tuning.write_text("{}")
    cmd = s2r.train_command(tmp_path, fit, tmp_path / "t", 1, 20.0, [], demos=tuning)
    assert cmd[cmd.index("--demos") + 1] == str(tuning) and cmd[cmd.index("--surrogate") + 1] == str(fit / "surrogate.json")
    control = s2r.train_command(tmp_path, None, tmp_path / "c", 1, 20.0, [])
    assert control[control.index("--track") + 1] == str(tmp_path / "game_track.csv") and "--demos" not in control
    # the control on the default car: its own planned baseline demonstrates, not the fitted car's tuning
    control = s2r.train_command(tmp_path, None, tmp_path / "c", 1, 20.0, [], demos=tuning)
    assert control[control.index("--demos") + 1] == "baseline"
