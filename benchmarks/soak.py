"""Soak: train on the reference game in lockstep for a set time while the plugin is killed and
restarted at random moments and a second, misbehaving client sends garbage to the same plugin.

    python benchmarks/soak.py --minutes 60                       # restart every 5 min on average
    python benchmarks/soak.py --minutes 60 --no-faults           # the same run without faults (steps/s baseline)
    python benchmarks/soak.py --minutes 1 --game kinematic       # the numpy example game (no Box2D)

The trainer is this process: CrossQ (``racerl_jax``'s cpu preset, a preallocated replay buffer)
driving ``RealGameEnv`` through ``HostLoop``, as ``train_racing --backend real`` does. The plugin
is the reference game as a user starts it (``python -m bridge.games.carracing --mode lockstep``),
killed with SIGKILL at exponentially distributed moments (mean ``--restart-every`` minutes) and
started again at once. The misbehaving client is another process sending, ``--garbage-rate`` times
a second, requests the contract says are invalid (mutated by ``benchmarks/fuzz_bridge.py``'s
fuzzer; valid resets and steps are left out, so it never takes the trainer's episode) plus hellos
and tracks, reconnecting when its plugin dies.

Reported: resident memory growth of the trainer and of the plugin from the end of a warm-up
(the first 10 minutes, or the first third of a shorter run or plugin life) to the end (the plugin:
the longest-lived of its processes, as each restart starts a fresh one), steps lost (a step whose
reply never came: the episode ends without a transition), episodes truncated by faults, hangs (no
env step completed for ``--hang-timeout`` seconds), and env steps per second. The last line is
machine-readable:
minutes=<f> plugin_restarts=<n> trainer_rss_growth_pct=<f> plugin_rss_growth_pct=<f> hangs=<n> steps_per_s=<f>
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

WARMUP_S = 600.0
FAULT_REASONS = ("plugin_lost", "plugin_unavailable")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss(pid: int) -> int | None:
    import psutil
    try:
        return psutil.Process(pid).memory_info().rss
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None


def growth_pct(samples: list[tuple[float, int]], warmup_s: float) -> float | None:
    """RSS growth in percent from the warm-up mark (``warmup_s``, or a third of the samples' span
    if shorter) to the end; each end is the median of its nearby samples, so one GC does not decide."""
    if len(samples) < 3:
        return None
    t0, t1 = samples[0][0], samples[-1][0]
    mark = t0 + min(warmup_s, (t1 - t0) / 3.0)
    after = [r for t, r in samples if t >= mark]
    if len(after) < 2:
        return None
    k = max(1, len(after) // 10)
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    start, end = median(after[:k]), median(after[-k:])
    return 100.0 * (end - start) / start


# ----------------------------------------------------------------------------- the plugin

@dataclass
class Life:
    pid: int
    started: float
    samples: list = field(default_factory=list)  # (time, rss)


class Plugin:
    """The game's plugin process; ``kill_and_restart`` is the fault."""

    def __init__(self, game: str, address: str, log_path: str):
        self.game, self.address = game, address
        self.log = open(log_path, "ab")
        self.proc: subprocess.Popen | None = None
        self.lives: list[Life] = []
        self.restarts = 0
        self.lock = threading.Lock()
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", f"bridge.games.{self.game}", "--mode", "lockstep",
                                      "--address", self.address], cwd=ROOT, stdout=self.log, stderr=self.log)
        self.lives.append(Life(self.proc.pid, time.monotonic()))

    def kill_and_restart(self) -> None:
        with self.lock:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
            self.restarts += 1
            self.start()

    def sample(self) -> None:
        with self.lock:
            r = rss(self.proc.pid)
            if r is not None:
                self.lives[-1].samples.append((time.monotonic(), r))

    def stop(self) -> None:
        with self.lock:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        self.log.close()


# ----------------------------------------------------------------------------- the misbehaving client

def garbage_client(address: str, rate: float, seed: int) -> None:
    """Send invalid requests (and hellos, tracks) to ``address`` until SIGTERM; print the counts."""
    import zmq

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from fuzz_bridge import Fuzzer, oracle_request
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    fz = Fuzzer(random.Random(seed))
    ctx = zmq.Context()
    counts = {"sent": 0, "answered": 0, "unanswered": 0}

    def connect():
        s = ctx.socket(zmq.REQ)
        s.linger = 0
        s.connect(address)
        return s

    sock = connect()
    period = 1.0 / rate
    next_t = time.monotonic()
    while not stop.is_set():
        parts = fz.request()
        kind, what = oracle_request(parts)
        if kind == "ok" and what in ("reset", "step", "close"):
            continue  # a valid reset or step would take the trainer's episode: not garbage
        sock.send_multipart(parts)
        counts["sent"] += 1
        if sock.poll(1000):
            sock.recv_multipart()
            counts["answered"] += 1
        else:  # the plugin is down or restarting: lazy pirate
            counts["unanswered"] += 1
            sock.close(linger=0)
            sock = connect()
        next_t += period
        delay = next_t - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        else:
            next_t = time.monotonic()
    sock.close(linger=0)
    ctx.destroy(linger=0)
    print(" ".join(f"{k}={v}" for k, v in counts.items()), flush=True)


