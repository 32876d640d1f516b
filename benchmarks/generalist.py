"""One driver for every circuit: trained on procedural tracks only, judged on real ones it never saw.

    python benchmarks/generalist.py [--budget-minutes 60] [--random 8] [--refresh-env-steps 50000]
                                    [--circuits ../shared/tracks/tum] [--laps 3]

1. ``train_crossq.py --backend surrogate --tracks random:N --tracks-refresh-env-steps R`` for the
   budget (the default car; N procedural tracks of ``surrogate.trackgen``, drawn afresh every R env
   steps);
2. ``evaluate.py --agent RUN --track CIRCUIT --laps L`` on every circuit in ``--circuits`` (the TUM
   racetrack database by default: twenty real circuits), zero-shot, its best agent.

Writes under ``--out`` (default runs/generalist-<time>/): the run, one evaluation per circuit and
``generalist.json``. A circuit without a clean lap counts with an infinite gap. The last line is
``tracks=<n> clean_lap_rate=<f> median_gap_pct=<f> worst_gap_pct=<f>`` (the clean-lap rate over all
laps asked on all circuits; gaps to each circuit's minimum-lap-time reference, of its best clean lap).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from benchmarks.stages import run_logged  # noqa: E402

PY = sys.executable
DEFAULT_CIRCUITS = ROOT.parent / "shared" / "tracks" / "tum"


def circuit_row(name: str, report: dict) -> dict:
    agent = report["agent"]
    gap = agent.get("gap_pct")
    return {"circuit": name, "clean_lap_rate": float(agent["clean_lap_rate"]),
            "gap_pct": float(gap) if gap is not None and math.isfinite(gap) else math.inf,
            "best_lap_s": agent.get("best_lap_s"), "limit_s": report.get("limit_s")}


def summarise(rows: list[dict]) -> str:
    gaps = [r["gap_pct"] for r in rows]
    return (f"tracks={len(rows)} clean_lap_rate={statistics.mean(r['clean_lap_rate'] for r in rows):.2f} "
            f"median_gap_pct={statistics.median(gaps):.2f} worst_gap_pct={max(gaps):.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-minutes", type=float, default=60.0)
    ap.add_argument("--random", type=int, default=8, help="procedural tracks trained on at once")
    ap.add_argument("--refresh-env-steps", type=int, default=50_000, help="draw them afresh this often (0: never)")
    ap.add_argument("--circuits", default=str(DEFAULT_CIRCUITS), help="a folder of TUM-format CSV circuits")
    ap.add_argument("--laps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="", help="default runs/generalist-<time>")
    ap.add_argument("--train-args", default="", help="extra train_crossq.py options")
    a = ap.parse_args(argv)
    circuits = sorted(Path(a.circuits).glob("*.csv"))
    if not circuits:
        raise SystemExit(f"generalist.py: no *.csv circuits in {a.circuits}; give --circuits a folder of TUM-format CSVs")
    if a.random < 1 or a.laps < 1 or not a.budget_minutes > 0:
        raise SystemExit("generalist.py: --random >= 1, --laps >= 1 and --budget-minutes > 0")
    out = Path(a.out or f"runs/generalist-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    train = out / "train"
    refresh = ["--tracks-refresh-env-steps", str(a.refresh_env_steps)] if a.refresh_env_steps else []
    line = run_logged([PY, "scripts/train_crossq.py", "--backend", "surrogate", "--tracks", f"random:{a.random}",
                       *refresh, "--budget-minutes", str(a.budget_minutes), "--seed", str(a.seed), "--run-dir",
                       str(train), "--no-progress", *a.train_args.split()], out / "train.log")
    print(f"    trained: {line}", flush=True)
    rows = []
    for csv in circuits:
        where = out / f"eval-{csv.stem}"
        line = run_logged([PY, "scripts/evaluate.py", "--agent", str(train), "--track", str(csv), "--laps", str(a.laps),
                           "--out", str(where), "--no-progress"], out / f"eval-{csv.stem}.log")
        rows.append(circuit_row(csv.stem, json.loads((where / "report.json").read_text())))
        print(f"    {csv.stem}: {line}", flush=True)
        (out / "generalist.json").write_text(json.dumps({"circuits": rows}, indent=1) + "\n")
    result = summarise(rows)
    (out / "generalist.json").write_text(json.dumps({"circuits": rows, "line": result}, indent=1) + "\n")
    print(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
