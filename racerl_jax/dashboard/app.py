"""The dashboard's page and its callbacks (Dash): one page over one or more run directories.

The browser polls (``dcc.Interval``, ``refresh_ms``); each poll asks the server to read what the
runs appended since the last one (``Run.refresh``: a few new lines, never the whole file) and gets
the car views back only when what they show changed. Each run keeps version counters per part
(metrics, evaluations, live steps, track, configs); the training curves and the replay sliders
are rebuilt only when their parts' counters move. The map's track (thousands of points) goes to a
browser once, after which only its moving traces are sent (a ``Patch``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

from dash import Dash, Input, Output, Patch, State, dcc, html, no_update

from racerl_jax.dashboard.data import Run, track_folders
from racerl_jax.dashboard.traces import Trace
from racerl_jax.dashboard.figures import (X_KEYS, config_differences, current_lap, decisions_figure, lap_figure,
                                          map_figure, map_moving, training_figure)


@dataclasses.dataclass(frozen=True)
class DashboardConfig:
    """``python -m racerl_jax.dashboard``'s settings (the command line maps onto these fields)."""

    run_dirs: tuple[str, ...] = ()
    host: str = "127.0.0.1"  # loopback: the runs are the user's business; --host 0.0.0.0 to share them
    port: int = 8050
    # How often the page asks for news: a page update lags a write by about half of this plus the
    # rendering. 250 ms keeps a 50 Hz run's page within 500 ms (benchmarks/dashboard_load.py).
    refresh_ms: int = 250
    window_steps: int = 3000  # the live views show the newest episode's last this many steps (60 s at 50 Hz)

    def __post_init__(self) -> None:
        if not self.run_dirs:
            raise ValueError("give at least one run directory (a training run or a bridge.recorder recording)")
        if not 0 < self.port < 65536:
            raise ValueError(f"port {self.port}: expected 1-65535")
        if self.refresh_ms < 50:
            raise ValueError(f"refresh_ms {self.refresh_ms}: give at least 50 ms (each poll costs the server)")
        if self.window_steps < 10:
            raise ValueError(f"window_steps {self.window_steps}: give at least 10")


class Board:
    """The runs and the lock that keeps concurrent callbacks (Flask serves requests in threads) from
    reading a run while another refreshes it."""

    def __init__(self, config: DashboardConfig) -> None:
        self.config = config
        self.runs = [Run(p) for p in config.run_dirs]
        names = [r.name for r in self.runs]
        for i, r in enumerate(self.runs):  # two runs with the same folder name: tell them apart
            if names.count(r.name) > 1:
                r.name = str(Path(r.path).resolve())
        self.lock = threading.Lock()
        self.last_refresh = 0.0
        self._find_track_folders()

    @property
    def top(self) -> list[Run]:
        """The run directories given (what the training curves and the settings table compare)."""
        return [r for r in self.runs if r.parent is None]

    def _find_track_folders(self) -> None:
        """Each multi-track run's tracks/<name>/ folders, listed after it as runs of their own (the
        car views on one track); new ones as the run writes them."""
        known = {r.path for r in self.runs}
        new = [Run(p, parent=top) for top in self.top for p in track_folders(top.path) if p not in known]
        if new:
            order = {id(r): k for k, r in enumerate(self.top)}
            self.runs = sorted(self.runs + new, key=lambda r: (order[id(r.parent or r)], r.parent is not None, r.path.name))

    def options(self) -> list[dict]:
        """The run picker's entries, each keyed by its directory: a key stays with its run when
        track folders appear before it in the list."""
        return [{"label": r.name, "value": str(r.path)} for r in self.runs]

    def refresh(self) -> None:
        with self.lock:
            now = time.monotonic()
            # Several open pages poll independently: one read of the files serves them all.
            if now - self.last_refresh >= 0.5 * self.config.refresh_ms / 1000.0:
                self._find_track_folders()
                for r in self.runs:
                    r.refresh()
                self.last_refresh = now

    def run(self, key: Any) -> Run:
        """The run of a picker value (``options``); the first for anything else."""
        return next((r for r in self.runs if str(r.path) == key), self.runs[0])


