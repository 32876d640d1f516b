"""The dashboard's figures, as plain Plotly figure dicts (no ``plotly.graph_objects``: its
validation costs more than the rest of an update). Arrays go to the browser as typed arrays
(base64 ``bdata``), which plotly.js reads directly: a fraction of the bytes and the encoding time
of JSON lists."""

from __future__ import annotations

import base64
import math
from typing import Any, Sequence

import numpy as np

from racerl_jax.dashboard.data import Run
from racerl_jax.dashboard.track import Track
from racerl_jax.dashboard.traces import Trace

MAP_POINTS = 500  # driven-line markers drawn on the map at most (SVG markers are what costs)
# Points per line at most: no more than a plot has pixels across, and each update redraws them all
# (at 50 Hz the live window holds 3000 steps; drawing them all made the page lag on a busy CPU).
LINE_POINTS = 1200
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
GREY = "#9a9a9a"


def arr(a: Any) -> dict:
    """A float array as a plotly.js typed array (NaN stays a gap)."""
    a = np.ascontiguousarray(np.asarray(a, dtype="<f4"))
    return {"dtype": "f4", "bdata": base64.b64encode(a.tobytes()).decode()}


def _empty(title: str, note: str, height: int) -> dict:
    return {"data": [], "layout": {"title": {"text": title, "font": {"size": 14}}, "height": height,
                                   "xaxis": {"visible": False}, "yaxis": {"visible": False},
                                   "annotations": [{"text": note, "showarrow": False, "xref": "paper",
                                                    "yref": "paper", "x": 0.5, "y": 0.5}],
                                   "margin": {"l": 40, "r": 10, "t": 40, "b": 30}}}


# ----------------------------------------------------------------------------- laps


def current_lap(trace: Trace, track: Track | None) -> slice:
    """The steps of ``trace`` since it last crossed the start line (lap distance wrapped)."""
    d = trace["dist"]
    if track is None or len(d) < 2 or not np.isfinite(d).any():
        return slice(0, len(trace))
    jumps = np.flatnonzero(np.diff(d) < -0.5 * track.length)
    return slice(int(jumps[-1]) + 1 if jumps.size else 0, len(trace))


def distance(trace: Trace, seg: slice, track: Track | None) -> np.ndarray:
    """Lap distance over ``seg``: along the centre line when the track is known, else driven distance."""
    d = trace["dist"][seg]
    if track is not None and np.isfinite(d).any():
        return d
    x, y = trace["x"][seg], trace["y"][seg]
    step = np.nan_to_num(np.hypot(np.diff(x), np.diff(y)))
    return np.concatenate([[0.0], np.cumsum(step)]) if len(x) else x


def _thin(n: int, most: int) -> slice:
    return slice(None, None, max(1, math.ceil(n / most)))


# ----------------------------------------------------------------------------- the map


