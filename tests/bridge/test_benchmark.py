import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_latency_benchmark_runs_and_prints_the_summary_line():
    out = subprocess.run([sys.executable, "benchmarks/bridge_latency.py", "--steps", "300", "--seconds", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"lockstep_rtt_p50_ms=(\S+) lockstep_rtt_p99_ms=(\S+) realtime_late_p99_ms=(\S+)", last)
    assert m, last
    p50, p99, late = map(float, m.groups())
    assert 0 < p50 <= p99 < 1000 and 0 <= late < 1000
