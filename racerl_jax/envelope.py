"""How much of a car's envelope a recording covers (speed, accelerations, yaw rate, steering, pedal
levels), as record_telemetry.py prints it and writes it to summary.json ("envelope")."""
from __future__ import annotations

import math

import numpy as np


class Envelope:
    """How much of the car's envelope a recording covers: every recorded step's telemetry (speed,
    accelerations, yaw rate) and applied controls, weighted by the game time it lasted."""

    FIELDS = (("speed", "m/s"), ("accel_long", "m/s^2"), ("accel_lat", "m/s^2"), ("yaw_rate", "rad/s"),
              ("steer", ""), ("throttle", ""), ("brake", ""))

    def __init__(self, speed_bin: float = 2.0, min_bin_s: float = 0.5):
        self.speed_bin, self.min_bin_s = speed_bin, min_bin_s
        self._rows: list[tuple[float, ...]] = []
        self._w: list[float] = []
        self.lo = {k: math.inf for k, _ in self.FIELDS}
        self.hi = {k: -math.inf for k, _ in self.FIELDS}

    def add(self, tel, controls, dt: float) -> None:
        row = (float(tel.speed), float(tel.accel_long), float(tel.accel_lat), float(tel.yaw_rate),
               *map(float, controls))
        if not all(map(math.isfinite, row)) or not dt > 0:
            return
        self._rows.append(row)
        self._w.append(dt)
        for (k, _), v in zip(self.FIELDS, row):
            self.lo[k], self.hi[k] = min(self.lo[k], v), max(self.hi[k], v)

    def postfix(self) -> dict[str, str]:
        """Short ranges for a progress bar."""
        if not self._rows:
            return {}
        r = lambda k, f="{:.0f}": f"{f.format(self.lo[k])}..{f.format(self.hi[k])}"  # noqa: E731
        return {"v": r("speed"), "ax": r("accel_long", "{:.1f}"), "ay": r("accel_lat", "{:.1f}"),
                "steer": r("steer", "{:.2f}")}

    def summary(self) -> dict:
        if not self._rows:
            return {"seconds": 0.0}
        a, w = np.asarray(self._rows), np.asarray(self._w)
        out: dict = {"seconds": round(float(w.sum()), 2)}
        for j, (k, unit) in enumerate(self.FIELDS):
            q = np.quantile(a[:, j], [0.05, 0.5, 0.95])
            out[k] = {"unit": unit, "min": round(float(a[:, j].min()), 3), "p5": round(float(q[0]), 3),
                      "p50": round(float(q[1]), 3), "p95": round(float(q[2]), 3), "max": round(float(a[:, j].max()), 3)}
        v = a[:, 0]
        nbins = max(1, int(math.ceil(v.max() / self.speed_bin)))
        hist, edges = np.histogram(v, bins=nbins, range=(0.0, nbins * self.speed_bin), weights=w)
        out["speed_histogram"] = {"bin_mps": self.speed_bin, "edges_mps": [round(float(e), 2) for e in edges],
                                  "seconds": [round(float(h), 2) for h in hist]}
        # share of the speed bins from rest to the top speed with at least min_bin_s of data
        out["speed_coverage"] = round(float(np.mean(hist >= self.min_bin_s)), 3)
        thr, brk, st = a[:, 5], a[:, 6], a[:, 4]
        share = lambda m: round(float(w[m].sum() / w.sum()), 4)  # noqa: E731
        out["time_share"] = {
            "full_throttle": share(thr >= 0.95), "part_throttle": share((thr > 0.05) & (thr < 0.95)),
            "coast": share((thr <= 0.05) & (brk <= 0.05)), "brake_light": share((brk > 0.05) & (brk < 0.5)),
            "brake_hard": share((brk >= 0.5) & (brk < 0.9)), "brake_full": share(brk >= 0.9),
            "steer_left": share(st > 0.05), "steer_right": share(st < -0.05)}
        return out


def envelope_table(env: dict) -> str:
    """The envelope summary as a text table."""
    if not env.get("seconds"):
        return "envelope: nothing recorded"
    lines = [f"envelope covered ({env['seconds']:.1f} s of game time):",
             f"  {'quantity':<18}{'min':>9}{'p5':>9}{'median':>9}{'p95':>9}{'max':>9}"]
    for k, unit in Envelope.FIELDS:
        r = env[k]
        name = f"{k} ({unit})" if unit else k
        lines.append(f"  {name:<18}" + "".join(f"{r[q]:>9.2f}" for q in ("min", "p5", "p50", "p95", "max")))
    h = env["speed_histogram"]
    bins = " ".join(f"{h['edges_mps'][i]:g}-{h['edges_mps'][i + 1]:g}:{s:.0f}" for i, s in enumerate(h["seconds"]))
    lines.append(f"  speed histogram (s per {h['bin_mps']:g} m/s bin): {bins}")
    lines.append(f"  speed coverage: {100 * env['speed_coverage']:.0f}% of the bins from rest to the top speed "
                 "hold >= 0.5 s")
    lines.append("  time share: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in env["time_share"].items()))
    return "\n".join(lines)