def map_figure(track: Track | None, trace: Trace | None, best: Trace | None, cursor: int | None) -> dict:
    """Track edges, reference line, the best lap (thin grey), the driven line coloured by speed, the
    car, and the safety events. Traces 0-2 are the track (sent once); 3-6 change (``map_patch``)."""
    if track is None and trace is None:
        return _empty("track map", "no track.json and no driving yet", 520)
    data: list[dict] = []
    if track is not None:
        lx, ly = track.left
        rx, ry = track.right
        close = lambda a: np.append(a, a[0])  # noqa: E731
        data.append({"type": "scatter", "mode": "lines", "x": arr(close(lx)), "y": arr(close(ly)), "name": "track edge",
                     "line": {"color": GREY, "width": 1}, "hoverinfo": "skip", "showlegend": False})
        data.append({"type": "scatter", "mode": "lines", "x": arr(close(rx)), "y": arr(close(ry)), "name": "track edge",
                     "line": {"color": GREY, "width": 1}, "hoverinfo": "skip", "showlegend": False})
        if track.ref is not None:
            data.append({"type": "scatter", "mode": "lines", "x": arr(close(track.ref[0])), "y": arr(close(track.ref[1])),
                         "name": "reference line", "line": {"color": "#d62728", "width": 1, "dash": "dash"},
                         "hoverinfo": "skip"})
        else:
            data.append({"type": "scatter", "mode": "lines", "x": arr(close(track.x)), "y": arr(close(track.y)),
                         "name": "centre line", "line": {"color": "#cccccc", "width": 1, "dash": "dot"},
                         "hoverinfo": "skip"})
    else:
        data += [{"type": "scatter", "x": [], "y": [], "showlegend": False} for _ in range(3)]
    data += map_moving(trace, best, cursor)
    return {"data": data, "layout": {
        "title": {"text": f"track map{': ' + track.name if track is not None and track.name else ''}",
                  "font": {"size": 14}, "x": 0.98, "xanchor": "right"},
        "height": 520, "margin": {"l": 40, "r": 10, "t": 50, "b": 30}, "uirevision": "map",
        "xaxis": {"title": {"text": "x (m)"}}, "yaxis": {"title": {"text": "y (m)"}, "scaleanchor": "x"},
        "legend": {"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"}}}


def map_moving(trace: Trace | None, best: Trace | None, cursor: int | None) -> list[dict]:
    """Map traces 3-6: best lap, driven line, car, safety events."""
    out = [{"type": "scatter", "mode": "lines", "x": arr(best["x"] if best else []),
            "y": arr(best["y"] if best else []), "name": "best lap", "hoverinfo": "skip",
            "line": {"color": "#c8c8c8", "width": 2}}]
    if trace is None or len(trace) == 0:
        return out + [{"type": "scatter", "x": [], "y": [], "name": n} for n in ("driven line", "car", "safety")]
    n = len(trace)
    i = n - 1 if cursor is None else min(max(cursor, 0), n - 1)
    thin = _thin(i + 1, MAP_POINTS)
    kmh = trace["speed"][: i + 1][thin] * 3.6
    out.append({"type": "scatter", "mode": "markers", "x": arr(trace["x"][: i + 1][thin]),
                "y": arr(trace["y"][: i + 1][thin]), "name": "driven line",
                "marker": {"size": 4, "color": arr(kmh), "colorscale": "Viridis", "showscale": True,
                           "colorbar": {"title": {"text": "km/h"}, "thickness": 12}},
                "hovertemplate": "%{marker.color:.0f} km/h<extra></extra>"})
    out.append({"type": "scatter", "mode": "markers", "x": arr(trace["x"][i:i + 1]), "y": arr(trace["y"][i:i + 1]),
                "name": "car", "marker": {"size": 14, "color": "#000000", "symbol": "circle-open", "line": {"width": 3}}})
    ev = [(j, r) for j, r in trace.events if j <= i]
    out.append({"type": "scatter", "mode": "markers", "x": arr([trace["x"][j] for j, _ in ev]),
                "y": arr([trace["y"][j] for j, _ in ev]), "text": [r for _, r in ev], "name": "safety",
                "marker": {"size": 9, "color": "#d62728", "symbol": "x"}, "hovertemplate": "%{text}<extra></extra>"})
    return out


# ----------------------------------------------------------------------------- traces along the lap


def _rows(n: int, gap: float = 0.04) -> list[list[float]]:
    h = (1.0 - gap * (n - 1)) / n
    return [[1.0 - (k + 1) * h - k * gap, 1.0 - k * (h + gap)] for k in range(n)]


