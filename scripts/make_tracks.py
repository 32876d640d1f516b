"""Write the project's bundled track layouts (tracks/*.csv) from their segment designs.

    python scripts/make_tracks.py                 # rewrite tracks/oval.csv, technical.csv, flowing.csv
    python scripts/make_tracks.py --out DIR       # write them somewhere else
    python scripts/make_tracks.py --preview DIR   # also draw a PNG of each (not committed)

The output is deterministic; a test regenerates it and compares it with the committed files.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from surrogate.track_io import BUNDLED_DIR, TrackData, load_track, save_track  # noqa: E402
from surrogate.trackgen import arc, from_segments, straight  # noqa: E402

STEP = 5.0
# Corner entries ease in over this many metres (clothoid-like), as real circuits do.
TRANSITION = 20.0


def _smooth_width(points: list[tuple[float, float]]):
    """Total width varying smoothly through (arc-length fraction, width) control points."""
    frac = np.array([p[0] for p in points] + [points[0][0] + 1.0])
    val = np.array([p[1] for p in points] + [points[0][1]])

    def width(s: np.ndarray, total: float) -> np.ndarray:
        u = (s / total - frac[0]) % 1.0 + frac[0]
        i = np.clip(np.searchsorted(frac, u, side="right") - 1, 0, len(points) - 1)
        t = (u - frac[i]) / (frac[i + 1] - frac[i])
        blend = 0.5 - 0.5 * np.cos(np.pi * t)  # cosine ease keeps the width's slope continuous
        return val[i] + (val[i + 1] - val[i]) * blend

    return width


def oval() -> TrackData:
    """A speedway oval: two straights, two constant-radius 180 degree turns, about 1.2 km."""
    segs = [straight(160), arc(92, 180), straight(320), arc(92, 180), straight(160)]
    return from_segments(segs, width=_smooth_width([(0.0, 13.0), (0.25, 14.0), (0.5, 13.0), (0.75, 14.0)]),
                         step=STEP, name="oval", transition=TRANSITION)


def technical() -> TrackData:
    """A tight club circuit, about 1.8 km: two hairpins, a chicane, esses and short straights."""
    segs = [
        straight(330),
        arc(20, 180),  # T1 hairpin at the end of the main straight
        straight(150),
        arc(40, -90),
        straight(190),
        arc(18, 180),  # northern hairpin
        straight(80),
        arc(25, -90),
        straight(40),
        arc(22, 30), arc(22, -60), arc(22, 30),  # chicane
        straight(60),
        arc(25, 90),
        straight(60),
        arc(20, -180),  # infield right-hand hairpin
        straight(40),
        arc(30, 90),
        straight(20),
        arc(30, 90),
        straight(20),
        arc(35, -50), arc(35, 50),  # esses
        straight(20),
        arc(40, 90),
        straight(80),
        arc(50, 30), arc(50, -30),  # kink onto the main straight
        straight(65),
    ]
    return from_segments(segs, width=_smooth_width([(0.0, 12.0), (0.3, 10.0), (0.6, 11.0), (0.85, 10.5)]),
                         step=STEP, name="technical", transition=TRANSITION)


def flowing() -> TrackData:
    """A fast flowing clockwise circuit, about 3 km: long sweepers, one slow corner, quick direction changes."""
    segs = [
        straight(450),
        arc(180, -60),
        straight(150),
        arc(120, 45), arc(150, -75),  # left flick into a long right-hander
        straight(250),
        arc(45, -110),  # the one slow corner
        straight(200),
        arc(250, 30), arc(100, -60),
        straight(150),
        arc(200, -40), arc(90, 90),  # fast right-left
        straight(320.5),
        arc(60, -90),
        straight(85.6),
        arc(120, -90),  # long right onto the main straight
        straight(100),
    ]
    return from_segments(segs, width=_smooth_width([(0.0, 14.0), (0.35, 12.0), (0.7, 13.0)]),
                         step=STEP, name="flowing", transition=TRANSITION)


LAYOUTS = {"oval": oval, "technical": technical, "flowing": flowing}


def write_tracks(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, build in LAYOUTS.items():
        path = out_dir / f"{name}.csv"
        save_track(build(), path)
        load_track(path)  # the written file must read back as a valid track
        paths.append(path)
    return paths


def _area(x: np.ndarray, y: np.ndarray) -> float:
    return abs(0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y)))


def preview(path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = load_track(path)
    h = np.arctan2(np.roll(d.y, -1) - np.roll(d.y, 1), np.roll(d.x, -1) - np.roll(d.x, 1))
    nx, ny = -np.sin(h), np.cos(h)
    fig, ax = plt.subplots(figsize=(8, 8))
    left = (d.x + d.w_left * nx, d.y + d.w_left * ny)
    right = (d.x - d.w_right * nx, d.y - d.w_right * ny)
    outer, inner = (right, left) if _area(*left) < _area(*right) else (left, right)
    ax.fill(*outer, color="0.55")
    ax.fill(*inner, color="white")
    ax.plot(*left, "k", lw=0.6)
    ax.plot(*right, "k", lw=0.6)
    ax.plot(d.x, d.y, "w--", lw=0.5)
    ax.annotate("", xy=(d.x[3], d.y[3]), xytext=(d.x[0], d.y[0]), arrowprops=dict(color="r", width=2))
    ax.set_aspect("equal")
    ax.set_title(f"{d.name}: {d.length():.0f} m, width {np.min(d.w_left + d.w_right):.1f}-"
                 f"{np.max(d.w_left + d.w_right):.1f} m")
    fig.savefig(png, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=BUNDLED_DIR, help="folder for the CSV files (default: tracks/)")
    ap.add_argument("--preview", type=Path, default=None, help="folder for PNG previews (not committed)")
    args = ap.parse_args(argv)
    for path in write_tracks(args.out):
        d = load_track(path)
        print(f"{path}: {d.n} points, {d.length():.0f} m")
        if args.preview is not None:
            args.preview.mkdir(parents=True, exist_ok=True)
            preview(path, args.preview / f"{path.stem}.png")


if __name__ == "__main__":
    main()
