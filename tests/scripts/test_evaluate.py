"""scripts/evaluate.py as a user runs it: a bad --agent or option is one line on stderr that names
the fix and a non-zero exit status, never a traceback."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "evaluate.py")


def _run(*args, cwd):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_a_bad_agent_path_exits_2_with_one_line_naming_the_fix(tmp_path):
    p = _run("--agent", str(tmp_path / "runs" / "nothing-here"), "--laps", "1", cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evaluate.py: error: --agent ")
    assert "no such file or directory; give a run dir" in lines[0] and "best_agent" in lines[0]

    # a directory that is no training run
    p = _run("--agent", str(tmp_path), cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "not a training run" in p.stderr


def test_bad_options_exit_2_before_anything_is_loaded(tmp_path):
    p = _run("--agent", "runs/x", "--laps", "0", cwd=tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "--laps 0: give the number of laps to drive, >= 1" in p.stderr
    p = _run("--agent", "runs/x", "--mode", "realtime", cwd=tmp_path)
    assert p.returncode == 2 and "add --backend real" in p.stderr
