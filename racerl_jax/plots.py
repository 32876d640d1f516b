"""Figures a person looks at rather than reads: the driven lap on the track map."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

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
    """Track map with its edges, the reference line, and the driven line coloured by speed; with
    ``controls`` ((T, 3) steer, throttle, brake as sent to the game, one row per control period
    ``dt``) a panel below shows them over the lap, where jitter and pedal overlap are plain to see."""
    (lx, ly), (rx, ry) = _edges(track)
    # The figure takes the track's aspect ratio, so a long oval is not a thin strip in white space.
    aspect = (np.ptp(ly) + 1.0) / (np.ptp(lx) + 1.0)
    map_h = float(np.clip(9 * aspect, 3.5, 9))
    if controls is None:
        fig, ax = plt.subplots(figsize=(9, map_h), dpi=110)
    else:
        if dt is None:
            raise ValueError("plot_lap: give dt (the control period in s) with controls")
        controls = np.asarray(controls)
        if controls.ndim != 2 or controls.shape[1] != len(CONTROL_NAMES) or controls.shape[0] != len(x):
            raise ValueError(f"plot_lap: controls must have shape ({len(x)}, 3) (steer, throttle, brake per step), "
                             f"got {controls.shape}")
        fig, (ax, ax_c) = plt.subplots(2, 1, figsize=(9, map_h + 2.8), dpi=110,
                                       gridspec_kw={"height_ratios": [map_h, 2.4]})
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
    if controls is not None:
        t = np.arange(len(controls)) * dt
        for i, (name, color) in enumerate(zip(CONTROL_NAMES, ("tab:blue", "tab:green", "tab:red"))):
            ax_c.plot(t, controls[:, i], lw=0.9, color=color, label=name)
        ax_c.set_xlim(0.0, t[-1] if len(t) > 1 else 1.0)
        ax_c.set_ylim(-1.05, 1.05)
        ax_c.set_xlabel("time in lap (s)")
        ax_c.set_ylabel("controls")
        ax_c.grid(alpha=0.3)
        ax_c.legend(loc="lower right", fontsize=8, ncol=3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
