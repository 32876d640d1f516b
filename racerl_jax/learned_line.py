"""``--reference-line laps:RUN_DIR[,RUN_DIR...]``: the reward's and the plots' reference line learned
from the clean laps a driver has already driven (``surrogate.racing_line``), in place of the
minimum-curvature line, once the driver is faster than that line allows.

The laps come from each run directory: the training run's best evaluation lap (``best_lap.npz``) and
every drive ``evaluate.py`` wrote under it (``*_drive.npz``, the agent's and not the baseline's).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from surrogate.laptime import LINE_NAMES, LapLimits, Reference
from surrogate.racing_line import RacingLineError, laps_from_drive, line_from_laps
from surrogate.track_io import TrackData

LAPS_PREFIX = "laps:"


def parse_reference_line(text: str | None) -> list[Path]:
    """The run directories of ``laps:DIR[,DIR...]``; [] for a computed line (None, "",
    ``surrogate.laptime.LINE_NAMES``)."""
    if not text or text in LINE_NAMES:
        return []
    if not text.startswith(LAPS_PREFIX) or not text[len(LAPS_PREFIX):].strip(","):
        raise ValueError(f"--reference-line {text!r}: give {' or '.join(LINE_NAMES)} or laps:RUN_DIR[,RUN_DIR...] "
                         "(runs whose clean laps the line is learned from)")
    return [Path(p) for p in text[len(LAPS_PREFIX):].split(",") if p]


def laps_from_run(run_dir: str | Path) -> list[dict[str, np.ndarray]]:
    """The clean laps a run directory holds: its best evaluation lap and its evaluations' agent drives."""
    from racerl_jax.lap_eval import BEST_LAP_FILE  # here: lap_eval needs racing_setup, which needs this module

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RacingLineError(f"--reference-line: {run_dir} is not a directory; give a training run directory")
    laps = []
    best = run_dir / BEST_LAP_FILE
    if best.is_file():
        with np.load(best, allow_pickle=False) as f:
            x, y, lap_s = f["x"], f["y"], float(f["lap_s"])
        if np.isfinite(lap_s) and x.size > 10:
            laps.append({"x": x, "y": y, "t": np.linspace(0.0, lap_s, x.size)})
    for drive in sorted(run_dir.glob("**/agent_drive.npz")):
        with np.load(drive, allow_pickle=False) as f:
            laps.extend(laps_from_drive({k: f[k] for k in f.files}))
    return laps


def learned_reference(spec: str | None, data: TrackData, limits: LapLimits, vehicle_width: float) -> Reference | None:
    """The line of ``--reference-line`` laps:... for ``data`` and a car of ``limits`` (None: a computed line)."""
    runs = parse_reference_line(spec)
    if not runs:
        return None
    laps = [lap for run in runs for lap in laps_from_run(run)]
    if not laps:
        raise RacingLineError(f"--reference-line {spec}: no clean lap in {', '.join(map(str, runs))} (a run's "
                              "best lap, or evaluate.py's agent_drive.npz under it); train or evaluate first")
    return line_from_laps(data, laps, limits, vehicle_width=vehicle_width)[0]
