"""Bridge latency on loopback.

    python benchmarks/bridge_latency.py [--steps 5000] [--seconds 30]

Lockstep: round-trip time of step requests to a no-op game served by the SDK in another process.
Real time: how late each 50 Hz control step of RealtimeClient takes its observation (elastic time)
against a no-op game publishing at 50 Hz in another process. The last line is machine-readable:
lockstep_rtt_p50_ms=<f> lockstep_rtt_p99_ms=<f> realtime_late_p99_ms=<f>
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import numpy as np

from bridge.client import LockstepClient, RealtimeClient
from bridge.sdk import GamePlugin, LockstepServer, RealtimeServer

GO = {"steer": 0.1, "throttle": 0.5, "brake": 0.0}


class NoOpGame(GamePlugin):
    name = "noop"
    dt = 0.02

    def reset(self, seed):
        return {"x": 0.0, "y": 0.0, "yaw": 0.0, "speed": 0.0}

    def step(self, action, ticks):
        return {"x": 1.0, "y": 2.0, "yaw": 0.5, "speed": 10.0}


def _serve(mode: str, conn, stop) -> None:
    if mode == "lockstep":
        server = LockstepServer(NoOpGame(), "tcp://127.0.0.1:*")
        conn.send((server.address,))
        server.serve(stop=stop)
    else:
        server = RealtimeServer(NoOpGame(), "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", rate_hz=50)
        conn.send((server.pub_address, server.pull_address))
        server.serve(stop=stop)


class Plugin:
    """The game in its own process, as in real use (no GIL shared with the trainer)."""

    def __init__(self, mode: str):
        ctx = mp.get_context("spawn")
        self.stop = ctx.Event()
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(mode, child, self.stop), daemon=True)
        self.proc.start()
        if not parent.poll(30):
            self.close()
            raise RuntimeError("the benchmark plugin did not start within 30 s")
        self.addresses = parent.recv()

    def close(self) -> None:
        self.stop.set()
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


def bench_lockstep(steps: int) -> np.ndarray:
    plugin = Plugin("lockstep")
    try:
        with LockstepClient(plugin.addresses[0], timeout=5.0) as c:
            c.reset()
            for _ in range(200):  # warm up
                c.step(GO)
            rtt = np.empty(steps)
            for i in range(steps):
                t0 = time.perf_counter()
                c.step(GO)
                rtt[i] = time.perf_counter() - t0
    finally:
        plugin.close()
    return rtt


def bench_realtime(seconds: float) -> tuple[np.ndarray, float]:
    plugin = Plugin("realtime")
    try:
        with RealtimeClient(*plugin.addresses, period=0.02) as c:
            c.reset(timeout=10.0)
            late, fresh = [], 0
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                s = c.step(GO)
                late.append(s.late_s)
                fresh += s.fresh
    finally:
        plugin.close()
    return np.asarray(late), fresh / max(1, len(late))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5000, help="lockstep round trips to time")
    ap.add_argument("--seconds", type=float, default=30.0, help="real-time run length at 50 Hz")
    args = ap.parse_args(argv)
    rtt = bench_lockstep(args.steps) * 1e3
    print(f"lockstep: {len(rtt)} steps, rtt p50 {np.percentile(rtt, 50):.3f} ms, p99 {np.percentile(rtt, 99):.3f}"
          f" ms, max {rtt.max():.3f} ms, {1e3 / rtt.mean():.0f} steps/s")
    late, fresh = bench_realtime(args.seconds)
    late *= 1e3
    print(f"realtime: {len(late)} steps at 50 Hz, late p50 {np.percentile(late, 50):.3f} ms, p99 "
          f"{np.percentile(late, 99):.3f} ms, max {late.max():.3f} ms, fresh frame on {100 * fresh:.1f}% of steps")
    print(f"lockstep_rtt_p50_ms={np.percentile(rtt, 50):.4f} lockstep_rtt_p99_ms={np.percentile(rtt, 99):.4f} "
          f"realtime_late_p99_ms={np.percentile(late, 99):.4f}")


if __name__ == "__main__":
    main()
