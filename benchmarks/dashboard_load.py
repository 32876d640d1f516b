"""The dashboard under load, and what its records cost training.

1. Training cost: ``HostLoop`` on Pendulum with the cpu preset's networks (128 wide, batch 256, one
   update per step), in alternating chunks with and without the step log (``steps.jsonl``: the
   policy's action, the critics' value, the applied action, the pose, safety events). The env is
   wrapped to hand the loop what the game's env does (``last_frame``, ``applied_action``, safety
   reasons), so a record costs what it costs on the game. ``training_cost_pct`` is the loss of steps/s.
   A surrogate run writes nothing per step, only each evaluation's drive: its time is printed too.
2. Page load: a run directory written at 50 Hz (a host-loop step record each 20 ms, a metrics row
   each 2 s) for ``--seconds`` while the page is open in headless Chromium (Debian's ``chromium``,
   Playwright). The page's status line counts the steps logged; a MutationObserver in the page
   notes when it changes, and each write's page-update time is the first time the page shows a
   count that includes it. The server's CPU is read from /proc (psutil) over the same window.

Last line: ``frames_written=<n> page_update_p95_ms=<f> server_cpu_pct=<f>``. Goals: p95 <= 500 ms,
the server under 10% of one core.

    python benchmarks/dashboard_load.py [--seconds 60] [--cost-steps 1500] [--port 8051]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


# ----------------------------------------------------------------------------- 1. training cost


def training_cost(steps: int, chunk: int = 100) -> dict[str, float]:
    """What the step log costs the host loop: steps/s without and with it over alternating chunks
    (in ABBA order, so drift in what else the machine runs falls on both alike), compared by the
    median chunk, on the wall clock and in the process's CPU time per step (all threads; less
    sensitive to other processes than the wall clock); and the two parts of the cost measured
    alone per call: ``act_and_value`` over ``crossq.act``, and writing one record."""
    import gymnasium as gym
    import jax
    import jax.numpy as jnp

    from racerl_jax import crossq, run_log, train_loop
    from racerl_jax.crossq import CrossQConfig

    class GameLike(gym.Wrapper):
        """What the game's env gives the loop besides the transition: a frame and the safety layer's say."""

        def step(self, action):
            obs, r, term, trunc, info = self.env.step(action)
            self._t = getattr(self, "_t", 0.0) + 0.05
            info = {**info, "applied_action": np.array([float(action[0]), 0.5, 0.0], np.float32), "safety": (),
                    "end_reason": None}
            self._frame = {"seq": 1, "episode": 0, "t": self._t, "x": float(obs[0]), "y": float(obs[1]),
                           "yaw": 0.0, "speed": float(obs[2]), "steer": float(action[0]), "throttle": 0.5,
                           "brake": 0.0}
            return obs, r, term, trunc, info

        @property
        def last_frame(self):  # a copy, as RealGameEnv's
            return dict(self._frame)

    config = CrossQConfig.cpu(learning_starts=256, buffer_size=20_000)
    with tempfile.TemporaryDirectory() as tmp:
        loop = train_loop.HostLoop(GameLike(gym.make("Pendulum-v1")), config, seed=0)
        agent = jax.jit(crossq.init_agent, static_argnums=(1, 2, 3))(jax.random.PRNGKey(0), loop.obs_size,
                                                                     loop.action_size, config)
        buffer, key = loop.init_buffer(), jax.random.PRNGKey(1)
        log = run_log.StepLog(tmp)
        # warm-up: the random phase, then a chunk each way (compilation)
        agent, buffer, key, _ = loop.run(agent, buffer, key, config.learning_starts + 20)
        for with_log in (False, True):
            loop.step_log = log if with_log else None
            agent, buffer, key, _ = loop.run(agent, buffer, key, 20)
        wall: dict[bool, list[float]] = {False: [], True: []}
        cpu: dict[bool, list[float]] = {False: [], True: []}
        for r in range(max(1, steps // (2 * chunk))):
            for with_log in ((False, True) if r % 2 == 0 else (True, False)):
                loop.step_log = log if with_log else None
                t0, c0 = time.perf_counter(), time.process_time()
                agent, buffer, key, _ = loop.run(agent, buffer, key, chunk)
                wall[with_log].append((time.perf_counter() - t0) / chunk)
                cpu[with_log].append((time.process_time() - c0) / chunk)
            print(f"  training cost: {2 * chunk * (r + 1)} steps", file=sys.stderr, flush=True)
        loop.step_log = None

        obs = jnp.zeros((1, loop.obs_size), jnp.float32)

        def per_call(f, n=1000) -> float:
            f()
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            return (time.perf_counter() - t0) / n

        act = per_call(lambda: np.asarray(crossq.act(agent, obs, key, deterministic=False)))
        act_value = per_call(lambda: [np.asarray(a) for a in train_loop.act_and_value(agent, obs, key)])
        frame = loop.env.last_frame
        info = {"applied_action": np.zeros(3, np.float32), "safety": (), "end_reason": None}
        write = per_call(lambda: log.write(np.zeros(1), info["applied_action"], 1.0, 0.5, False, info, dict(frame)))
        log.close()
    med = {k: float(np.median(v)) for k, v in wall.items()}
    cmed = {k: float(np.median(v)) for k, v in cpu.items()}
    return {"steps_per_s_off": 1.0 / med[False], "steps_per_s_on": 1.0 / med[True],
            "wall_pct": 100.0 * (med[True] / med[False] - 1.0), "cpu_pct": 100.0 * (cmed[True] / cmed[False] - 1.0),
            "act_us": act * 1e6, "act_value_us": act_value * 1e6, "write_us": write * 1e6,
            "direct_pct": 100.0 * (act_value - act + write) / med[False]}


def eval_record_ms(steps: int = 2400, repeats: int = 5) -> float:
    """Milliseconds to write one evaluation's drive to eval_laps.jsonl (surrogate runs write
    nothing per step: an evaluation of ``steps`` steps, two oval laps at 60% pace, every 20-40 s)."""
    from racerl_jax import run_log

    rng = np.random.default_rng(0)
    lap = np.zeros(steps, bool)
    lap[[steps // 2, steps - 1]] = True
    traj = dict(x=rng.normal(size=steps) * 100, y=rng.normal(size=steps) * 100, speed=rng.random(steps) * 60,
                action=rng.random((steps, 3)), lap_completed=lap, lap_time=np.where(lap, 35.0, np.nan),
                lap_clean=lap, done=np.zeros(steps, bool))
    with tempfile.TemporaryDirectory() as tmp:
        log = run_log.EvalLapLog(tmp, dt=0.05)
        t0 = time.perf_counter()
        for k in range(repeats):
            log.write(traj, 10_000 * k, 30.0 * k, 35.0)
        ms = (time.perf_counter() - t0) / repeats * 1000.0
        log.close()
    return ms


# ----------------------------------------------------------------------------- 2. page load


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


OBSERVER = """() => {
    window.__updates = [];
    const el = document.getElementById('status');
    const note = () => {
        const m = el.innerText.match(/steps logged: (\\d+)/);
        if (m) window.__updates.push([Date.now() / 1000, parseInt(m[1])]);
    };
    new MutationObserver(note).observe(el, {childList: true, subtree: true, characterData: true});
    note();
}"""


def page_load(seconds: float, port: int) -> tuple[int, float, float, list[float]]:
    """(frames written, p95 page-update latency in ms, server CPU % of one core, all latencies)."""
    import psutil
    from playwright.sync_api import sync_playwright

    from racerl_jax.dashboard import synthetic

    oval = synthetic.Oval()
    with tempfile.TemporaryDirectory() as tmp:
        steps, run_dir = synthetic.training_run(Path(tmp) / "run", oval, evals=3, steps=1)
        proc = subprocess.Popen([sys.executable, "-m", "racerl_jax.dashboard", str(run_dir), "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(url, timeout=1)
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise SystemExit(f"the dashboard did not start on {url}")
                    time.sleep(0.2)
            with sync_playwright() as p:
                ctx = p.chromium.launch_persistent_context(str(Path(tmp) / "profile"), executable_path=CHROMIUM,
                                                           headless=True, args=FLAGS,
                                                           viewport={"width": 1400, "height": 1000})
                page = ctx.new_page()
                page.goto(url)
                page.wait_for_function("() => (document.getElementById('status') || {innerText: ''})"
                                       ".innerText.includes('steps logged: 1')", timeout=30_000)
                page.evaluate(OBSERVER)
                writes: list[float] = [0.0]  # writes[i]: wall time at which the (i+1)-th step was written
                stop = threading.Event()

                def writer() -> None:
                    i, t_next = 1, time.monotonic()
                    while not stop.is_set():
                        synthetic.step(steps, oval, i)
                        writes.append(time.time())
                        if i % 100 == 0:
                            with open(run_dir / "metrics.jsonl", "a") as f:
                                f.write(json.dumps(synthetic.metrics_row(3 + i // 100)) + "\n")
                        i += 1
                        t_next += synthetic.DT
                        time.sleep(max(0.0, t_next - time.monotonic()))

                server = psutil.Process(proc.pid)
                cpu0, t0 = sum(server.cpu_times()[:2]), time.monotonic()
                th = threading.Thread(target=writer, daemon=True)
                th.start()
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    page.wait_for_timeout(1000)  # the page runs; Playwright's loop must turn
                    print(f"  page load: {len(writes) - 1} frames written", file=sys.stderr, flush=True)
                stop.set()
                th.join()
                cpu = 100.0 * (sum(server.cpu_times()[:2]) - cpu0) / (time.monotonic() - t0)
                page.wait_for_timeout(1500)  # let the last writes reach the page
                updates = page.evaluate("() => window.__updates")
                ctx.close()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            steps.close()
    shown = np.array([u[1] for u in updates])
    at = np.array([u[0] for u in updates])
    latencies = []
    for count in range(2, len(writes)):
        k = np.flatnonzero(shown >= count)
        latencies.append((at[k[0]] - writes[count - 1]) * 1000.0 if k.size else float("inf"))
    gaps = np.diff(at) * 1000.0 if len(at) > 1 else np.array([np.nan])
    print(f"  {len(updates)} page updates, {np.median(gaps):.0f} ms apart (median), {np.percentile(gaps, 95):.0f} ms (p95)",
          file=sys.stderr)
    return len(writes) - 1, float(np.percentile(latencies, 95)), cpu, latencies


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the run is written at 50 Hz")
    ap.add_argument("--cost-steps", type=int, default=1500, help="host-loop steps for the training cost (0: skip)")
    ap.add_argument("--port", type=int, default=0, help="dashboard port (0: a free one)")
    args = ap.parse_args(argv)
    if not args.seconds > 0:
        ap.error(f"--seconds {args.seconds:g}: give how long to write the run, > 0")
    if args.cost_steps:
        c = training_cost(args.cost_steps)
        print(f"host loop (median of alternating chunks): {c['steps_per_s_off']:.1f} steps/s without the step log, "
              f"{c['steps_per_s_on']:.1f} with it ({c['wall_pct']:+.2f}% time per step); CPU time per step "
              f"{c['cpu_pct']:+.2f}%")
        print(f"per call: crossq.act {c['act_us']:.0f} us, act_and_value {c['act_value_us']:.0f} us, one record "
              f"{c['write_us']:.0f} us: {c['direct_pct']:.2f}% of a step")
        print(f"training_cost_pct={c['direct_pct']:.2f}")
        ms = eval_record_ms()
        print(f"surrogate run: {ms:.1f} ms to write an evaluation's drive (2400 steps), "
              f"{100 * ms / 1000 / 20:.3f}% of a 20-s evaluation period")
    frames, p95, cpu, lat = page_load(args.seconds, args.port or _free_port())
    lat = np.asarray(lat)
    print(f"page updates after a write: median {np.median(lat):.0f} ms, p95 {p95:.0f} ms, max {lat.max():.0f} ms "
          f"(goal p95 <= 500 ms); server {cpu:.1f}% of one core (goal < 10%)")
    print(f"frames_written={frames} page_update_p95_ms={p95:.1f} server_cpu_pct={cpu:.2f}")


if __name__ == "__main__":
    main()
