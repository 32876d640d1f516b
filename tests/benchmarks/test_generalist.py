"""benchmarks/generalist.py: the circuits' evaluations summed up; a circuit without a clean lap is the worst."""
import importlib.util
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("generalist_benchmark", ROOT / "benchmarks" / "generalist.py")
generalist = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generalist)


def report(rate, gap):
    return {"limit_s": 80.0, "agent": {"clean_lap_rate": rate, "gap_pct": gap, "best_lap_s": None}}


def test_the_rate_is_over_all_laps_and_a_circuit_without_a_clean_lap_has_an_infinite_gap():
    rows = [generalist.circuit_row("Monza", report(1.0, 3.0)), generalist.circuit_row("Spa", report(0.0, None)),
            generalist.circuit_row("Sochi", report(2 / 3, 5.0))]
    assert math.isinf(rows[1]["gap_pct"])
    assert generalist.summarise(rows) == "tracks=3 clean_lap_rate=0.56 median_gap_pct=5.00 worst_gap_pct=inf"


def test_a_folder_without_circuits_is_refused_naming_it(tmp_path):
    with pytest.raises(SystemExit, match="no \\*.csv circuits in"):
        generalist.main(["--circuits", str(tmp_path)])