def _status(run: Run, trace: Trace | None, best: Trace | None, mode: str) -> list:
    """The line above the car views: what the run is, how far it got, the lap time against the best
    lap and the reference."""
    parts = [html.B(run.name), f" ({run.kind})"]
    if run.steps.episodes:
        parts.append(f" · steps logged: {len(run.steps)}")
    if run.evals:
        parts.append(f" · evaluations: {len(run.evals)}")
    if run.metrics:
        last = run.metrics[-1]
        if isinstance(last.get("env_steps"), (int, float)):
            parts.append(f" · env steps: {int(last['env_steps'])}")
    lap = ""
    if trace is not None and len(trace):
        seg = current_lap(trace, run.track) if mode == "live" else slice(0, len(trace))
        t = trace["t"][seg]
        now = float(t[-1] - t[0]) if len(t) else math.nan
        lap = f"lap time {now:.2f} s" if mode == "live" else f"{trace.label}"
    best_s = best.lap_s if best is not None else math.nan
    ref = run.limit_s()
    times = [lap] if lap else []
    times.append(f"best {best_s:.2f} s" if math.isfinite(best_s) else "no clean lap yet")
    if math.isfinite(ref):
        times.append(f"minimum-lap-time reference {ref:.2f} s")
    return parts + [html.Br(), " · ".join(times)]


