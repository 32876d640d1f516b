"""The quickstart over seeds: how good is a run, not the best one.

    python benchmarks/seeds.py oval --seeds 5 --budget-minutes 20
    python benchmarks/seeds.py flowing --seeds 3 --budget-minutes 60 --train-args "--preset paper"

Runs ``train_crossq.py --backend surrogate --track TRACK --seed S --budget-minutes B`` for seeds
0 .. N-1 one after another (runs sharing a CPU say little about a budget in wall-clock minutes),
then the tuned classical baseline once (``drive_baseline.py --tune``) as the bar to beat. Each run
keeps its directory under ``--out`` (default runs/seeds-<track>-<time>/seed-<s>/); the table of
runs goes to ``seeds.json`` there. A run without a clean lap counts with an infinite gap: the worst
gap is then ``inf``, as it should read. The last line is
``track=<name> median_gap_pct=<f> worst_gap_pct=<f> median_first_lap_min=<f> collapses=<n> recovered=<n> tuned_baseline_gap_pct=<f>``
(``collapses``: runs' critic collapses seen by ``racerl_jax.collapse``; ``recovered``: those rolled
back from).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from benchmarks.stages import run_logged  # noqa: E402

PY = sys.executable
BASELINE_LINE = re.compile(r"^baseline_best_lap_s=(\S+) limit_s=(\S+) gap_pct=(\S+)")


def seed_row(run_dir: Path, seed: int) -> dict:
    s = json.loads((run_dir / "summary.json").read_text())
    gap = s["gap_pct"]
    return {"seed": seed, "gap_pct": gap if gap is not None and math.isfinite(gap) else math.inf,
            "first_clean_lap_min": s["first_clean_lap_min"], "best_lap_s": s["best_lap_s"], "limit_s": s["limit_s"],
            "env_steps": s["env_steps"], "collapses": s.get("collapses", 0), "recoveries": s.get("recoveries", 0),
            "run_dir": str(run_dir)}


def summarise(track: str, rows: list[dict], baseline_gap: float) -> str:
    gaps = [r["gap_pct"] for r in rows]
    laps = [r["first_clean_lap_min"] for r in rows]
    laps = [v if v is not None and math.isfinite(v) else math.inf for v in laps]
    return (f"track={track} median_gap_pct={statistics.median(gaps):.2f} worst_gap_pct={max(gaps):.2f} "
            f"median_first_lap_min={statistics.median(laps):.2f} collapses={sum(r['collapses'] for r in rows)} "
            f"recovered={sum(r['recoveries'] for r in rows)} tuned_baseline_gap_pct={baseline_gap:.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("track", help="bundled track name or TUM-format CSV")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget-minutes", type=float, default=20.0, help="wall clock of each training run")
    ap.add_argument("--out", default="", help="default runs/seeds-<track>-<time>")
    ap.add_argument("--train-args", default="", help="extra train_crossq.py options, e.g. '--preset paper'")
    ap.add_argument("--baseline-args", default="", help="extra drive_baseline.py options, e.g. '--generations 5'")
    a = ap.parse_args(argv)
    if a.seeds < 1 or not a.budget_minutes > 0:
        raise SystemExit("seeds.py: --seeds >= 1 and --budget-minutes > 0")
    name = Path(a.track).stem
    out = Path(a.out or f"runs/seeds-{name}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in range(a.seeds):
        run_dir = out / f"seed-{seed}"
        line = run_logged([PY, "scripts/train_crossq.py", "--backend", "surrogate", "--track", a.track, "--seed", str(seed),
                           "--budget-minutes", str(a.budget_minutes), "--run-dir", str(run_dir), "--no-progress",
                           *a.train_args.split()], out / f"seed-{seed}.log")
        rows.append(seed_row(run_dir, seed))
        print(f"    seed {seed}: {line}", flush=True)
        (out / "seeds.json").write_text(json.dumps({"track": a.track, "runs": rows}, indent=1) + "\n")
    line = run_logged([PY, "scripts/drive_baseline.py", "--track", a.track, "--tune", "--run-dir", str(out / "baseline"),
                       *a.baseline_args.split()], out / "baseline.log")
    m = BASELINE_LINE.match(line)
    baseline_gap = float(m.group(3)) if m else math.nan
    print(f"    tuned baseline: {line}", flush=True)
    result = summarise(name, rows, baseline_gap)
    (out / "seeds.json").write_text(json.dumps({"track": a.track, "runs": rows, "tuned_baseline_gap_pct": baseline_gap,
                                                "line": result}, indent=1) + "\n")
    print(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
