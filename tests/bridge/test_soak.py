import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAST = (r"minutes=(\S+) plugin_restarts=(\d+) trainer_rss_growth_pct=(\S+) plugin_rss_growth_pct=(\S+) "
        r"hangs=(\d+) steps_per_s=(\S+)")


def test_soak_trains_through_plugin_kills_and_garbage_and_prints_the_summary_line(tmp_path):
    # ~6 s of training on the numpy example game; with seed 0 the first kills come at 1.8 s and 3.2 s
    out = subprocess.run([sys.executable, "benchmarks/soak.py", "--minutes", "0.1", "--game", "kinematic",
                          "--restart-every", "0.03", "--garbage-rate", "100", "--sample-every", "0.5",
                          "--learning-starts", "50", "--timeout", "1", "--log-dir", str(tmp_path), "--no-progress"],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    m = re.fullmatch(LAST, lines[-1])
    assert m, lines[-1]
    minutes, restarts, trainer_growth, plugin_growth, hangs, steps_per_s = m.groups()
    assert 0.1 <= float(minutes) < 0.5 and int(restarts) >= 1 and int(hangs) == 0 and float(steps_per_s) > 1
    assert trainer_growth != "nan"
    garbage = re.search(r"garbage client: sent=(\d+) answered=(\d+)", out.stdout)
    assert garbage and int(garbage.group(2)) > 50  # the plugin answered the garbage and kept serving the trainer
    steps = re.search(r"env_steps=(\d+) steps_lost=(\d+)", out.stdout)
    assert int(steps.group(1)) > 50
