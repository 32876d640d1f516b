"""``python -m racerl_jax.dashboard RUN_DIR [RUN_DIR ...] [--port 8050]``: the live dashboard."""

from __future__ import annotations

import argparse
import socket
from typing import Sequence

from racerl_jax.dashboard.app import DashboardConfig, serve


def build_parser() -> argparse.ArgumentParser:
    d = DashboardConfig(run_dirs=("-",))
    p = argparse.ArgumentParser(
        prog="python -m racerl_jax.dashboard",
        description="A local web dashboard over training runs (train_crossq.py) and telemetry recordings "
        "(bridge.recorder): the car on the track map, its speed and controls along the lap beside the best lap, "
        "the policy's decisions, and the training curves; it follows runs that are being written and replays "
        "finished ones. It only reads the run directories.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (they may not exist yet)")
    p.add_argument("--host", default=d.host, help="address to serve on (default loopback: this machine only)")
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--refresh-ms", type=int, default=d.refresh_ms, help="how often the page asks for news")
    p.add_argument("--window-steps", type=int, default=d.window_steps,
                   help="the live views show the newest episode's last this many steps")
    return p


def parse_args(argv: Sequence[str] | None = None) -> DashboardConfig:
    a = vars(build_parser().parse_args(argv))
    a["run_dirs"] = tuple(a["run_dirs"])
    try:
        return DashboardConfig(**a)
    except ValueError as e:
        raise SystemExit(f"python -m racerl_jax.dashboard: {e}") from None


def check_port(host: str, port: int) -> None:
    """Fail before building the app when the address cannot be served (taken, or not this machine's)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise SystemExit(f"python -m racerl_jax.dashboard: cannot serve on {host}:{port} ({e.strerror}); "
                             "pick another --port (or --host)") from None


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    check_port(config.host, config.port)
    serve(config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
