"""Figures a person looks at rather than reads: the driven lap on the track map."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from surrogate.rollout import lap_trace  # noqa: E402
from surrogate.track import Track, reference_xy  # noqa: E402


def _edges(track: Track):
    x, y, h = (np.asarray(a) for a in (track.x, track.y, track.heading))
    nx, ny = -np.sin(h), np.cos(h)
    wl, wr = np.asarray(track.w_left), np.asarray(track.w_right)
    close = lambda a: np.append(a, a[0])  # noqa: E731
    return (close(x + nx * wl), close(y + ny * wl)), (close(x - nx * wr), close(y - ny * wr))


CONTROL_NAMES = ("steer", "throttle", "brake")


def plot_lap(track: Track, x: np.ndarray, y: np.ndarray, speed: np.ndarray, path: str | Path, title: str = "",
             controls: np.ndarray | None = None, dt: float | None = None) -> Path:
    """Track map with its edges, the reference line, and the driven line coloured by speed. With
    ``dt`` (the control period between the poses, s) a panel below traces the speed over the
    distance driven against the reference speed profile, with the running time gained or lost
    against the reference lap (``surrogate.rollout.lap_trace``): where the time goes. With
    ``controls`` ((T, 3) steer, throttle, brake as sent to the game, one row per pose) a panel under
    that shows them over the same distance, where jitter and pedal overlap are plain to see."""
    (lx, ly), (rx, ry) = _edges(track)
    # The figure takes the track's aspect ratio, so a long oval is not a thin strip in white space.
    aspect = (np.ptp(ly) + 1.0) / (np.ptp(lx) + 1.0)
    map_h = float(np.clip(9 * aspect, 3.5, 9))
    if controls is not None:
        if dt is None:
            raise ValueError("plot_lap: give dt (the control period in s) with controls")
        controls = np.asarray(controls)
        if controls.ndim != 2 or controls.shape[1] != len(CONTROL_NAMES) or controls.shape[0] != len(x):
            raise ValueError(f"plot_lap: controls must have shape ({len(x)}, 3) (steer, throttle, brake per step), "
                             f"got {controls.shape}")
    heights = [map_h] + ([2.6] if dt is not None else []) + ([2.0] if controls is not None else [])
    fig, axes = plt.subplots(len(heights), 1, figsize=(9, sum(heights) + 0.4 * (len(heights) - 1)), dpi=110,
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    ax = axes[0, 0]
    ax.plot(lx, ly, color="0.35", lw=0.8)
    ax.plot(rx, ry, color="0.35", lw=0.8)
    refx, refy = (np.asarray(a) for a in reference_xy(track))
    ax.plot(np.append(refx, refx[0]), np.append(refy, refy[0]), "--", color="tab:red", lw=0.8, label="reference line")
    sc = ax.scatter(x, y, c=speed * 3.6, s=3, cmap="viridis", label="driven line")
    fig.colorbar(sc, ax=ax, fraction=0.04, pad=0.02, label="speed (km/h)")
    ax.plot([track.x[0]], [track.y[0]], "k|", ms=18, mew=2)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="best", fontsize=8)
    if dt is not None:
        trace = lap_trace(track, x, y, dt)
        dist = trace["distance"]
        ax_v = axes[1, 0]
        ax_v.plot(dist, trace["ref_speed"] * 3.6, color="tab:red", lw=0.9, ls="--", label="reference speed")
        ax_v.plot(dist, np.asarray(speed) * 3.6, color="tab:blue", lw=1.0, label="driven speed")
        ax_v.set_ylabel("speed (km/h)")
        top = max(float(np.max(trace["ref_speed"])), float(np.max(speed))) * 3.6
        ax_v.set_ylim(None, top * 1.12)  # room for the legend above the traces
        ax_v.grid(alpha=0.3)
        ax_d = ax_v.twinx()
        ax_d.plot(dist, trace["delta"], color="0.2", lw=1.0, label="time lost to the reference")
        ax_d.set_ylabel("time lost (s)")
        lines = ax_v.get_lines() + ax_d.get_lines()
        ax_v.legend(lines, [ln.get_label() for ln in lines], loc="upper left", fontsize=8, ncol=3)
        ax_v.set_xlim(0.0, max(float(dist[-1]), 1.0))
    if controls is not None:
        ax_c = axes[-1, 0]
        along = trace["distance"]
        for i, (name, color) in enumerate(zip(CONTROL_NAMES, ("tab:blue", "tab:green", "tab:red"))):
            ax_c.plot(along, controls[:, i], lw=0.9, color=color, label=name)
        ax_c.set_xlim(0.0, max(float(along[-1]), 1.0))
        ax_c.set_ylim(-1.05, 1.05)
        ax_c.set_ylabel("controls")
        ax_c.grid(alpha=0.3)
        ax_c.legend(loc="lower right", fontsize=8, ncol=3)
    if len(heights) > 1:
        axes[-1, 0].set_xlabel("distance driven along the track (m)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