def lap_figure(track: Track | None, trace: Trace | None, best: Trace | None, cursor: int | None) -> dict:
    """Speed, throttle, brake and steering against lap distance: the current lap (or the replayed
    stretch) beside the best lap, and the reference speed profile."""
    if trace is None or len(trace) == 0:
        return _empty("speed, throttle, brake, steering along the lap", "no driving yet", 520)
    seg = current_lap(trace, track)
    dist = distance(trace, seg, track)
    th = _thin(len(dist), LINE_POINTS)
    names = (("speed", "speed (km/h)", 3.6), ("throttle", "throttle", 1.0), ("brake", "brake", 1.0),
             ("steer", "steering", 1.0))
    data: list[dict] = []
    layout: dict[str, Any] = {"height": 520, "margin": {"l": 55, "r": 10, "t": 50, "b": 35}, "uirevision": "lap",
                              "title": {"text": f"along the lap: {trace.label}", "font": {"size": 14}, "x": 0.98,
                                        "xanchor": "right"},
                              "xaxis": {"title": {"text": "lap distance (m)"}, "anchor": "y4"},
                              "legend": {"orientation": "h", "y": 1.0, "x": 0, "yanchor": "bottom"}, "shapes": []}
    for k, ((col, label, scale), dom) in enumerate(zip(names, _rows(4))):
        ax = "" if k == 0 else str(k + 1)
        layout[f"yaxis{ax}"] = {"domain": dom, "title": {"text": label, "font": {"size": 11}}}
        if best is not None:
            bth = _thin(len(best), LINE_POINTS)
            data.append({"type": "scatter", "mode": "lines", "x": arr(distance(best, slice(0, len(best)), track)[bth]),
                         "y": arr(best[col][bth] * scale), "yaxis": f"y{ax}", "name": "best lap",
                         "legendgroup": "best", "showlegend": k == 0, "line": {"color": GREY, "width": 1.5}})
        if k == 0 and track is not None and track.ref_speed is not None:
            data.append({"type": "scatter", "mode": "lines", "x": arr(track.s), "y": arr(track.ref_speed * 3.6),
                         "yaxis": "y", "name": "reference speed", "line": {"color": "#d62728", "width": 1, "dash": "dash"}})
        data.append({"type": "scatter", "mode": "lines", "x": arr(dist[th]), "y": arr(trace[col][seg][th] * scale),
                     "yaxis": f"y{ax}", "name": "this lap", "legendgroup": "now", "showlegend": k == 0,
                     "line": {"color": COLORS[0], "width": 1.5}})
    if cursor is not None and seg.start <= cursor < seg.stop:
        at = float(dist[cursor - seg.start])
        layout["shapes"].append({"type": "line", "xref": "x", "yref": "paper", "x0": at, "x1": at, "y0": 0, "y1": 1,
                                 "line": {"color": "#000000", "width": 1}})
    return {"data": data, "layout": layout}


# ----------------------------------------------------------------------------- the model's decisions


