"""The track as the dashboard draws it (``track.json``: the centre line, its widths and, from a
training run, the reference line), and the projection of poses onto it (lap distance)."""

from __future__ import annotations

import math

import numpy as np

PROJECT_CHUNK = 1024  # poses projected at once (memory: chunk x track points)


class Track:
    """The centre line, its edges and the reference line of ``track.json``, and the projection of
    poses onto it (lap distance)."""

    def __init__(self, doc: dict) -> None:
        try:
            self.x, self.y = np.asarray(doc["x"], float), np.asarray(doc["y"], float)
            w_left, w_right = np.asarray(doc["w_left"], float), np.asarray(doc["w_right"], float)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"track.json needs x, y, w_left and w_right lists of numbers ({e})") from None
        if not (len(self.x) >= 3 and self.x.shape == self.y.shape == w_left.shape == w_right.shape):
            raise ValueError("track.json: x, y, w_left and w_right must be lists of the same length >= 3")
        self.name = str(doc.get("name") or "")
        seg = np.hypot(np.diff(self.x, append=self.x[0]), np.diff(self.y, append=self.y[0]))
        self.s = np.concatenate([[0.0], np.cumsum(seg)[:-1]])
        self.length = float(seg.sum())
        heading = np.arctan2(np.roll(self.y, -1) - np.roll(self.y, 1), np.roll(self.x, -1) - np.roll(self.x, 1))
        nx, ny = -np.sin(heading), np.cos(heading)
        self.left = (self.x + nx * w_left, self.y + ny * w_left)
        self.right = (self.x - nx * w_right, self.y - ny * w_right)
        self.ref = (np.asarray(doc["ref_x"], float), np.asarray(doc["ref_y"], float)) if "ref_x" in doc else None
        self.ref_speed = np.asarray(doc["ref_speed"], float) if "ref_speed" in doc else None
        limit = doc.get("limit_s")
        self.limit_s = float(limit) if isinstance(limit, (int, float)) else math.nan

    def project(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Arc length (m from the start line) of each pose's nearest point on the centre line: the
        nearest vertex, then the nearer of its two segments (a vertex alone would make the traces
        steps as wide as the track file's spacing)."""
        x, y = np.asarray(x, float), np.asarray(y, float)
        out = np.full(len(x), np.nan)
        m = len(self.x)
        for lo in range(0, len(x), PROJECT_CHUNK):
            px, py = x[lo:lo + PROJECT_CHUNK], y[lo:lo + PROJECT_CHUNK]
            ok = np.isfinite(px) & np.isfinite(py)
            if not ok.any():
                continue
            px, py = px[ok], py[ok]
            i = np.argmin((px[:, None] - self.x[None]) ** 2 + (py[:, None] - self.y[None]) ** 2, axis=1)
            best_s, best_d = np.zeros(len(px)), np.full(len(px), np.inf)
            for a in ((i - 1) % m, i):  # the segment ending at the vertex and the one starting there
                b = (a + 1) % m
                sx, sy = self.x[b] - self.x[a], self.y[b] - self.y[a]
                seg2 = np.maximum(sx * sx + sy * sy, 1e-12)
                u = np.clip(((px - self.x[a]) * sx + (py - self.y[a]) * sy) / seg2, 0.0, 1.0)
                d = (px - self.x[a] - u * sx) ** 2 + (py - self.y[a] - u * sy) ** 2
                better = d < best_d
                best_d = np.where(better, d, best_d)
                best_s = np.where(better, (self.s[a] + u * np.sqrt(seg2)) % self.length, best_s)
            out[lo:lo + PROJECT_CHUNK][ok] = best_s
        return out
