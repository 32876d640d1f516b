"""The same driver in the surrogate and on the game, side by side along the track: how far the two
drives agree and how far apart they are there.

A lap-time gap needs clean laps on both sides; before a driver laps, it says nothing. This compares
the first drive of each (``evaluate.py``'s ``agent_drive.npz``: both start from rest on the line,
with the deterministic policy) by distance along the track, up to where the shorter one ended: the
time each took to get there, and the speed each had at each point on the way. A driver that
follows its surrogate drive on the game for most of a lap, a few per cent slower, shows a fit that
transfers, whatever ended the drive.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import numpy as np

from surrogate.racing_line import first_reached

DRIVE_KEYS = ("progress", "speed", "dt", "done")


def first_drive(rows: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The first episode of a drive: distance along the track driven (m), time (s) and speed (m/s)
    after each step, from the per-step ``progress``, ``dt``, ``speed`` and ``done`` of a drive file."""
    missing = [k for k in DRIVE_KEYS if k not in rows]
    if missing:
        raise ValueError(f"a drive needs the per-step fields {', '.join(DRIVE_KEYS)}; missing {', '.join(missing)} "
                         "(evaluate.py writes them to <out>/agent_drive.npz)")
    done = np.flatnonzero(np.asarray(rows["done"], bool))
    end = int(done[0]) + 1 if done.size else len(rows["done"])
    if end == 0:
        raise ValueError("the drive has no steps")
    progress = np.asarray(rows["progress"], np.float64)[:end]
    return {"s": np.cumsum(progress), "t": np.cumsum(np.asarray(rows["dt"], np.float64)[:end]),
            "speed": np.asarray(rows["speed"], np.float64)[:end]}


def _first_reached(s: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    # values after each step; from rest at distance 0 before the first
    return first_reached(np.concatenate([[0.0], s]), np.concatenate([[values[0] if values.size else 0.0], values]), at)


def compare_drives(surrogate: Mapping[str, np.ndarray], game: Mapping[str, np.ndarray],
                   step_m: float = 5.0) -> dict[str, float]:
    """Distances each drive covered, the distance both covered (``common_m``), the game's time to it
    against the surrogate's (``time_gap_pct``, positive: the game is slower) and the speed difference
    on the way (mean and largest absolute, m/s, sampled every ``step_m`` metres)."""
    a, b = first_drive(surrogate), first_drive(game)
    ends = [float(np.max(d["s"])) for d in (a, b)]
    common = max(min(ends), 0.0)
    out = {"surrogate_m": ends[0], "game_m": ends[1], "common_m": common,
           "time_gap_pct": math.nan, "speed_diff_mps": math.nan, "speed_diff_max_mps": math.nan}
    if common < 2 * step_m:
        return out
    at = np.array([common])
    ta, tb = (float(_first_reached(d["s"], np.concatenate([[0.0], d["t"]])[1:], at)[0]) for d in (a, b))
    grid = np.arange(step_m, common + 1e-9, step_m)
    diff = np.abs(_first_reached(a["s"], a["speed"], grid) - _first_reached(b["s"], b["speed"], grid))
    out.update(time_gap_pct=float(100.0 * (tb / ta - 1.0)) if ta > 0 else math.nan,
               speed_diff_mps=float(diff.mean()), speed_diff_max_mps=float(diff.max()))
    return out


def plot_transfer(surrogate: Mapping[str, np.ndarray], game: Mapping[str, np.ndarray], path: str | Path,
                  title: str = "the same driver in the surrogate and on the game") -> Path | None:
    """Speed and elapsed time against distance along the track, both drives on one figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = first_drive(surrogate), first_drive(game)
    fig, (ax_v, ax_t) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for d, label, color in ((a, "surrogate", "tab:blue"), (b, "game", "tab:red")):
        ax_v.plot(d["s"], d["speed"] * 3.6, color=color, label=label)
        ax_t.plot(d["s"], d["t"], color=color, label=label)
    cmp = compare_drives(surrogate, game)
    ax_v.set_ylabel("speed (km/h)")
    ax_t.set_ylabel("time (s)")
    ax_t.set_xlabel("distance driven along the track (m)")
    ax_v.set_title(f"{title}\nagree over {cmp['common_m']:.0f} m: game {cmp['time_gap_pct']:+.1f}% time, "
                   f"speed off by {cmp['speed_diff_mps']:.1f} m/s on average")
    ax_v.legend()
    # Where they agree, and a little past it: a drive of several laps beside one of 50 m says nothing more.
    right = min(max(float(a["s"].max()), float(b["s"].max())), max(1.5 * cmp["common_m"], cmp["common_m"] + 100.0))
    for ax in (ax_v, ax_t):
        ax.grid(alpha=0.3)
        ax.set_xlim(0.0, right)
    shown = [d["t"][d["s"] <= right] for d in (a, b)]
    ax_t.set_ylim(0.0, 1.05 * max((float(t.max()) for t in shown if t.size), default=1.0))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def load_drive(path: str | Path) -> dict[str, np.ndarray]:
    """A drive file written by ``evaluate.py`` (``<out>/agent_drive.npz``); no pickles."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
