import json
import os
import signal

import jax
import numpy as np
import pytest

from racerl_jax import checkpoint, train_loop
from racerl_jax.crossq import CrossQConfig
from racerl_jax.envs import Pendulum

TINY = CrossQConfig.cpu(
    critic_hidden=(16, 16), actor_hidden=(16, 16), batch_size=8, learning_starts=40, buffer_size=2_000
)
ENV = Pendulum()
PARAMS = ENV.default_params()


def _train(run_dir, total, **kw):
    return train_loop.train(
        ENV, PARAMS, TINY, total_env_steps=total, num_envs=2, seed=3, chunk_iterations=50,
        run_dir=run_dir, progress=False, **kw,
    )


def _assert_same_state(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_run_split_by_checkpoint_and_resume_equals_uninterrupted_run(tmp_path):
    whole = _train(tmp_path / "whole", 400)
    first = _train(tmp_path / "split", 200)
    assert int(first.carry.agent.env_steps) == 200
    resumed = _train(tmp_path / "split", 400)
    assert resumed.history[0]["env_steps"] == 300  # continued from the checkpoint, not from zero
    for r in (whole, resumed):
        assert int(r.carry.agent.env_steps) == 400 and r.stop_reason == "steps"
    assert int(resumed.carry.agent.updates) == int(whole.carry.agent.updates) > 0
    # Bitwise: agent (params, batch stats, optimiser states, RNG, counters), buffer, envs, episode stats.
    _assert_same_state(whole.carry, resumed.carry)


def test_checkpointer_restores_every_leaf_and_refuses_a_mismatched_template(tmp_path):
    carry = train_loop.init_train_carry(ENV, PARAMS, TINY, 2, jax.random.PRNGKey(0))
    carry = carry.replace(agent=carry.agent.replace(env_steps=carry.agent.env_steps + 7))
    ckpt = checkpoint.Checkpointer(tmp_path / "ck")
    assert ckpt.latest_step() is None
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt.restore(carry)
    assert ckpt.save(7, carry) and not ckpt.save(7, carry)
    template = train_loop.init_train_carry(ENV, PARAMS, TINY, 2, jax.random.PRNGKey(1))
    restored = ckpt.restore(template)
    _assert_same_state(carry, restored)
    assert restored.agent.config == TINY
    other = train_loop.init_train_carry(ENV, PARAMS, TINY, 3, jax.random.PRNGKey(1))  # 3 envs, not 2
    with pytest.raises(ValueError, match="does not match the state"):
        ckpt.restore(other)
    ckpt.close()


def test_a_restored_state_runs_the_programs_compiled_before_the_save_without_compiling_again(tmp_path):
    state = {"w": jax.numpy.ones((3,)), "n": jax.numpy.zeros((2,), jax.numpy.int32), "key": jax.random.PRNGKey(0)}
    step = jax.jit(lambda s: jax.tree.map(lambda a: a + 1, s))
    step(state)
    with checkpoint.Checkpointer(tmp_path / "ck") as ckpt:
        ckpt.save(1, state)
    with checkpoint.Checkpointer(tmp_path / "ck") as ckpt:
        restored = ckpt.restore(state)
    step(restored)
    assert step._cache_size() == 1


def test_train_writes_config_logs_curve_and_checkpoints_and_evaluates(tmp_path):
    evaluate = train_loop.make_evaluate(ENV, PARAMS, num_envs=2)
    calls = []

    def eval_fn(agent):
        calls.append(int(agent.env_steps))
        return {"return_mean": float(evaluate(agent, jax.random.PRNGKey(0)).mean())}

    result = _train(tmp_path, 400, eval_fn=eval_fn, eval_every_env_steps=200, checkpoint_every_env_steps=100)
    assert calls == [200, 400]
    config = checkpoint.read_config(tmp_path)
    assert CrossQConfig.from_dict(config["crossq"]) == TINY and config["num_envs"] == 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_steps"] for r in rows] == [100, 200, 300, 400]
    assert rows[-1]["eval_return_mean"] < 0 and rows[-1]["updates_per_s"] > 0
    assert (tmp_path / "learning_curve.png").stat().st_size > 1000
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tensorboard"))
    with checkpoint.Checkpointer(tmp_path / "checkpoints") as ckpt:
        assert ckpt.all_steps() == [200, 300, 400]  # keeps the last 3
    assert result.history[-1]["eval_return_mean"] == rows[-1]["eval_return_mean"]
    with pytest.raises(ValueError, match="different config"):
        train_loop.train(ENV, PARAMS, CrossQConfig.cpu(), total_env_steps=10, run_dir=tmp_path, progress=False)


def test_sigterm_stops_between_chunks_and_saves(tmp_path):
    def eval_fn(agent):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-run, like a spot termination
        return {}

    result = _train(tmp_path, 400, eval_fn=eval_fn, eval_every_env_steps=200)
    assert result.stop_reason == "signal"
    assert int(result.carry.agent.env_steps) == 200
    with checkpoint.Checkpointer(tmp_path / "checkpoints") as ckpt:
        assert ckpt.latest_step() == 200
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler removed afterwards


def test_wall_clock_budget_stops_the_run(tmp_path):
    result = _train(tmp_path, 10_000, max_wall_seconds=0.0)
    assert result.stop_reason == "wall_clock" and int(result.carry.agent.env_steps) == 100


# ----------------------------------------------------------------------------- atomic checkpoints


def _state(v: float):
    return {"w": np.full((3,), v, np.float32), "n": np.full((), v, np.int32)}


def test_a_step_cut_mid_write_is_never_resumed_from_and_does_not_block_the_next_save(tmp_path):
    d = tmp_path / "ck"
    with checkpoint.Checkpointer(d) as ckpt:
        ckpt.save(100, _state(1.0))
        ckpt.save(200, _state(2.0))
    # What a kill leaves: Orbax's temporary dir of a save in progress, and a step dir missing the
    # commit file written last (a copy or a filesystem that renamed before the contents landed).
    (d / "300.orbax-checkpoint-tmp-1700000000/default").mkdir(parents=True)
    (d / "300.orbax-checkpoint-tmp-1700000000/default/_METADATA").write_text("{")
    (d / "400/default").mkdir(parents=True)
    with checkpoint.Checkpointer(d) as ckpt:
        assert ckpt.all_steps() == [100, 200] and ckpt.latest_step() == 200
        restored = ckpt.restore(_state(0.0))
        assert int(restored["n"]) == 2 and restored["w"].tolist() == [2.0] * 3
        assert ckpt.save(300, _state(3.0))  # the resumed run saves on past where the cut save was
        assert ckpt.latest_step() == 300
    names = sorted(p.name for p in d.iterdir())
    assert not any("orbax-checkpoint-tmp" in n for n in names) and "400.incomplete" in names


def test_a_committed_step_that_does_not_read_back_is_set_aside_and_the_one_before_restored(tmp_path):
    d = tmp_path / "ck"
    with checkpoint.Checkpointer(d) as ckpt:
        ckpt.save(100, _state(1.0))
        ckpt.save(200, _state(2.0))
    for f in (d / "200" / "default").rglob("*"):  # its data lost after the commit (a disk that did not flush)
        if f.is_file() and f.name not in ("commit_success.txt", "_METADATA", "_sharding"):
            f.unlink()
    with checkpoint.Checkpointer(d) as ckpt:
        restored = ckpt.restore(_state(0.0))
        assert int(restored["n"]) == 1
        assert ckpt.all_steps() == [100] and (d / "200.unreadable").is_dir()
        assert ckpt.save(150, _state(1.5)) and ckpt.all_steps() == [100, 150]


def test_a_changed_config_is_reported_and_sets_no_checkpoint_aside(tmp_path):
    d = tmp_path / "ck"
    with checkpoint.Checkpointer(d) as ckpt:
        ckpt.save(100, _state(1.0))
        ckpt.save(200, _state(2.0))
        with pytest.raises(ValueError, match="does not match the state built from the current config"):
            ckpt.restore({"w": np.zeros((5,), np.float32), "n": np.zeros((), np.int32)})
        assert ckpt.all_steps() == [100, 200]


def test_a_save_supersedes_later_steps_left_by_a_run_resumed_from_before_them(tmp_path):
    # The best agent after a kill: the lost part of the run saved one at step 250, the resumed run
    # drives a better lap at 240; that one must be kept (Orbax alone refuses a step below its latest).
    with checkpoint.Checkpointer(tmp_path / "best", max_to_keep=1) as ckpt:
        ckpt.save(250, _state(2.5))
        assert ckpt.save(240, _state(2.4)) and ckpt.all_steps() == [240]
        assert int(ckpt.restore(_state(0.0))["n"]) == 2


def test_checkpoints_also_come_every_so_many_seconds_of_wall_clock(tmp_path):
    _train(tmp_path, 300, checkpoint_every_env_steps=10_000, checkpoint_every_seconds=1e-6)
    with checkpoint.Checkpointer(tmp_path / "checkpoints") as ckpt:
        assert ckpt.all_steps() == [100, 200, 300]  # every chunk (100 env steps), and the final one
