"""scripts/drive_baseline.py: tune the baseline to the car, save the tuning, drive it again from the file."""
import importlib.util
import json
import math
import re
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("drive_baseline", os.path.join(ROOT, "scripts", "drive_baseline.py"))
db = importlib.util.module_from_spec(_spec)
sys.modules["drive_baseline"] = db  # dataclasses look their module up while the script loads
_spec.loader.exec_module(db)


def _run(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["drive_baseline.py", *args])
    db.main()
    return capsys.readouterr().out


def test_tune_saves_a_tuning_that_drives_the_same_lap_again(tmp_path, monkeypatch, capsys):
    first = tmp_path / "tuned"
    # the kinematic model compiles in half the time; the tuning does not depend on the model
    out = _run(monkeypatch, capsys, "--tune", "--generations", "2", "--population", "16", "--knot-spacing", "200",
               "--model", "kinematic", "--edge-margin", "0.5", "--run-dir", str(first))
    saved = json.loads((first / "tuning.json").read_text())
    assert saved["track"] == "oval" and len(saved["speed_log"]) == 6  # 1218 m / 200 m
    # tuned inside edges half a metre narrower, and the tuning keeps that room where it is driven
    assert saved["edge_margin"] == 0.5 and "inside edges 0.5 m narrower" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("baseline_best_lap_s=") and (first / "lap.png").exists()

    again = _run(monkeypatch, capsys, "--tuning", str(first / "tuning.json"), "--model", "kinematic",
                 "--run-dir", str(tmp_path / "again"))
    assert again.strip().splitlines()[-1] == last


def test_tune_and_tuning_together_are_refused(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["drive_baseline.py", "--tune", "--tuning", "x.json"])
    with pytest.raises(SystemExit):
        db.parse()
    assert "exclude each other" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["drive_baseline.py", "--tune", "--edge-margin", "-1"])
    with pytest.raises(SystemExit):
        db.parse()
    assert "--edge-margin -1.0: give a distance in [0," in capsys.readouterr().err


def test_a_surrogate_file_drives_its_fitted_car_on_its_track_at_its_control_period(tmp_path, monkeypatch, capsys):
    from surrogate.car import CarParams
    from surrogate.surrogate_file import save_surrogate
    from surrogate.track_io import load_track

    fit = save_surrogate(tmp_path / "fit.json", "kinematic", CarParams(mu=0.7), load_track("oval"), dt=0.04)
    out = _run(monkeypatch, capsys, "--surrogate", str(fit), "--laps", "1", "--run-dir", str(tmp_path / "drive"))
    assert f"fitted car of {fit}" in out
    summary = json.loads((tmp_path / "drive" / "summary.json").read_text())
    # the file's period (0.04 s), not the default 0.05 s, sets the steps of the drive
    assert f"driving 1 laps ({math.ceil(summary['limit_s'] / 0.6 / 0.04)} steps max" in out
    assert summary["config"]["surrogate"] == str(fit)


def test_an_unreadable_surrogate_file_is_refused_with_its_name(tmp_path, monkeypatch):
    bad = tmp_path / "fit.json"
    bad.write_text("{")
    monkeypatch.setattr(sys, "argv", ["drive_baseline.py", "--surrogate", str(bad)])
    with pytest.raises(SystemExit, match="fit.json"):
        db.main()


def test_on_a_fitted_car_the_baseline_keeps_a_margin_under_the_speed_the_fit_is_trusted_to(tmp_path, monkeypatch, capsys):

    from surrogate.car import CarParams
    from surrogate.surrogate_file import save_surrogate
    from surrogate.track_io import load_track

    fit = save_surrogate(tmp_path / "fit.json", "kinematic", CarParams(mu=0.7), load_track("oval"), dt=0.04,
                         trusted_speed=35.0)
    out = _run(monkeypatch, capsys, "--surrogate", str(fit), "--laps", "1", "--run-dir", str(tmp_path / "drive"))
    assert "speed limiter at 25 m/s (a margin under the fit's trusted speed)" in out
    summary = json.loads((tmp_path / "drive" / "summary.json").read_text())
    pace = max(summary["limit_s"], 1218.0 / 25.0)  # the oval's ~1218 m at 25 m/s is slower than the reference
    steps = re.search(r"driving 1 laps \((\d+) steps max", out)
    assert steps and abs(int(steps.group(1)) - pace / 0.6 / 0.04) <= 2  # the track's length to a metre
    lap = summary["lap_times_s"][0]
    assert summary["lap_clean"] == [True] and lap > 1218.0 / 25.0 and math.isfinite(lap)
    assert summary["speed_limit_mps"] == 25.0
