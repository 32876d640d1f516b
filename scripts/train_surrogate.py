"""Fit the surrogate car and track to a game from its recorded telemetry.

    python scripts/train_surrogate.py runs/rec-game [runs/rec-more ...] --out runs/fit-game [--track FILE]

Writes surrogate.json (for train_crossq.py --surrogate), car.json (for record_telemetry.py --car),
report.json, report.txt and plots to --out. The last line printed is
model=<chosen> pos_err_1s_median_m=<m> speed_err_1s_median_mps=<m/s> yaw_err_1s_median_rad=<rad> fit_minutes=<min>.
"""
from __future__ import annotations

from racerl_jax.surrogate_fit import main

if __name__ == "__main__":
    raise SystemExit(main())
