"""deploy/: the PowerShell scripts and the Dockerfile, checked as far as a Linux machine without
pwsh or a Docker daemon can: PowerShell's strings, comments and brackets tokenised and balanced,
every variable a script reads assigned first (the scripts run under Set-StrictMode, where an
unset variable is an error), the options they pass to the project's commands known to those
commands' parsers, and the Dockerfile's sources present and its command parsed."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from racerl_jax import finetune, spot, train_cli

ROOT = Path(__file__).resolve().parents[2]
WINDOWS = ROOT / "deploy" / "windows"
SCRIPTS = sorted(WINDOWS.glob("*.ps1"))

# Variables PowerShell sets itself (the ones these scripts read).
AUTOMATIC = {"_", "true", "false", "null", "PSScriptRoot", "LASTEXITCODE", "env", "ErrorActionPreference"}
PAIRS = {")": "(", "}": "{", "]": "["}


def tokenise(text: str) -> list[tuple[str, str, int]]:
    """(kind, text, line) of the code outside comments: kinds "code", "squote", "dquote", "var".
    Raises ValueError naming the line of an unclosed string, comment or bracket, or a closing
    bracket that does not match."""
    out: list[tuple[str, str, int]] = []
    stack: list[tuple[str, int]] = []
    i, line, n = 0, 1, len(text)

    def var_at(j: int) -> tuple[str, int]:
        m = re.match(r"\$(?:\{([^}]+)\}|([A-Za-z_][A-Za-z0-9_]*)(?::[A-Za-z_][A-Za-z0-9_]*)?)", text[j:])
        return ((m.group(1) or m.group(2)), j + m.end()) if m else ("", j + 1)

    def dquote_end(j: int, here: bool) -> int:
        """Index after a double-quoted string starting at j (after the opening), recording its variables."""
        nonlocal line
        while j < n:
            c = text[j]
            if c == "\n":
                line += 1
            if c == "`":
                j += 2
                continue
            if here and text.startswith('\n"@', j):
                line += 1
                return j + 3
            if not here and c == '"':
                if text.startswith('""', j):
                    j += 2
                    continue
                return j + 1
            if c == "$" and text.startswith("$(", j):
                j = code(j + 2, ")")
                continue
            if c == "$":
                name, j = var_at(j)
                if name:
                    out.append(("var", name, line))
                continue
            j += 1
        raise ValueError(f"line {line}: a double-quoted string is not closed")

    def code(j: int, until: str | None) -> int:
        """Code from j to the bracket ``until`` closing a subexpression (or the end)."""
        nonlocal line
        depth = len(stack)  # brackets opened inside the subexpression close before it does
        while j < n:
            c = text[j]
            if c == "\n":
                line += 1
                j += 1
            elif text.startswith("<#", j):
                end = text.find("#>", j)
                if end < 0:
                    raise ValueError(f"line {line}: a <# block comment is not closed")
                line += text.count("\n", j, end)
                j = end + 2
            elif c == "#":
                end = text.find("\n", j)
                j = n if end < 0 else end
            elif c == "`":
                if j + 1 < n and text[j + 1] == "\n":
                    line += 1
                j += 2
            elif text.startswith("@'\n", j):
                end = text.find("\n'@", j)
                if end < 0:
                    raise ValueError(f"line {line}: a @' here-string is not closed")
                line += text.count("\n", j, end + 1)
                j = end + 3
            elif text.startswith('@"\n', j):
                line += 1
                j = dquote_end(j + 3, True)
            elif c == "'":
                m = re.match(r"'(?:[^']|'')*'", text[j:])
                if not m:
                    raise ValueError(f"line {line}: a single-quoted string is not closed")
                out.append(("squote", m.group(0)[1:-1].replace("''", "'"), line))
                line += m.group(0).count("\n")
                j += m.end()
            elif c == '"':
                j = dquote_end(j + 1, False)
            elif c == "$":
                name, j = var_at(j)
                if name:
                    out.append(("var", name, line))
            elif c in "({[":
                stack.append((c, line))
                j += 1
            elif c in ")}]":
                if until == c and len(stack) == depth:
                    return j + 1
                if not stack or stack[-1][0] != PAIRS[c]:
                    raise ValueError(f"line {line}: {c!r} closes nothing"
                                     + (f" (the {stack[-1][0]!r} of line {stack[-1][1]} is open)" if stack else ""))
                stack.pop()
                j += 1
            else:
                m = re.match(r"[A-Za-z0-9_\-.\\:]+", text[j:])
                if m:
                    out.append(("code", m.group(0), line))
                    j += m.end()
                else:
                    j += 1
        if until is not None:
            raise ValueError(f"line {line}: a $( subexpression is not closed")
        return j

    code(0, None)
    if stack:
        raise ValueError(f"line {stack[-1][1]}: {stack[-1][0]!r} is not closed")
    return out


def unassigned_variables(text: str) -> list[str]:
    """Variables read before any assignment, parameter or foreach binds them (StrictMode errors)."""
    declared = set(AUTOMATIC)
    start = re.search(r"^param\(", text, re.M)
    if start:  # the block up to its matching parenthesis
        depth, j = 0, start.end() - 1
        while True:
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            if depth == 0:
                break
            j += 1
        block = text[start.end():j]
        declared |= set(re.findall(r"\]\s*\$([A-Za-z_]\w*)", block))
        declared |= set(re.findall(r"^\s*\$([A-Za-z_]\w*)\s*=", block, re.M))
    declared |= set(re.findall(r"\$([A-Za-z_]\w*)\s*(?:\+)?=(?!=)", text))
    declared |= set(re.findall(r"foreach\s*\(\s*\$([A-Za-z_]\w*)\s+in\b", text))
    return sorted({name for kind, name, _ in tokenise(text) if kind == "var" and name not in declared
                   and not name.startswith("env:")})


def test_the_checker_finds_what_breaks_a_script():
    with pytest.raises(ValueError, match="line 2: '{' is not closed"):
        tokenise("$a = 1\nif ($a) {\n  'x'\n")
    with pytest.raises(ValueError, match=r"line 1: '\)' closes nothing"):
        tokenise("Write-Host 'a' )")
    with pytest.raises(ValueError, match="line 2: a double-quoted string is not closed"):
        tokenise("$a = 1\n\"$a")
    # Brackets and quotes inside strings, comments and here-strings do not count.
    kinds = tokenise("# {\n<# ( #>\n$x = 'it''s ('\n$y = \"$($x + ')') `\" {\"\n@'\n}\n'@\n")
    assert ("squote", "it's (", 3) in kinds and ("var", "x", 4) in kinds
    assert unassigned_variables("param([string]$A)\n$b = $A + $c\n") == ["c"]


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_each_powershell_script_tokenises_reads_only_assigned_variables_and_runs_strict(path):
    text = path.read_text()
    tokenise(text)
    assert unassigned_variables(text) == []
    assert text.startswith("#Requires -Version 5.1\n<#\n.SYNOPSIS\n")
    assert "Set-StrictMode -Version Latest" in text and "$ErrorActionPreference = 'Stop'" in text


def test_the_scripts_pass_only_options_the_commands_know_and_read_the_documented_exit_status():
    start = (WINDOWS / "start.ps1").read_text()
    known = set(finetune.build_parser()._option_string_actions)
    flags = {t for kind, t, _ in tokenise(start) if kind == "squote" and t.startswith("--")}
    assert {"--agent", "--run-dir", "--game-mode", "--game-minutes", "--no-progress"} <= flags
    carracing = {"--mode"}
    assert flags - known <= carracing, flags - known
    assert re.search(r"^\$ExitInterrupted = (\d+)", start, re.M).group(1) == str(spot.EXIT_INTERRUPTED)
    assert "'scripts\\finetune_real.py'" in start and (ROOT / "scripts" / "finetune_real.py").is_file()
    register = (WINDOWS / "register-task.ps1").read_text()
    assert "'setup.ps1'" in register and "'start.ps1'" in register
    for needed in ("-Agent", "-ProjectRoot", "-DataRoot"):  # what register-task passes, start declares
        assert f"${needed[1:]}" in start


def test_the_dockerfile_copies_what_exists_and_its_command_parses():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _ = line.split()
        for s in sources:
            assert (ROOT / s).exists(), s
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M).group(1)
    import json

    argv = json.loads(cmd)
    assert argv[:2] == ["python", "scripts/train_crossq.py"] and (ROOT / argv[1]).is_file()
    cfg = train_cli.parse_args(argv[2:])
    assert cfg.resume and cfg.run_dir == "runs/surrogate"
    quick = re.findall(r"^#\s+docker run .*? racerl-jax (python .+)$", text, re.M)
    for command in quick:
        args = shlex.split(command)
        assert args[1] == "scripts/train_crossq.py"
        train_cli.parse_args(args[2:])
