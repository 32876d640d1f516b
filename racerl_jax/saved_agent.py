"""A trained agent as a run saved it: found from any path a user gives (the run dir, its
``best_agent/``, its ``checkpoints/``, or one step under either) and restored into the networks the
run's ``config.json`` describes. Nothing is unpickled; saved shapes are checked against the config.
Evaluation reads agents this way, and so does fine-tuning on the game.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from racerl_jax import crossq
from racerl_jax.checkpoint import CONFIG_FILE
from racerl_jax.crossq import AgentState, CrossQConfig
from racerl_jax.train_racing import BEST_AGENT_DIR, TrainConfig, env_config
from surrogate.env import RacingEnv

CHECKPOINTS_DIR = "checkpoints"


class AgentError(Exception):
    """An agent path or run that cannot be used: the message says what is wrong and how to fix it.
    ``code`` is a command's exit status (2: the command line, 1: the files it names)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


@dataclasses.dataclass
class SavedAgent:
    """An agent restored from a run, with the run's settings."""

    agent: AgentState
    config: TrainConfig  # the run's command settings (config.json "command")
    run_dir: Path
    checkpoint: Path  # the step directory restored
    step: int  # env steps the agent had trained for when saved
    source: str  # "best_agent" (the best clean evaluation lap's) or "checkpoint"

    def fitted(self, where: str = "run it"):
        """The surrogate file the run trained on (a ``FittedSurrogate``), or None for a run on a
        built-in car. A file that does not load raises AgentError with the fix: paths in the run's
        config are relative to where training ran, so ``where`` names what to do from there."""
        from surrogate.surrogate_file import SurrogateFileError, load_surrogate

        if not self.config.surrogate:
            return None
        try:
            return load_surrogate(self.config.surrogate)
        except (SurrogateFileError, FileNotFoundError) as e:
            raise AgentError(f"the run's surrogate file does not load: {e} (paths in {CONFIG_FILE} are relative to "
                             f"where training ran: {where} from there)", code=1) from None


_FORMS = ("a run dir (runs/crossq-...), its best_agent/, its checkpoints/, or one step under either "
          "(e.g. runs/crossq-.../checkpoints/100000)")


def _steps_in(directory: Path) -> list[int]:
    """Finished checkpoint steps in an orbax checkpoint directory (unfinished saves carry a suffix)."""
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / "default").is_dir())


def locate_agent(path: str | Path) -> tuple[Path, Path, str]:
    """(run dir, step dir, source) for an ``--agent`` path: a run dir (its best agent, else its last
    checkpoint), its ``best_agent``/``checkpoints`` dir (the latest step), or a step dir in one. The
    run's config.json is checked first: a broken run is reported as that, not as a missing agent."""
    p = Path(path)
    if not p.exists():
        raise AgentError(f"--agent {path}: no such file or directory; give {_FORMS}")
    if not p.is_dir():
        raise AgentError(f"--agent {path} is a file; give {_FORMS}")
    p = p.resolve()
    if (p / CONFIG_FILE).is_file():
        run_dir, within = p, None
    elif p.name in (BEST_AGENT_DIR, CHECKPOINTS_DIR) and (p.parent / CONFIG_FILE).is_file():
        run_dir, within = p.parent, p
    elif p.name.isdigit() and p.parent.name in (BEST_AGENT_DIR, CHECKPOINTS_DIR) \
            and (p.parent.parent / CONFIG_FILE).is_file():
        run_dir, within = p.parent.parent, p
    else:
        raise AgentError(f"--agent {path}: not a training run (no {CONFIG_FILE} in it or the run dir above it); "
                            f"give {_FORMS}")
    read_run_config(run_dir)
    source = lambda d: "best_agent" if d.name == BEST_AGENT_DIR else "checkpoint"  # noqa: E731
    if within is None:  # the run dir: its best agent, else its last checkpoint
        for sub in (BEST_AGENT_DIR, CHECKPOINTS_DIR):
            steps = _steps_in(p / sub)
            if steps:
                return p, p / sub / str(steps[-1]), source(p / sub)
        raise AgentError(f"--agent {path}: the run holds no saved agent (no step in {BEST_AGENT_DIR}/ or "
                            f"{CHECKPOINTS_DIR}/): it has not checkpointed yet; train it longer (or --resume it)")
    if within.name.isdigit():
        if not (within / "default").is_dir():
            raise AgentError(f"--agent {path}: not a finished checkpoint (no default/ in it); have steps "
                                f"{_steps_in(within.parent)} in {within.parent}")
        return run_dir, within, source(within.parent)
    steps = _steps_in(within)
    if not steps:
        raise AgentError(f"--agent {path}: no saved step in it; give the run dir to use what the run saved")
    return run_dir, within / str(steps[-1]), source(within)


