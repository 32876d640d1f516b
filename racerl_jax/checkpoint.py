"""Checkpoints of the training state (agent, replay buffer, env state, counters, RNG) with Orbax,
the resolved config as JSON beside them, and a SIGINT/SIGTERM flag so a run can save before it
exits (spot termination, Ctrl-C). Nothing is pickled: a checkpoint is the state pytree's arrays,
restored into a template of the same structure (built from the same config).
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import jax
import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"


class Checkpointer:
    """Numbered checkpoints (by env step) of one state pytree in ``directory``."""

    def __init__(self, directory: str | Path, max_to_keep: int = 3) -> None:
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any) -> bool:
        """Save synchronously; returns False when ``step`` is already saved (same step, same state)."""
        if step in self._manager.all_steps():
            return False
        self._manager.save(step, args=ocp.args.StandardSave(state))
        self._manager.wait_until_finished()
        return True

    def restore(self, template: Any, step: int | None = None) -> Any:
        """Restore into the structure, shapes and dtypes of ``template`` (latest step by default)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}; train without resume or check the run dir")
        if step not in self._manager.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; have {self.all_steps()}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        try:
            return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except (ValueError, KeyError) as e:
            raise ValueError(
                f"checkpoint {self.directory / str(step)} does not match the state built from the current "
                f"config (network sizes, num_envs, buffer size?); compare with {CONFIG_FILE} in the run dir: {e}"
            ) from e

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def write_config(run_dir: str | Path, config: dict[str, Any]) -> Path:
    """Write the resolved config as JSON; refuses to overwrite a different one (resume safety)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CONFIG_FILE
    text = json.dumps(config, indent=2, sort_keys=True)
    if path.exists():
        old = json.loads(path.read_text())
        if old != json.loads(text):
            raise ValueError(
                f"{path} holds a different config than this run's; use a new run dir, or delete the old one "
                f"to start over. Differences in keys: "
                f"{sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))}"
            )
        return path
    path.write_text(text + "\n")
    return path


def read_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a run dir written by racerl_jax.train?")
    return json.loads(path.read_text())


class StopSignal:
    """Context manager: SIGINT/SIGTERM set ``requested`` instead of killing the process, so the
    training driver finishes its jitted chunk and saves. A second SIGINT interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum

    def __enter__(self) -> "StopSignal":
        # Signal handlers can only be installed from the main thread; elsewhere the flag stays False.
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
