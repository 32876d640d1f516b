"""The plots a ``train_crossq.py`` run ends with: the learning curve and its best lap (with several
tracks, each track's best lap and the gap to the reference on each track)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from racerl_jax.lap_eval import LapEvaluator

BEST_LAP_PNG = "best_lap.png"
CURVE_PNG = "learning_curve.png"
TRACK_GAPS_PNG = "track_gaps.png"

# ----------------------------------------------------------------------------- plots


def plot_learning_curve(metrics_path: Path, png_path: Path, limit_s: float) -> Path:
    """Returns (training episodes and evaluation) and evaluation lap times against the limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from racerl_jax.logs import read_metrics

    rows = read_metrics(metrics_path)

    def series(key: str) -> tuple[list, list]:
        pts = [(r["env_steps"], r[key]) for r in rows if r.get(key) is not None and "env_steps" in r]
        return ([p[0] for p in pts], [p[1] for p in pts]) if pts else ([], [])

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for key, label in (("episode_return", "training episodes"), ("eval_return", "evaluation (deterministic)")):
        xs, ys = series(key)
        ax1.plot(xs, ys, label=label, marker="." if len(xs) < 50 else None)
    ax1.set_ylabel("return")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    xs, ys = series("eval_lap_s")
    ax2.plot(xs, ys, ".", label="clean evaluation lap")
    xs, ys = series("eval_best_lap_s")
    ax2.plot(xs, ys, "-", label="best so far")
    ax2.axhline(limit_s, color="tab:red", ls="--", lw=1, label=f"minimum-lap-time reference {limit_s:.2f} s")
    if not series("eval_lap_s")[0]:
        ax2.text(0.5, 0.5, "no clean lap yet", transform=ax2.transAxes, ha="center")
    ax2.set_ylabel("lap time (s)")
    ax2.set_xlabel("env steps")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


def plot_best_lap(track: Any, track_name: str, limit_s: float, evaluator: LapEvaluator, png_path: Path) -> Path:
    """The best clean lap on the track map and its controls over time; before any, the last
    evaluation's first episode."""
    from racerl_jax.plots import plot_lap

    if evaluator.best is not None:
        b = evaluator.best
        title = (f"CrossQ on {track_name}: best clean lap {float(b['lap_s']):.2f} s "
                 f"(limit {limit_s:.2f} s) at {int(b['env_steps'])} env steps")
        return plot_lap(track, b["x"], b["y"], b["speed"], png_path, title=title, controls=b["action"], dt=evaluator.dt)
    t = evaluator.last_traj
    if t is None:
        raise ValueError("plot_best_lap: no evaluation has run yet")
    done_at = np.flatnonzero(t["done"])
    seg = slice(0, int(done_at[0]) + 1 if done_at.size else len(t["x"]))
    title = f"CrossQ on {track_name}: no clean lap yet (last evaluation's first attempt)"
    return plot_lap(track, t["x"][seg], t["y"][seg], t["speed"][seg], png_path, title=title,
                    controls=t["action"][seg], dt=evaluator.dt)


def plot_track_gaps(metrics_path: Path, png_path: Path, tracks: Sequence[Any]) -> Path:
    """Each track's evaluation gap to its reference (``eval_gap_pct/<track>``) over the run, unseen
    tracks dashed, and the mean over the training tracks (and over the unseen ones) in black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from racerl_jax.logs import read_metrics

    rows = read_metrics(metrics_path)

    def series(key: str) -> tuple[list, list]:
        pts = [(r["env_steps"], r[key]) for r in rows if r.get(key) is not None and "env_steps" in r]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for t in tracks:
        xs, ys = series(f"eval_gap_pct/{t.name}")
        ax.plot(xs, ys, "--" if t.unseen else "-", marker=".", lw=1, label=t.name + (" (unseen)" if t.unseen else ""))
    for key, style, label in (("eval_mean_gap_pct", "k-", "mean, training tracks"),
                              ("eval_unseen_mean_gap_pct", "k--", "mean, unseen tracks")):
        xs, ys = series(key)
        if xs:
            ax.plot(xs, ys, style, lw=2, label=label)
    ax.set_ylabel("clean lap's gap to the reference (%)")
    ax.set_xlabel("env steps")
    ax.grid(alpha=0.3)
    if not any(series(f"eval_gap_pct/{t.name}")[0] for t in tracks):
        ax.text(0.5, 0.5, "no clean lap yet", transform=ax.transAxes, ha="center")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