def read_run_config(run_dir: Path) -> tuple[TrainConfig, CrossQConfig]:
    """The run's command settings and agent config from its config.json."""
    path = run_dir / CONFIG_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise AgentError(f"{path}: cannot read it ({e}); it is written by train_crossq.py, give a run dir "
                            "it wrote") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("command"), dict) \
            or not isinstance(saved.get("crossq"), dict):
        raise AgentError(f"{path}: no 'command' and 'crossq' settings in it: not a run of train_crossq.py "
                            "(the racing command); give a run dir it wrote")
    try:
        return TrainConfig.from_dict(saved["command"]), CrossQConfig.from_dict(saved["crossq"])
    except (TypeError, ValueError) as e:
        raise AgentError(f"{path}: the run's settings do not load ({e}); was it written by another version "
                            "of the project? Evaluate it with that version") from None


def _restore(step_dir: Path, template: AgentState) -> AgentState:
    """The agent in a checkpoint step: a best agent is the agent alone, a training checkpoint the
    whole training state, of which only the agent is read."""
    import orbax.checkpoint as ocp

    item_dir = step_dir / "default"
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # orbax warns that a step's own metadata is not in the item dir
    try:
        with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ck:
            meta = ck.metadata(item_dir)
            tree = getattr(getattr(meta, "item_metadata", meta), "tree", meta)
            whole = isinstance(tree, dict) and "agent" in tree  # a training state (TrainCarry, HostCarry)
            item = {"agent": abstract} if whole else abstract
            args = ocp.args.PyTreeRestore(item=item, partial_restore=whole,
                                          restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                                                    item))
            restored = ck.restore(item_dir, args=args)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        raise AgentError(
            f"{step_dir}: the checkpoint does not hold the agent that the run's {CONFIG_FILE} describes (network "
            f"sizes, pedals?): {str(e).splitlines()[0] if str(e) else type(e).__name__}; give a checkpoint of "
            "this run", code=1) from None
    finally:
        absl.setLevel(level)
    agent = restored["agent"] if whole else restored
    # Orbax restores the saved shapes whatever the template says: compare them here.
    got = jax.tree_util.tree_flatten_with_path(agent)[0]
    want = jax.tree_util.tree_flatten_with_path(abstract)[0]
    wrong = [f"{jax.tree_util.keystr(k)}: saved {np.shape(a)}, config {b.shape}"
             for (k, a), (_, b) in zip(got, want) if np.shape(a) != b.shape]
    if len(got) != len(want) or wrong:
        raise AgentError(
            f"{step_dir}: the checkpoint does not hold the agent that the run's {CONFIG_FILE} describes (network "
            f"sizes, pedals?): {'; '.join(wrong[:3]) or 'other arrays'}; give a checkpoint of this run", code=1)
    return jax.tree.map(jnp.asarray, agent)


def load_agent(path: str | Path) -> SavedAgent:
    """The agent an ``--agent`` path names, restored into the networks the run's config.json describes."""
    run_dir, step_dir, source = locate_agent(path)
    cfg, agent_cfg = read_run_config(run_dir)
    env = RacingEnv(env_config(cfg, None, start="line"))  # sizes only: the observation and the pedals
    template = jax.eval_shape(
        lambda k: crossq.init_agent(k, env.observation_size, env.action_size, agent_cfg), jax.random.PRNGKey(0))
    agent = _restore(step_dir, template)
    return SavedAgent(agent, cfg, run_dir, step_dir, int(agent.env_steps), source)