def decisions_figure(trace: Trace | None, cursor: int | None) -> dict:
    """The policy's action beside the applied action (after the safety layer), the critics' value of
    the policy's action, and the safety layer's interventions, over time."""
    title = "the model's decisions"
    if trace is None or len(trace) == 0:
        return _empty(title, "no driving yet", 420)
    if trace.policy is None or not np.isfinite(trace.policy).any():
        return _empty(title, "no per-step decisions in this source: they are written by runs on the game "
                      "(steps.jsonl); evaluation laps and recordings hold the controls only", 420)
    t_all = trace["t"]
    th = _thin(len(t_all), LINE_POINTS)
    t, pol = t_all[th], trace.policy[th]
    pedal_policy = pol[:, 1] if pol.shape[1] == 2 else (pol[:, 1] - pol[:, 2] if pol.shape[1] >= 3 else None)
    # the value is null during the random phase and after a non-finite one: the line runs through the rest
    has_value = np.flatnonzero(np.isfinite(trace["value"]))
    has_value = has_value[_thin(len(has_value), LINE_POINTS)]
    data = [
        {"type": "scatter", "mode": "lines", "x": arr(t), "y": arr(pol[:, 0]), "name": "policy steer",
         "line": {"color": COLORS[0], "width": 1, "dash": "dot"}},
        {"type": "scatter", "mode": "lines", "x": arr(t), "y": arr(trace["steer"][th]), "name": "applied steer",
         "line": {"color": COLORS[0], "width": 1.5}},
        {"type": "scatter", "mode": "lines", "x": arr(t), "y": arr((trace["throttle"] - trace["brake"])[th]),
         "name": "applied throttle - brake", "yaxis": "y2", "line": {"color": COLORS[2], "width": 1.5}},
        {"type": "scatter", "mode": "lines", "x": arr(t_all[has_value]), "y": arr(trace["value"][has_value]),
         "name": "critics' value", "yaxis": "y3", "line": {"color": COLORS[4], "width": 1.5}},
    ]
    if pedal_policy is not None:
        data.insert(2, {"type": "scatter", "mode": "lines", "x": arr(t), "y": arr(pedal_policy),
                        "name": "policy pedal", "yaxis": "y2", "line": {"color": COLORS[2], "width": 1, "dash": "dot"}})
    ev = trace.events
    data.append({"type": "scatter", "mode": "markers", "x": arr([t_all[j] for j, _ in ev]), "y": arr([0.0] * len(ev)),
                 "text": [r for _, r in ev], "name": f"safety ({len(ev)})", "yaxis": "y2",
                 "marker": {"color": "#d62728", "symbol": "x", "size": 8}, "hovertemplate": "%{text}<extra></extra>"})
    dom = _rows(3)
    layout = {"height": 420, "margin": {"l": 55, "r": 10, "t": 50, "b": 35}, "uirevision": "decisions",
              "title": {"text": f"{title}: {trace.label}", "font": {"size": 14}, "x": 0.98, "xanchor": "right"},
              "xaxis": {"title": {"text": "time (s)"}, "anchor": "y3"},
              "yaxis": {"domain": dom[0], "title": {"text": "steer", "font": {"size": 11}}, "range": [-1.1, 1.1]},
              "yaxis2": {"domain": dom[1], "title": {"text": "pedal", "font": {"size": 11}}, "range": [-1.1, 1.1]},
              "yaxis3": {"domain": dom[2], "title": {"text": "value", "font": {"size": 11}}},
              "legend": {"orientation": "h", "x": 0, "y": 1.0, "yanchor": "bottom"}, "shapes": []}
    if cursor is not None and 0 <= cursor < len(t_all):
        layout["shapes"].append({"type": "line", "xref": "x", "yref": "paper", "x0": float(t_all[cursor]),
                                 "x1": float(t_all[cursor]), "y0": 0, "y1": 1, "line": {"color": "#000000", "width": 1}})
    return {"data": data, "layout": layout}


# ----------------------------------------------------------------------------- training


PANELS = (
    ("evaluation lap time (s)", ("eval_lap_s", "eval_best_lap_s")),
    ("clean-lap rate", ("eval_clean_lap_rate",)),
    ("return", ("episode_return", "eval_return")),
    ("critic loss", ("critic_loss",)),
    ("actor loss", ("actor_loss",)),
    ("entropy coefficient", ("alpha",)),
    ("learning rate", ("lr_scale",)),
    ("env steps / s", ("env_steps_per_s",)),
    ("updates / s", ("updates_per_s",)),
)
X_KEYS = {"env_steps": "env steps", "wall_s": "wall time (s)"}


