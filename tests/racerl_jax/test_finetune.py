import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from racerl_jax import crossq, finetune as ft, replay
from racerl_jax.checkpoint import Checkpointer, write_config
from racerl_jax.logs import read_metrics
from racerl_jax.saved_agent import load_agent
from racerl_jax.train_racing import TrainConfig
from surrogate.observation import ObsConfig
from tests.racerl_jax.test_spot import NOTICE, FakeIMDS

LAST_LINE = re.compile(r"^clean_lap_rate=(\S+) mean_lap_s=(\S+) start_mean_lap_s=(\S+) baseline_lap_s=(\S+) "
                       r"game_minutes=(\S+)$")
CONFIG = crossq.CrossQConfig.cpu(critic_hidden=(16, 16), actor_hidden=(16, 16), batch_size=16, buffer_size=500)
OBS = ObsConfig().size
SOURCE_UPDATES = 1_234
# One compiled call: run eagerly the initialisation compiles each of its few hundred ops.
_init = jax.jit(lambda key: crossq.init_agent(key, OBS, 2, CONFIG))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return _source_run(tmp_path_factory.mktemp("finetune"))


def _source_run(tmp_path):
    """A surrogate run as train_crossq.py leaves it: config.json, best_agent/ and a checkpoint with its
    replay buffer (rewards of -1: told apart from the game's in the mixing test)."""
    run = tmp_path / "source"
    write_config(run, {"crossq": CONFIG.to_dict(), "command": TrainConfig(pedals="combined").run_settings()})
    agent = _init(jax.random.PRNGKey(0))
    agent = agent.replace(env_steps=jnp.int32(50_000), updates=jnp.int32(SOURCE_UPDATES),
                          log_alpha=jnp.float32(np.log(0.01)),  # statistics a surrogate run learned:
                          critic_stats=jax.tree.map(lambda x: x + 1, agent.critic_stats))
    with Checkpointer(run / "best_agent", max_to_keep=1) as ckpt:
        ckpt.save(50_000, agent)
    buffer = replay.init(300, OBS, 2)
    buffer = replay.add_batch(buffer, replay.Transition(
        obs=jnp.zeros((300, OBS)), action=jnp.zeros((300, 2)), reward=-jnp.ones((300,)),
        next_obs=jnp.zeros((300, OBS)), terminated=jnp.zeros((300,))))
    with Checkpointer(run / "checkpoints") as ckpt:
        ckpt.save(50_000, {"agent": agent, "buffer": buffer, "key": jax.random.PRNGKey(1)})
    return run, agent


