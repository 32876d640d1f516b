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


def plot_lap(track: Track, x: np.ndarray, y: np.ndarray, speed: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Track map with its edges, the reference line, and the driven line coloured by speed."""
    (lx, ly), (rx, ry) = _edges(track)
    # The figure takes the track's aspect ratio, so a long oval is not a thin strip in white space.
    aspect = (np.ptp(ly) + 1.0) / (np.ptp(lx) + 1.0)
    fig, ax = plt.subplots(figsize=(9, float(np.clip(9 * aspect, 3.5, 9))), dpi=110)
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
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