def training_figure(runs: Sequence[Run], x_key: str) -> dict:
    """Small multiples of the training metrics, every run in its own colour; the lap-time panel has
    each run's minimum-lap-time reference as a dashed line."""
    if not any(r.metrics for r in runs):
        return _empty("training", "no metrics.jsonl yet", 560)
    cols, rows = 3, math.ceil(len(PANELS) / 3)
    gx, gy = 0.06, 0.12
    w, h = (1 - gx * (cols - 1)) / cols, (1 - gy * (rows - 1)) / rows
    layout: dict[str, Any] = {"height": 560, "margin": {"l": 50, "r": 10, "t": 60, "b": 40}, "uirevision": x_key,
                              "title": {"text": "training", "font": {"size": 14}}, "annotations": [], "shapes": [],
                              "legend": {"orientation": "h", "y": 1.12}}
    data: list[dict] = []
    for p, (title, keys) in enumerate(PANELS):
        r, c = divmod(p, cols)
        ax = "" if p == 0 else str(p + 1)
        x0, y1 = c * (w + gx), 1 - r * (h + gy)
        layout[f"xaxis{ax}"] = {"domain": [x0, x0 + w], "anchor": f"y{ax}", "tickfont": {"size": 9}}
        layout[f"yaxis{ax}"] = {"domain": [y1 - h, y1], "anchor": f"x{ax}", "tickfont": {"size": 9}}
        layout["annotations"].append({"text": title, "showarrow": False, "xref": "paper", "yref": "paper",
                                      "x": x0 + w / 2, "y": y1 + 0.01, "xanchor": "center", "yanchor": "bottom",
                                      "font": {"size": 11}})
        for i, run in enumerate(runs):
            color = COLORS[i % len(COLORS)]
            # the logged factor times the run's base learning rate (the factor alone without one)
            scale = _base_lr(run) if keys == ("lr_scale",) else 1.0
            for j, key in enumerate(keys):
                pts = [(m.get(x_key), m.get(key)) for m in run.metrics]
                pts = [(a, b * scale) for a, b in pts if isinstance(a, (int, float)) and isinstance(b, (int, float))]
                if not pts:
                    continue
                xs, ys = zip(*pts)
                data.append({"type": "scatter", "mode": "lines+markers" if len(pts) < 60 else "lines",
                             "x": arr(xs), "y": arr(ys), "xaxis": f"x{ax}", "yaxis": f"y{ax}",
                             "name": f"{run.name}: {key}", "legendgroup": run.name, "showlegend": False,
                             "line": {"color": color, "width": 1.2, "dash": "dot" if j else "solid"},
                             "marker": {"size": 4}})
            if p == 0 and math.isfinite(run.limit_s()):
                layout["shapes"].append({"type": "line", "xref": f"x{ax} domain", "yref": f"y{ax}", "x0": 0, "x1": 1,
                                         "y0": run.limit_s(), "y1": run.limit_s(),
                                         "line": {"color": color, "width": 1, "dash": "dash"}})
    for i, run in enumerate(runs):  # one legend entry per run that has metrics
        if run.metrics:
            data.append({"type": "scatter", "mode": "lines", "x": [None], "y": [None], "name": run.name,
                         "line": {"color": COLORS[i % len(COLORS)]}, "legendgroup": run.name})
    layout["xaxis7"]["title"] = layout["xaxis8"]["title"] = layout["xaxis9"]["title"] = {"text": X_KEYS[x_key],
                                                                                        "font": {"size": 10}}
    return {"data": data, "layout": layout}


def _base_lr(run: Run) -> float:
    cfg = run.config.value if isinstance(run.config.value, dict) else {}
    lr = (cfg.get("crossq") or {}).get("learning_rate") if isinstance(cfg.get("crossq"), dict) else None
    return float(lr) if isinstance(lr, (int, float)) and lr > 0 else 1.0


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)) if isinstance(v, dict) else
                   {f"{prefix}.{k}" if prefix else str(k): v})
    return out


def config_differences(runs: Sequence[Run]) -> tuple[list[str], list[list[str]]]:
    """(run names, rows of [setting, value per run]) for the settings that differ between the
    config.json of the runs that have one (training runs); with one such run, nothing differs."""
    runs = [r for r in runs if isinstance(r.config.value, dict)]
    flat = [flatten(r.config.value) for r in runs]
    keys = sorted(set().union(*flat)) if flat else []
    missing = object()
    rows = [[k] + ["" if f.get(k, missing) is missing else str(f[k]) for f in flat] for k in keys
            if len({repr(f.get(k, missing)) for f in flat}) > 1]
    return [r.name for r in runs], rows