def test_critic_statistics_and_entropy_are_kept_by_default_or_reset_on_request(source):
    _, agent = source
    kept = ft.prepare_agent(agent, ft.FinetuneConfig(agent="x", seed_steps=7), OBS)
    assert int(kept.env_steps) == 0 and int(kept.updates) == SOURCE_UPDATES  # game steps from zero, updates go on
    assert kept.config.learning_starts == 7 and kept.config.buffer_size == 200_000
    for a, b in zip(jax.tree.leaves((kept.critic_stats, kept.log_alpha, kept.critic_params)),
                    jax.tree.leaves((agent.critic_stats, agent.log_alpha, agent.critic_params))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    reset = ft.prepare_agent(agent, ft.FinetuneConfig(agent="x", critic_stats="reset", entropy="reset"), OBS)
    assert float(jnp.exp(reset.log_alpha)) == pytest.approx(CONFIG.init_entropy_coef)
    fresh = _init(jax.random.PRNGKey(0))
    for a, b in zip(jax.tree.leaves(reset.critic_stats), jax.tree.leaves(fresh.critic_stats)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(reset.critic_params), jax.tree.leaves(agent.critic_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the weights are the surrogate's either way


def test_mixed_batches_draw_the_set_share_from_the_surrogate_buffer(source):
    run, _ = source
    surrogate = ft.load_surrogate_buffer(load_agent(run), OBS, 2)
    assert int(surrogate.size) == 300
    game = replay.add_batch(replay.init(100, OBS, 2), replay.Transition(
        obs=jnp.ones((100, OBS)), action=jnp.zeros((100, 2)), reward=jnp.ones((100,)),
        next_obs=jnp.ones((100, OBS)), terminated=jnp.zeros((100,))))
    batch = replay.sample_mixed(game, surrogate, jax.random.PRNGKey(0), 16, 8)  # RLPD's symmetric 50/50
    assert np.asarray(batch.reward).tolist() == [1.0] * 8 + [-1.0] * 8
    assert replay.sample_mixed(game, surrogate, jax.random.PRNGKey(0), 16, 0).reward.tolist() == [1.0] * 16
    with pytest.raises(ValueError, match="leaves both sources"):
        ft.mixed_update_fn(surrogate, 0.99, 16)


def test_bad_options_and_a_changed_resume_are_refused_naming_the_fix(tmp_path):
    with pytest.raises(SystemExit, match="--surrogate-ratio 1.0: must be in"):
        ft.parse_args(["--agent", "x", "--surrogate-ratio", "1"])
    with pytest.raises(SystemExit, match="give the surrogate-trained agent"):
        ft.parse_args(["--agent", ""])
    with pytest.raises(SystemExit, match="no such file or directory"):
        ft.main(["--agent", str(tmp_path / "missing")])
    cfg = ft.FinetuneConfig(agent="a", run_dir=str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"finetune": cfg.learning_settings()}))
    assert ft.check_resume(cfg, tmp_path)  # the same settings: resumed
    assert ft.check_resume(ft.FinetuneConfig(agent="a", eval_laps=9, game_minutes=60.0, spot_metadata_url=""), tmp_path)
    with pytest.raises(SystemExit, match=r"entropy 'keep' -> 'reset'"):
        ft.check_resume(ft.FinetuneConfig(agent="a", entropy="reset"), tmp_path)


def test_finetune_on_the_game_is_interrupted_by_a_spot_notice_then_the_same_command_resumes_and_ends_with_the_line(
        tmp_path, source, game_address, capsys):
    run, _ = source
    out = tmp_path / "ft"
    args = ["--agent", str(run / "best_agent"), "--run-dir", str(out), "--address", game_address,
            "--game-minutes", "0.12", "--seed-steps", "40", "--eval-every-env-steps", "60", "--eval-laps", "1",
            "--final-laps", "1", "--eval-max-steps", "40", "--episode-steps", "100", "--chunk-env-steps", "30",
            "--checkpoint-every-env-steps", "60", "--buffer-size", "500", "--surrogate-ratio", "0.5",
            "--no-progress"]  # fmt: skip
    with FakeIMDS() as imds:
        imds.instance_action = NOTICE
        first = ft.main([*args, "--spot-metadata-url", imds.url, "--spot-poll-seconds", "0.01"])
    assert first["stop_reason"] == "spot" and first["env_steps"] < 120
    lines = capsys.readouterr().out.strip().splitlines()
    assert "exit status 75" in lines[-2] and LAST_LINE.match(lines[-1])
    state = json.loads((out / "finetune.json").read_text())
    assert {"start", "baseline", "best"} <= set(state) and state["best"]["env_steps"] == 0  # the agent as loaded

    summary = ft.main([*args, "--spot-metadata-url", ""])  # the same command: resumes
    lines = capsys.readouterr().out.strip().splitlines()
    m = LAST_LINE.match(lines[-1])
    assert m, lines[-1]
    assert "(resuming)" in lines[0] and not any("before fine-tuning" in line for line in lines)
    assert summary["stop_reason"] == "steps" and summary["env_steps"] == 120  # 7.2 game seconds, 3 ticks of 0.02 s a step
    assert summary["updates"] == SOURCE_UPDATES + 120 - 40 + 1  # learning from the 40th game step on
    assert float(m.group(5)) == pytest.approx(summary["game_minutes"], abs=0.01) and summary["game_minutes"] >= 0.12
    rows = read_metrics(out / "metrics.jsonl")
    assert rows[len([r for r in rows if r["env_steps"] <= first["env_steps"]])]["env_steps"] == first["env_steps"] + 30
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    # No random warm-up: the policy drove the first 40 steps too (their critics' value is logged; a random
    # action has none). Later values may be null where the tiny untrained critics stop being finite.
    assert len(steps) >= 40 and all(s["value"] is not None for s in steps[:40])
    finetuned = load_agent(out)  # evaluate.py reads a fine-tuned run as any other
    assert finetuned.source == "best_agent" and finetuned.config.backend == "real"