# ----------------------------------------------------------------------------- the trainer

class Counting:
    """Wraps the env to count steps and how episodes ended (HostLoop hides the infos)."""

    def __new__(cls, env):
        import gymnasium as gym

        class _Counting(gym.Wrapper):
            def __init__(self, env):
                super().__init__(env)
                self.steps = 0
                self.ends: dict[str, int] = {}
                self.last_step_at = time.monotonic()

            def step(self, action):
                out = self.env.step(action)
                self.steps += 1
                self.last_step_at = time.monotonic()
                term, trunc, info = out[2], out[3], out[4]
                if term or trunc:
                    reason = info.get("end_reason", "unknown")
                    self.ends[reason] = self.ends.get(reason, 0) + 1
                return out

        return _Counting(env)


def run(args) -> dict:
    import numpy as np  # noqa: F401
    import jax
    from tqdm import tqdm

    from bridge.client import BridgeUnavailable
    from racerl_jax import crossq
    from racerl_jax.real_env import RealEnvConfig, RealGameEnv
    from racerl_jax.train_loop import HostLoop

    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    rng = random.Random(args.seed)
    address = f"tcp://127.0.0.1:{free_port()}"
    os.makedirs(args.log_dir, exist_ok=True)
    plugin = Plugin(args.game, address, os.path.join(args.log_dir, "plugin.log"))
    garbage = None
    faults = not args.no_faults
    me = os.getpid()
    trainer_samples: list[tuple[float, int]] = []
    stop = threading.Event()
    hangs = [0]
    env = None
    try:
        env = Counting(RealGameEnv(RealEnvConfig(address=address, reset_seed=0, timeout_s=args.timeout,
                                                 retries=args.retries)))
        if faults and args.garbage_rate > 0:
            garbage = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--garbage-client", address,
                                        "--garbage-rate", str(args.garbage_rate), "--seed", str(args.seed + 1)],
                                       cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        config = crossq.CrossQConfig.cpu(buffer_size=args.buffer_size, learning_starts=args.learning_starts)
        loop = HostLoop(env, config, seed=args.seed)
        key, k_agent = jax.random.split(jax.random.PRNGKey(args.seed))
        agent = crossq.init_agent(k_agent, loop.obs_size, loop.action_size, config)
        buffer = loop.init_buffer()
        # compile act and update before the clock starts: steps/s is of training, not of XLA
        agent, buffer, key, _ = loop.run(agent, buffer, key, 1)

        def watchdog() -> None:
            stalled = False
            while not stop.wait(1.0):
                idle = time.monotonic() - env.last_step_at
                if idle > args.hang_timeout and not stalled:
                    hangs[0] += 1
                    stalled = True
                    print(f"HANG: no env step for {idle:.0f} s", file=sys.stderr, flush=True)
                elif idle <= args.hang_timeout:
                    stalled = False

        def sampler() -> None:
            while not stop.wait(args.sample_every):
                r = rss(me)
                if r is not None:
                    trainer_samples.append((time.monotonic(), r))
                plugin.sample()

        def chaos() -> None:
            mean = args.restart_every * 60.0
            while not stop.wait(rng.expovariate(1.0 / mean)):
                plugin.kill_and_restart()

        threads = [threading.Thread(target=f, daemon=True) for f in (watchdog, sampler) + ((chaos,) if faults else ())]
        budget = args.minutes * 60.0
        t0 = time.monotonic()
        env.last_step_at = t0
        for t in threads:
            t.start()
        unavailable = 0
        bar = tqdm(total=round(budget), unit="s", desc="soak", disable=args.no_progress, file=sys.stderr,
                   mininterval=1.0, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s {postfix}")
        while time.monotonic() - t0 < budget:
            try:
                agent, buffer, key, _ = loop.run(agent, buffer, key, args.chunk_steps)
            except BridgeUnavailable:
                unavailable += 1  # the plugin was down longer than the client's retries: start over
                stop.wait(1.0)
                try:
                    loop.restart()
                except BridgeUnavailable:
                    pass
            elapsed = time.monotonic() - t0
            bar.n = min(round(elapsed), bar.total)
            bar.set_postfix_str(f"steps {env.steps} restarts {plugin.restarts} hangs {hangs[0]}", refresh=False)
            bar.refresh()
        elapsed = time.monotonic() - t0
        bar.close()
        stop.set()
        for t in threads:
            t.join(timeout=5)
    finally:
        stop.set()
        garbage_counts = ""
        if garbage is not None:
            garbage.terminate()
            try:
                garbage_counts = garbage.communicate(timeout=10)[0].strip()
            except subprocess.TimeoutExpired:
                garbage.kill()
        if env is not None:
            env.close()
        plugin.stop()
    lives = [life for life in plugin.lives if len(life.samples) >= 3]
    longest = max(lives, key=lambda life: life.samples[-1][0] - life.samples[0][0], default=None)
    lost = sum(env.ends.get(r, 0) for r in FAULT_REASONS)
    return {
        "minutes": elapsed / 60.0, "plugin_restarts": plugin.restarts, "hangs": hangs[0],
        "trainer_rss_growth_pct": growth_pct(trainer_samples, WARMUP_S),
        "plugin_rss_growth_pct": growth_pct(longest.samples, WARMUP_S) if longest else None,
        "longest_plugin_life_s": (longest.samples[-1][0] - longest.samples[0][0]) if longest else 0.0,
        "steps_per_s": env.steps / elapsed, "env_steps": env.steps, "steps_lost": lost,
        "episodes": sum(env.ends.values()), "episodes_truncated_by_faults": lost,
        "ends": dict(sorted(env.ends.items())), "unavailable": unavailable, "garbage": garbage_counts,
        "trainer_rss_mb": trainer_samples[-1][1] / 2 ** 20 if trainer_samples else float("nan"),
    }


def fmt(x: float | None) -> str:
    return "nan" if x is None else f"{x:.2f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0, help="wall-clock length of the training")
    ap.add_argument("--game", choices=["carracing", "kinematic"], default="carracing",
                    help="carracing: the reference game (needs the 'game' extra); kinematic: the numpy example")
    ap.add_argument("--restart-every", type=float, default=5.0, help="mean minutes between plugin kills")
    ap.add_argument("--garbage-rate", type=float, default=50.0, help="garbage requests per second (0: none)")
    ap.add_argument("--no-faults", action="store_true", help="no kills, no garbage: the steps/s baseline")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=2.0, help="trainer's lockstep reply timeout (s)")
    ap.add_argument("--retries", type=int, default=5, help="trainer's reset attempts before it waits and starts over")
    ap.add_argument("--hang-timeout", type=float, default=60.0, help="seconds without an env step that count as a hang")
    ap.add_argument("--buffer-size", type=int, default=100_000, help="replay capacity (preallocated)")
    ap.add_argument("--learning-starts", type=int, default=1_000)
    ap.add_argument("--chunk-steps", type=int, default=50, help="env steps per HostLoop.run call")
    ap.add_argument("--sample-every", type=float, default=5.0, help="seconds between memory samples")
    ap.add_argument("--log-dir", default=os.path.join("runs", "soak"), help="the plugin's log goes here")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--garbage-client", metavar="ADDRESS", help=argparse.SUPPRESS)  # internal: the second client
    args = ap.parse_args(argv)
    if args.garbage_client:
        garbage_client(args.garbage_client, args.garbage_rate, args.seed)
        return 0
    r = run(args)
    print(f"env_steps={r['env_steps']} steps_lost={r['steps_lost']} episodes={r['episodes']} "
          f"episodes_truncated_by_faults={r['episodes_truncated_by_faults']} unavailable={r['unavailable']} "
          f"longest_plugin_life_s={r['longest_plugin_life_s']:.0f} trainer_rss_mb={r['trainer_rss_mb']:.0f}")
    print(f"episode ends: {r['ends']}")
    if r["garbage"]:
        print(f"garbage client: {r['garbage']}")
    print(f"minutes={r['minutes']:.2f} plugin_restarts={r['plugin_restarts']} "
          f"trainer_rss_growth_pct={fmt(r['trainer_rss_growth_pct'])} plugin_rss_growth_pct={fmt(r['plugin_rss_growth_pct'])} "
          f"hangs={r['hangs']} steps_per_s={r['steps_per_s']:.2f}")
    return 0 if r["hangs"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
