"""Run logs: TensorBoard event files, a plain ``metrics.jsonl`` (one JSON object per line) and a
learning-curve PNG, all in the run dir."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "learning_curve.png"


class RunLogger:
    def __init__(self, run_dir: str | Path, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """One record; non-finite values become null in JSON and are skipped in TensorBoard."""
        clean: dict[str, Any] = {"step": int(step)}
        for key, value in metrics.items():
            v = float(value)
            clean[key] = v if math.isfinite(v) else None
            if self._tb is not None and math.isfinite(v):
                self._tb.add_scalar(key, v, int(step))
        self._jsonl.write(json.dumps(clean) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()

    def plot(self, y_keys: tuple[str, ...] = ("episode_return", "eval_return_mean")) -> Path | None:
        return plot_learning_curve(self.run_dir / METRICS_FILE, self.run_dir / CURVE_FILE, y_keys=y_keys)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno} is not a JSON object ({e}); the file may be truncated") from e
    return rows


def plot_learning_curve(
    metrics_path: str | Path,
    png_path: str | Path,
    x_key: str = "env_steps",
    y_keys: tuple[str, ...] = ("episode_return", "eval_return_mean"),
) -> Path | None:
    """Plot the given metrics against ``x_key``; returns None when none of them was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(7, 4))
    plotted = False
    for key in y_keys:
        pts = [(r.get(x_key, r["step"]), r[key]) for r in rows if r.get(key) is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=key, marker="." if len(pts) < 50 else None)
            plotted = True
    if not plotted:
        plt.close(fig)
        return None
    ax.set_xlabel(x_key)
    ax.set_ylabel("return")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return Path(png_path)