def build_app(config: DashboardConfig) -> Dash:
    board = Board(config)
    board.refresh()
    # serve_locally (the default, said here because it matters): the page's JavaScript comes from
    # the installed package, not a CDN, so the dashboard works with no internet.
    app = Dash(__name__, title="racerl-jax dashboard", serve_locally=True, update_title=None)
    first = next((r for r in board.runs if r.steps.episodes or r.evals), board.runs[0])
    app.layout = html.Div(style={"fontFamily": "sans-serif", "margin": "8px 16px"}, children=[
        html.H3("racerl-jax dashboard", style={"margin": "4px 0"}),
        html.Div(style={"display": "flex", "gap": "24px", "alignItems": "center"}, children=[
            html.Div(style={"width": "420px"}, children=[
                dcc.Dropdown(id="run", options=board.options(), value=str(first.path), clearable=False)]),
            dcc.RadioItems(id="mode", options=[{"label": " live", "value": "live"},
                                               {"label": " replay", "value": "replay"}],
                           value="live", inline=True, inputStyle={"marginLeft": "12px"}),
        ]),
        html.Div(id="status", style={"margin": "6px 0", "fontSize": "14px"}),
        html.Div(id="replay-controls", style={"display": "none"}, children=[
            html.Div("episode / lap", style={"fontSize": "12px"}),
            dcc.Slider(id="item", min=0, max=0, step=1, value=0, marks=None,
                       tooltip={"placement": "bottom", "always_visible": False}),
            html.Div(id="item-label", style={"fontSize": "12px"}),
            html.Div("position in it", style={"fontSize": "12px"}),
            dcc.Slider(id="pos", min=0, max=0, step=1, value=0, marks=None),
        ]),
        html.Div(style={"display": "flex", "flexWrap": "wrap"}, children=[
            html.Div(dcc.Graph(id="map", config={"displaylogo": False}), style={"flex": "1 1 480px"}),
            html.Div(dcc.Graph(id="lap", config={"displaylogo": False}), style={"flex": "1 1 560px"}),
        ]),
        dcc.Graph(id="decisions", config={"displaylogo": False}),
        dcc.RadioItems(id="xkey", options=[{"label": f" against {v}", "value": k} for k, v in X_KEYS.items()],
                       value="env_steps", inline=True, inputStyle={"marginLeft": "12px"}),
        dcc.Graph(id="training", config={"displaylogo": False}),
        html.H4("settings that differ between the runs", style={"margin": "8px 0 4px"}),
        html.Div(id="config-diff", style={"fontSize": "12px"}),
        dcc.Store(id="stamp-slow"),
        dcc.Store(id="stamp-replay"),
        dcc.Store(id="shown"),
        dcc.Store(id="map-key"),
        dcc.Interval(id="tick", interval=config.refresh_ms),
    ])

    @app.callback(Output("training", "figure"), Output("config-diff", "children"), Input("stamp-slow", "data"),
                  Input("xkey", "value"))
    def training(_stamp, x_key):
        with board.lock:
            fig = training_figure(board.top, x_key if x_key in X_KEYS else "env_steps")
            names, rows = config_differences(board.top)
        if len(names) < 2:
            table = html.Div("one run: nothing to compare (give several run directories to list their differences)")
        elif not rows:
            table = html.Div("the runs' configs are the same")
        else:
            table = html.Table(style={"borderCollapse": "collapse"}, children=[
                html.Thead(html.Tr([html.Th("setting")] + [html.Th(n) for n in names])),
                html.Tbody([html.Tr([html.Td(c, style={"padding": "1px 8px", "borderTop": "1px solid #ddd"})
                                     for c in row]) for row in rows])])
        return fig, table

    @app.callback(Output("run", "options"), Input("stamp-slow", "data"))
    def run_options(_stamp):  # a multi-track run's track folders appear with its first evaluation
        with board.lock:
            return board.options()

    @app.callback(Output("item", "max"), Output("pos", "max"), Output("item-label", "children"),
                  Output("replay-controls", "style"), Input("stamp-replay", "data"), Input("run", "value"),
                  Input("mode", "value"), Input("item", "value"))
    def replay_range(_stamp, run_i, mode, item):
        if mode != "replay":
            return no_update, no_update, no_update, {"display": "none"}
        with board.lock:
            run = board.run(run_i)
            labels = run.replay_items()
            trace = run.replay(int(item or 0))
        n = len(trace) if trace is not None else 0
        label = labels[int(item or 0)] if labels and int(item or 0) < len(labels) else "nothing recorded yet"
        return max(len(labels) - 1, 0), max(n - 1, 0), f"{label} ({len(labels)} in all)", {"display": "block"}

    # One request per poll: the poll itself reads the runs and, only when what this page shows
    # changed (or the user moved a control), rebuilds the car views. The training curves and the
    # replay sliders hang on stamps that change only when their parts do.
    @app.callback(Output("map", "figure"), Output("map-key", "data"), Output("lap", "figure"),
                  Output("decisions", "figure"), Output("status", "children"), Output("shown", "data"),
                  Output("stamp-slow", "data"), Output("stamp-replay", "data"),
                  Input("tick", "n_intervals"), Input("run", "value"), Input("mode", "value"), Input("item", "value"),
                  Input("pos", "value"), State("map-key", "data"), State("shown", "data"), State("stamp-slow", "data"),
                  State("stamp-replay", "data"))
    def car(_n, run_i, mode, item, pos, map_key, shown, slow_old, replay_old):
        board.refresh()
        with board.lock:
            run = board.run(run_i)
            v = run.versions
            slow = [[r.versions[k] for k in ("metrics", "config", "evals", "track")] for r in board.runs]
            replay = [v["live"], v["evals"]] if mode == "replay" else replay_old
            now = [str(run_i), mode, item, pos, v["live"], v["evals"], v["track"]]
            stamps = (no_update if slow == slow_old else slow, no_update if replay == replay_old else replay)
            if now == shown:
                return (no_update,) * 6 + stamps
            if mode == "replay":
                trace = run.replay(int(item or 0))
                cursor = int(pos or 0)
            else:
                trace, cursor = run.live(config.window_steps), None
            best = run.best_lap()
            key = [str(run_i), v["track"]]
            if key == map_key:  # the browser has this track: send the moving traces only
                fig = Patch()
                for k, tr in enumerate(map_moving(trace, best, cursor)):
                    fig["data"][3 + k] = tr
            else:
                fig = map_figure(run.track, trace, best, cursor)
            return (fig, key, lap_figure(run.track, trace, best, cursor), decisions_figure(trace, cursor),
                    _status(run, trace, best, mode), now) + stamps

    return app


def serve(config: DashboardConfig) -> None:
    app = build_app(config)
    # One line per request would be most of what the server does at a 250 ms poll.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    print(f"dashboard on http://{config.host}:{config.port}/ over {len(config.run_dirs)} run dir(s); Ctrl-C stops it",
          flush=True)
    app.run(host=config.host, port=config.port, debug=False)
