"""benchmarks/seeds.py: runs over seeds summed up by their median and their worst, not their best."""
import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("seeds_benchmark", ROOT / "benchmarks" / "seeds.py")
seeds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(seeds)


def summary(tmp_path, name, gap, first, collapses=0, recoveries=0):
    d = tmp_path / name
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({"gap_pct": gap, "first_clean_lap_min": first, "best_lap_s": 35.0,
                                                "limit_s": 34.0, "env_steps": 1000, "collapses": collapses,
                                                "recoveries": recoveries}))
    return d


def test_a_run_without_a_lap_is_the_worst_and_the_median_is_of_all_runs(tmp_path):
    rows = [seeds.seed_row(summary(tmp_path, "a", 1.0, 2.5), 0),
            seeds.seed_row(summary(tmp_path, "b", float("nan"), float("nan"), collapses=1, recoveries=1), 1),
            seeds.seed_row(summary(tmp_path, "c", 3.0, 4.0), 2)]
    assert math.isinf(rows[1]["gap_pct"])
    line = seeds.summarise("oval", rows, 0.5)
    assert line == ("track=oval median_gap_pct=3.00 worst_gap_pct=inf median_first_lap_min=4.00 collapses=1 "
                    "recovered=1 tuned_baseline_gap_pct=0.50")


def test_nonsense_counts_are_refused():
    with pytest.raises(SystemExit, match="--seeds >= 1"):
        seeds.main(["oval", "--seeds", "0"])
