"""Checkpoints of the training state (agent, replay buffer, env state, counters, RNG) with Orbax,
and the resolved config as JSON beside them. Nothing is pickled: a checkpoint is the state
pytree's arrays, restored into a template of the same structure (built from the same config).

What makes a checkpoint safe to resume from, whatever killed the process:

- Orbax writes a step into ``<step>.orbax-checkpoint-tmp-<time>``, writes ``commit_success.txt``
  into it last and renames it to ``<step>`` (one atomic rename). A step directory without that file
  was cut mid-write (or copied in part) and is never listed or restored; a temporary directory is
  removed when the checkpoints are opened.
- A listed step that still fails to restore (files lost after the commit: a disk that did not
  flush before a power cut) is moved aside to ``<step>.unreadable`` with a warning, and the step
  before it is restored instead.
- config.json is written to a temporary file and renamed over the old one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

# What a step that does not read back raises from Orbax and TensorStore.
_RESTORE_ERRORS = (ValueError, KeyError, FileNotFoundError, OSError)

CONFIG_FILE = "config.json"
# Written by Orbax into a step as the last file before the step's rename: its presence means complete.
COMMIT_FILE = "commit_success.txt"
TMP_MARK = ".orbax-checkpoint-tmp"
UNREADABLE_SUFFIX = ".unreadable"
INCOMPLETE_SUFFIX = ".incomplete"


def complete_steps(directory: str | Path) -> list[int]:
    """Steps in an Orbax checkpoint directory that were written to the end, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / COMMIT_FILE).is_file())


def _set_aside(path: Path, suffix: str) -> Path:
    """Rename a step directory that must not be used (kept for a post-mortem, out of Orbax's listing)."""
    target = path.with_name(path.name + suffix)
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}{suffix}{n}")
        n += 1
    path.rename(target)
    return target


def clean_incomplete(directory: str | Path) -> list[str]:
    """Remove Orbax's temporary step directories and set aside step directories without the commit
    file, so that neither is resumed from nor blocks a later save (Orbax refuses to save a step below
    the highest one it lists). Returns what was done, one line per directory."""
    directory = Path(directory)
    done: list[str] = []
    if not directory.is_dir():
        return done
    for p in sorted(directory.iterdir()):
        if TMP_MARK in p.name and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed {p.name} (a save cut mid-write)")
        elif p.name.isdigit() and p.is_dir() and not (p / COMMIT_FILE).is_file():
            done.append(f"set aside {p.name} as {_set_aside(p, INCOMPLETE_SUFFIX).name} (no {COMMIT_FILE}: not "
                        "written to the end)")
    return done


class Checkpointer:
    """Numbered checkpoints (by env step) of one state pytree in ``directory``."""

    def __init__(self, directory: str | Path, max_to_keep: int = 3) -> None:
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = Path(directory).absolute()
        for line in clean_incomplete(self.directory):
            log.warning("checkpoints %s: %s", self.directory, line)
        self.max_to_keep = max_to_keep
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=self.max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def all_steps(self) -> list[int]:
        return complete_steps(self.directory)

    def save(self, step: int, state: Any) -> bool:
        """Save synchronously (atomically: see the module's docstring); returns False when ``step`` is
        already saved (same step, same state). Steps above ``step`` are deleted first: they were
        left by a run that was killed and resumed from before them, and Orbax would refuse the save."""
        steps = self.all_steps()
        if step in steps:
            return False
        later = [s for s in self._manager.all_steps() if s > step]
        for s in later:
            self._manager.delete(s)
        if later:
            self._reopen()
        if not self._manager.save(step, args=ocp.args.StandardSave(state)):
            raise RuntimeError(f"orbax did not save step {step} in {self.directory} (steps there: "
                               f"{self._manager.all_steps()})")
        self._manager.wait_until_finished()
        return True

    def _reopen(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
        self._manager = self._open()

    def restore(self, template: Any, step: int | None = None) -> Any:
        """Restore into the structure, shapes and dtypes of ``template``: ``step``, or by default the
        newest complete step that reads back. When the newest fails and the one before it restores,
        the newest was damaged: it is set aside with a warning. When both fail, the template is what
        differs (a changed config) and the error says so; nothing is set aside."""
        steps = self.all_steps()
        if step is None and not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}; train without resume or check the run dir")
        if step is not None and step not in steps:
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; have {steps}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        newest = steps[-1] if step is None else step
        try:
            return self._restore_step(newest, abstract)
        except _RESTORE_ERRORS as e:
            error = e
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        for s in (steps[-2::-1] if step is None else []):
            try:
                state = self._restore_step(s, abstract)
            except _RESTORE_ERRORS:
                continue
            aside = _set_aside(self.directory / str(newest), UNREADABLE_SUFFIX)
            log.warning("checkpoint %s does not read back (%s); set aside as %s, resumed from step %d instead",
                        self.directory / str(newest), first, aside.name, s)
            for later in (t for t in steps if s < t < newest):
                _set_aside(self.directory / str(later), UNREADABLE_SUFFIX)
            self._reopen()
            return state
        raise ValueError(
            f"checkpoint {self.directory / str(newest)} does not match the state built from the current "
            f"config (network sizes, num_envs, buffer size?); compare with {CONFIG_FILE} in the run dir: {first}"
        ) from error

    def _restore_step(self, step: int, abstract: Any) -> Any:
        state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        # Orbax restores the saved shapes whatever the template says: compare them here.
        got, want = jax.tree_util.tree_flatten_with_path(state)[0], jax.tree_util.tree_flatten_with_path(abstract)[0]
        wrong = [f"{jax.tree_util.keystr(k)}: saved {tuple(a.shape)}, expected {tuple(b.shape)}"
                 for (k, a), (_, b) in zip(got, want) if tuple(a.shape) != tuple(b.shape)]
        if len(got) != len(want) or wrong:
            raise ValueError("; ".join(wrong[:3]) or f"{len(got)} arrays saved, {len(want)} expected")
        # Orbax hands back arrays committed to a device; jit keys its cache on that, so a resumed run
        # would compile every program again (seconds each on a CPU). Uncommitted copies, like the
        # template's, hit the programs already compiled.
        return jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), state)

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """JSON written to a temporary file beside ``path`` and renamed over it: a kill leaves the old
    file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def write_config(run_dir: str | Path, config: dict[str, Any]) -> Path:
    """Write the resolved config as JSON; refuses to overwrite a different one (resume safety)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CONFIG_FILE
    new = json.loads(json.dumps(config))
    if path.exists():
        old = json.loads(path.read_text())
        if old != new:
            raise ValueError(
                f"{path} holds a different config than this run's; use a new run dir, or delete the old one "
                f"to start over. Differences in keys: "
                f"{sorted(k for k in set(old) | set(config) if old.get(k) != new.get(k))}"
            )
        return path
    return write_json_atomic(path, new)


def read_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a run dir written by racerl_jax.train?")
    return json.loads(path.read_text())

