"""One stage of a benchmark that runs the project's own commands: the command as a user would type
it, its output to a log, its last line back (the figures), a clear stop when it fails."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_logged(cmd: list[str], log: Path) -> str:
    """Run ``cmd`` from the project root to completion, its output to ``log``; its last line.
    SystemExit naming the log when it fails."""
    print(f"[{time.strftime('%H:%M:%S')}] {' '.join(cmd)}", flush=True)
    with log.open("w") as f:
        code = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    lines = log.read_text().strip().splitlines()
    if code != 0:
        raise SystemExit(f"{Path(cmd[1]).name} failed (exit {code}); see {log}")
    return lines[-1] if lines else ""
