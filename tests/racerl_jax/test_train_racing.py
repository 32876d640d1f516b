import dataclasses
import json
import re
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from racerl_jax import train_racing as tr
from racerl_jax.crossq import CrossQConfig
from racerl_jax.logs import read_metrics
from racerl_jax.racing_setup import env_config
from racerl_jax.saved_agent import AgentError, load_agent
from surrogate.car import PARAM_NAMES, CarParams
from surrogate.observation import ObsConfig
from surrogate.residual import init_residual
from surrogate.surrogate_file import save_surrogate
from surrogate.track_io import DEFAULT_TRACK, load_track

LAST_LINE = re.compile(r"^first_clean_lap_min=(\S+) best_lap_s=(\S+) limit_s=(\S+) gap_pct=(\S+)$")

TINY = [
    "--track", "oval", "--model", "kinematic", "--num-envs", "4", "--critic-hidden", "16,16", "--actor-hidden", "16,16",
    "--batch-size", "16", "--buffer-size", "5000", "--learning-starts", "100", "--updates-per-iter", "2", "--chunk-iterations", "25",
    "--eval-every-env-steps", "200", "--eval-max-steps", "150", "--checkpoint-every-env-steps", "200",
    "--no-progress",
]  # fmt: skip


# ----------------------------------------------------------------------------- command line


def test_every_command_line_option_sets_its_config_field():
    cfg = tr.parse_args([
        "--backend", "surrogate", "--track", "technical", "--model", "kinematic", "--num-envs", "7",
        "--budget-minutes", "2.5", "--run-dir", "r", "--resume", "--seed", "3", "--preset", "paper",
        "--updates-per-iter", "5", "--batch-size", "64", "--learning-rate", "3e-4", "--buffer-size", "5000", "--learning-starts", "10", "--critic-hidden", "32,16",
        "--actor-hidden", "8", "--episode-steps", "300", "--car-spread", "0.1", "--standing-starts", "0.5", "--action-overshoot", "0.2",
        "--eval-every-env-steps", "99", "--eval-laps", "3", "--eval-max-steps", "77", "--checkpoint-every-env-steps", "1234",
        "--chunk-iterations", "9", "--total-env-steps", "5000", "--matmul-precision", "default", "--no-progress",
        "--reward", "action_change=0.05, deviation=0", "--pedals", "separate",
        "--smooth-temporal", "0.7", "--smooth-spatial", "0.2", "--lr-final", "0.1",
        "--gamma", "0.995", "--entropy-per-action", "-2", "--entropy-per-action-final", "-3.5",
        "--renorm-warmup-steps", "500", "--fit-spread", "2", "--checkpoint-every-minutes", "2.5",
        "--no-observe-imu", "--speed-limit", "45", "--imu-filter-s", "0.15", "--sensor-noise", "0.5", "--actor-noise", "0.7",
    ])  # fmt: skip
    expected = dict(
        backend="surrogate", track="technical", model="kinematic", num_envs=7, budget_minutes=2.5, run_dir="r",
        resume=True, seed=3, preset="paper", updates_per_iter=5, batch_size=64, learning_rate=3e-4, buffer_size=5000, learning_starts=10,
        critic_hidden=(32, 16), actor_hidden=(8,), episode_steps=300, car_spread=0.1, standing_starts=0.5, action_overshoot=0.2,
        eval_every_env_steps=99, eval_laps=3, eval_max_steps=77, checkpoint_every_env_steps=1234, chunk_iterations=9,
        total_env_steps=5000, matmul_precision="default", progress=False,
        reward=dataclasses.replace(tr.DEFAULT_REWARD, action_change=0.05, deviation=0.0), pedals="separate",
        smooth_temporal=0.7, smooth_spatial=0.2, lr_final=0.1, gamma=0.995, entropy_per_action=-2.0,
        entropy_per_action_final=-3.5, renorm_warmup_steps=500, fit_spread=2.0, checkpoint_every_minutes=2.5,
        observe_imu=False, speed_limit=45.0, imu_filter_s=0.15, sensor_noise=0.5, actor_noise=0.7,
    )  # fmt: skip
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert env_config(cfg, None, "random").obs == ObsConfig(imu=False, imu_filter_s=0.15)  # what the env observes
    assert tr.parse_args([]) == tr.TrainConfig()  # no options: the dataclass defaults
    agent = tr.crossq_config(cfg)
    assert (agent.preset, agent.batch_size, agent.critic_hidden, agent.actor_hidden, agent.learning_starts,
            agent.action_overshoot, agent.buffer_size, agent.learning_rate, agent.smooth_temporal, agent.smooth_spatial,
            agent.gamma, agent.target_entropy, agent.renorm_warmup_steps) == (
        "paper", 64, (32, 16), (8,), 10, 0.2, 5000, 3e-4, 0.7, 0.2, 0.995, -6.0, 500)


def test_defaults_resolve_to_cpu_preset_default_track_and_dynamic_model():
    cfg = tr.resolve(tr.TrainConfig())
    assert (cfg.preset, cfg.track, cfg.model) == ("cpu", DEFAULT_TRACK, "dynamic")
    assert cfg.run_dir.startswith(f"runs/crossq-{DEFAULT_TRACK}-")
    assert tr.TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    # A run saved before these settings existed drove the game's two pedals, unsmoothed, at the paper's entropy goal.
    newer = ("pedals", "smooth_temporal", "smooth_spatial", "entropy_per_action", "entropy_per_action_final",
             "renorm_warmup_steps")
    changed = dataclasses.replace(cfg, pedals="combined", smooth_temporal=1.0, smooth_spatial=1.0, entropy_per_action=-3.0,
                                  entropy_per_action_final=-4.0, renorm_warmup_steps=7)
    old_run = {k: v for k, v in changed.to_dict().items() if k not in newer}
    old = tr.TrainConfig.from_dict(old_run)
    assert (old.pedals, old.smooth_temporal, old.smooth_spatial, old.entropy_per_action,
            old.entropy_per_action_final, old.renorm_warmup_steps) == ("separate", 0.0, 0.0, -1.0, None, None)
    assert tr.crossq_config(old).renorm_warmup_steps == CrossQConfig.cpu().renorm_warmup_steps  # the preset's
    assert tr.crossq_config(dataclasses.replace(cfg, renorm_warmup_steps=100_000)).renorm_warmup_steps == 100_000
    assert tr.crossq_config(old).target_entropy == -3.0  # the paper's: minus the action size (two pedals and steer)


def test_resume_accepts_a_run_saved_before_newer_settings_and_refuses_a_changed_one(tmp_path):
    # A run saved before the smoothing, pedal and decay settings existed trained unsmoothed on two pedals:
    # resuming it with those settings is accepted, with today's defaults refused, naming the change.
    as_it_ran = tr.resolve(tr.TrainConfig(run_dir=str(tmp_path), resume=True, smooth_temporal=0.0, pedals="separate",
                                          lr_final=1.0, entropy_per_action=-1.0, entropy_per_action_final=None,
                                          renorm_warmup_steps=None))
    newer = ("pedals", "smooth_temporal", "smooth_spatial", "lr_final", "entropy_per_action", "entropy_per_action_final",
             "renorm_warmup_steps")
    saved = {k: v for k, v in as_it_ran.run_settings().items() if k not in newer}
    (tmp_path / "config.json").write_text(json.dumps({"command": saved}))
    tr.prepare_run_dir(as_it_ran, tmp_path)
    with pytest.raises(SystemExit, match=r"entropy_per_action -1.0 -> -3.0, entropy_per_action_final None -> -3.0, lr_final 1.0 -> 0.1, pedals 'separate' -> 'combined', renorm_warmup_steps None -> 100000, smooth_temporal 0.0 -> 0.5"):
        tr.prepare_run_dir(dataclasses.replace(as_it_ran, smooth_temporal=0.5, pedals="combined", lr_final=0.1,
                                               renorm_warmup_steps=100_000, entropy_per_action_final=-3.0,
                                               entropy_per_action=-3.0), tmp_path)


def test_resume_accepts_different_checkpoint_and_evaluation_settings_and_brings_an_older_config_to_todays_form(tmp_path):
    # The case: a run saved its checkpoint interval among its settings (as runs did before
    # it became per-invocation); resuming without repeating --checkpoint-every-env-steps goes on.
    cfg = tr.resolve(tr.TrainConfig(run_dir=str(tmp_path), resume=True))
    old_form = {**cfg.run_settings(), "checkpoint_every_env_steps": 20_000, "eval_every_env_steps": 5_000,
                "chunk_iterations": 50}
    (tmp_path / "config.json").write_text(json.dumps({"crossq": {"kept": 1}, "command": old_form}))
    tr.prepare_run_dir(cfg, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved == {"crossq": {"kept": 1}, "command": cfg.run_settings()}
    assert "checkpoint_every_env_steps" not in saved["command"] and "budget_minutes" not in saved["command"]
    tr.prepare_run_dir(dataclasses.replace(cfg, checkpoint_every_minutes=1.0, eval_laps=1, budget_minutes=3.0), tmp_path)
    with pytest.raises(SystemExit, match=r"learning_rate 0.0003 -> 0.001"):
        tr.prepare_run_dir(dataclasses.replace(cfg, learning_rate=1e-3), tmp_path)


def test_saved_config_with_an_unknown_field_or_reward_weight_is_refused_naming_it():
    d = tr.TrainConfig().to_dict()
    with pytest.raises(ValueError, match=r"unknown TrainConfig field\(s\) \['num_cars'\]"):
        tr.TrainConfig.from_dict({**d, "num_cars": 3})
    with pytest.raises(ValueError, match=r"unknown RewardWeights field\(s\) \['speed'\].*known fields"):
        tr.TrainConfig.from_dict({**d, "reward": {**d["reward"], "speed": 1.0}})


def test_bad_options_are_refused_with_the_reason():
    with pytest.raises(SystemExit, match="the real game drives one car"):
        tr.parse_args(["--backend", "real", "--num-envs", "8"])
    with pytest.raises(SystemExit, match="--track or --surrogate, not both"):
        tr.parse_args(["--track", "oval", "--surrogate", "fit.json"])
    with pytest.raises(SystemExit, match="num_envs"):
        tr.parse_args(["--num-envs", "0"])
    with pytest.raises(SystemExit):
        tr.parse_args(["--critic-hidden", "a,b"])
    with pytest.raises(SystemExit, match="smooth_temporal"):
        tr.parse_args(["--smooth-temporal", "-1"])
    with pytest.raises(SystemExit, match=r"lr_final=1.5: must be a fraction in \[0, 1\]"):
        tr.parse_args(["--lr-final", "1.5"])
    with pytest.raises(SystemExit, match=r"gamma=1.0: must be in \(0, 1\)"):
        tr.parse_args(["--gamma", "1"])
    with pytest.raises(SystemExit, match=r"imu_filter_s=-0.1: must be a time constant in \[0, 2\] s"):
        tr.parse_args(["--imu-filter-s", "-0.1"])
    with pytest.raises(SystemExit, match=r"entropy_per_action=nan: must be a finite number"):
        tr.parse_args(["--entropy-per-action", "nan"])
    with pytest.raises(SystemExit, match=r"entropy_per_action_final=inf: must be a finite number, or None"):
        tr.parse_args(["--entropy-per-action-final", "inf"])
    with pytest.raises(SystemExit, match=r"renorm_warmup_steps=-5: must be >= 0 gradient updates"):
        tr.parse_args(["--renorm-warmup-steps", "-5"])


@pytest.mark.parametrize("text, reason", [
    ("smoothness=0.1", r"name from progress, deviation, action_change"),
    ("action_change", r"expected name=value"),
    ("action_change=fast", r"'fast' is not a number"),
    ("off_track=-5", r"finite and >= 0"),
])  # fmt: skip
def test_bad_reward_weights_are_refused_naming_the_item(text, reason, capsys):
    with pytest.raises(SystemExit):
        tr.parse_args(["--reward", text])
    assert re.search(reason, capsys.readouterr().err)


def test_on_a_fitted_game_a_stop_costs_what_leaving_the_track_does_unless_the_reward_says_otherwise():
    assert tr.parse_args([]).reward_weights() == tr.DEFAULT_REWARD and tr.DEFAULT_REWARD.stuck == 0.0
    fitted = tr.parse_args(["--surrogate", "fit.json"])
    assert fitted.reward_weights() == tr.FITTED_GAME_REWARD
    assert tr.FITTED_GAME_REWARD.stuck == tr.FITTED_GAME_REWARD.off_track
    # --reward changes the weights it names over the default for what the run drives
    changed = tr.parse_args(["--surrogate", "fit.json", "--reward", "action_change=0.05"]).reward_weights()
    assert changed.action_change == 0.05 and changed.stuck == tr.FITTED_GAME_REWARD.stuck
    assert tr.parse_args(["--surrogate", "fit.json", "--reward", "stuck=0"]).reward_weights().stuck == 0.0
    assert tr.parse_args(["--reward", "stuck=5"]).reward_weights() == tr.FITTED_GAME_REWARD


# ----------------------------------------------------------------------------- surrogate file


def test_a_fitted_surrogate_sets_the_env_car_track_control_period_delay_and_spread(tmp_path):
    car = CarParams(mass=1234.0, mu=1.2, steer_tau=0.05)
    track = load_track("oval")
    residual = init_residual(jax.random.PRNGKey(0), hidden=(4,))
    path = save_surrogate(tmp_path / "fit.json", "kinematic", car, track, delay_steps=2, dt=0.04, game_dt=0.02,
                          spread={"mu": 0.05, "max_steer": 0.2}, residual=residual)
    cfg = tr.resolve(tr.TrainConfig(surrogate=str(path), run_dir=str(tmp_path / "run"), car_spread=0.1))
    assert cfg.model == "kinematic" and cfg.track == ""
    setup = tr.build_setup(cfg)
    assert float(setup.params.car.mass) == 1234.0 and float(setup.params.car.steer_tau) == pytest.approx(0.05)
    assert setup.env.config.model == "kinematic"
    assert (setup.env.config.dt, setup.env.config.delay_steps) == (0.04, 2)
    assert (setup.eval_env.config.dt, setup.eval_env.config.delay_steps) == (0.04, 2)
    assert setup.params.residual is not None and setup.params.residual.hidden == (4,)
    spread = dict(zip(PARAM_NAMES, np.asarray(setup.params.car_spread).tolist()))
    # each parameter: the larger of --car-spread and --fit-spread x the fit's uncertainty
    assert spread["mu"] == pytest.approx(0.1) and spread["max_steer"] == pytest.approx(0.2)
    assert np.all(np.asarray(setup.eval_params.car_spread) == 0.0)
    assert float(setup.params.tracks.length[0]) == pytest.approx(track.length(), rel=0.01)
    # on a fitted game's track training keeps a margin inside the edges by default; the bundled tracks none
    assert cfg.edge_margin == tr.FITTED_EDGE_MARGIN and setup.env.config.edge_margin == tr.FITTED_EDGE_MARGIN
    bundled = tr.resolve(tr.TrainConfig(run_dir=str(tmp_path / "r")))
    assert bundled.edge_margin == 0.0
    # a fitted car follows the minimum-time line by default, everywhere it is driven; the bundled
    # tracks the minimum-curvature line; a config saved before the choice existed ("") the latter
    assert cfg.reference_line == "min-time" and bundled.reference_line == "min-curvature"
    assert {setup.env.config.reference, setup.eval_env.config.reference} == {"time"}
    assert tr.TrainConfig.from_dict({**cfg.to_dict(), "reference_line": ""}).reference_line == "min-curvature"
    assert tr.TrainConfig(reference_line="min-time", tracks=("oval", "technical")).env_reference() == "time"
    off = tr.build_setup(dataclasses.replace(cfg, fit_spread=0.0, edge_margin=0.5))
    assert float(off.params.car_spread) == pytest.approx(0.1)
    # an edge margin narrows the training track only: evaluations are scored on the real edges
    assert (off.env.config.edge_margin, off.eval_env.config.edge_margin) == (0.5, 0.0)
    with pytest.raises(ValueError, match="differs from the model 'kinematic'"):
        tr.resolve(tr.TrainConfig(surrogate=str(path), model="dynamic"))


# ----------------------------------------------------------------------------- evaluation helpers


def test_lap_slice_starts_after_the_previous_crossing_or_reset():
    n = 12
    lap = np.zeros(n, bool)
    done = np.zeros(n, bool)
    lap[[4, 9]] = True
    done[6] = True
    traj = {"lap_completed": lap, "done": done}
    assert tr.lap_slice(traj, 4) == slice(0, 5)  # first lap: from the start
    assert tr.lap_slice(traj, 9) == slice(7, 10)  # after the reset at step 6, not the lap at 4


def _lap_trajectory(lap_s: float, dt: float = 0.05) -> dict:
    """A trajectory of one clean lap of ``lap_s`` seconds, in ``surrogate.rollout``'s format."""
    n = int(round(lap_s / dt))
    lap = np.zeros(n, bool)
    lap[-1] = True
    return dict(x=np.linspace(0.0, 1.0, n), y=np.zeros(n), speed=np.full(n, 30.0), action=np.zeros((n, 3)),
                reward=np.ones(n), lap_completed=lap, lap_time=np.where(lap, lap_s, np.nan), lap_clean=lap,
                off_track=np.zeros(n, bool), ref_deviation=np.zeros(n), done=np.zeros(n, bool))


def test_the_agent_that_drove_the_best_lap_is_kept_and_loads_back(tmp_path):
    import jax

    from racerl_jax import crossq
    from racerl_jax.checkpoint import write_config

    config = crossq.CrossQConfig.cpu(critic_hidden=(8, 8), actor_hidden=(8, 8))
    # One pedal axis: the template must take the action size from the run's settings.
    write_config(tmp_path, {"crossq": config.to_dict(), "command": tr.TrainConfig(pedals="combined").run_settings()})
    agents = [crossq.init_agent(jax.random.PRNGKey(i), tr.ObsConfig().size, 2, config).replace(env_steps=np.int32(100 * (i + 1)))
              for i in range(3)]  # fmt: skip
    laps = iter([40.0, 38.0, 39.0])  # the second agent drives the best lap
    evaluator = tr.LapEvaluator(lambda agent: _lap_trajectory(next(laps)), 35.0, 0.05, tmp_path, 0.0)
    with pytest.raises(AgentError, match="holds no saved agent"):
        load_agent(tmp_path)
    evaluator(agents[0])  # the evaluator only scores: its first clean lap is a best, written by the training
    assert evaluator.improved and not (tmp_path / tr.BEST_AGENT_DIR).exists()
    eval_fn = tr.keeping_best(evaluator, tmp_path)
    for agent in agents[1:]:
        eval_fn(agent)
    assert evaluator.best_lap_s == pytest.approx(38.0, abs=0.05)
    best = load_agent(tmp_path / tr.BEST_AGENT_DIR).agent
    assert int(best.env_steps) == 200
    for got, want, other in zip(jax.tree.leaves(best.actor_params), jax.tree.leaves(agents[1].actor_params),
                                jax.tree.leaves(agents[2].actor_params)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(agents[1].actor_params),
                                                        jax.tree.leaves(agents[2].actor_params)))
    obs = np.zeros((1, tr.ObsConfig().size), np.float32)
    np.testing.assert_array_equal(np.asarray(crossq.act(best, obs, jax.random.PRNGKey(0), deterministic=True)),
                                  np.asarray(crossq.act(agents[1], obs, jax.random.PRNGKey(0), deterministic=True)))


# ----------------------------------------------------------------------------- end to end


def _last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_tiny_run_writes_everything_and_resume_continues_the_counters(tmp_path, capsys):
    run_dir = tmp_path / "run"
    summary = tr.main([*TINY, "--run-dir", str(run_dir), "--total-env-steps", "400"])
    line = _last_line(capsys)
    m = LAST_LINE.match(line)
    assert m, line
    first, best, limit, gap = (float(g) for g in m.groups())
    assert limit == pytest.approx(summary["limit_s"], abs=0.01) and 20.0 < limit < 60.0  # the oval's reference
    assert np.isnan(first) == np.isnan(best) == np.isnan(gap)

    for name in ("config.json", "metrics.jsonl", "learning_curve.png", "best_lap.png", "summary.json"):
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())
    saved = config["command"]
    assert saved["num_envs"] == 4 and saved["preset"] == "cpu" and saved["track"] == "oval"
    assert saved["critic_hidden"] == [16, 16] and "progress" in saved["reward"] and "budget_minutes" not in saved
    assert config["crossq"]["critic_hidden"] == [16, 16]
    assert summary["invocation"]["total_env_steps"] == 400
    assert sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())[-1] == 400
    rows = read_metrics(run_dir / "metrics.jsonl")
    evals = [r for r in rows if "eval_limit_s" in r]
    assert [r["env_steps"] for r in evals] == [200, 400, 400]  # two periodic and the final one
    assert all(r["eval_limit_s"] == pytest.approx(limit, abs=0.01) for r in evals)
    assert all(r["eval_ref_deviation_m"] is not None and r["eval_action_change"] is not None
               and 0.0 <= r["eval_pedal_overlap"] <= 1.0 for r in evals)
    assert summary["env_steps"] == 400 and summary["updates"] == 2 * (100 - 24)  # learning from step 100

    # Resuming: counters continue from the checkpoint (a fresh start would log from step 100).
    # Settings that do not shape what is learned may differ on resume (a user resuming after a crash
    # does not repeat them): here the checkpoint and evaluation intervals and the chunk length.
    per_invocation = [*TINY, "--checkpoint-every-env-steps", "100000", "--checkpoint-every-minutes", "3",
                      "--eval-every-env-steps", "300", "--eval-laps", "1"]
    summary2 = tr.main([*per_invocation, "--run-dir", str(run_dir), "--total-env-steps", "800", "--resume"])
    assert LAST_LINE.match(_last_line(capsys))
    assert summary2["env_steps"] == 800 and summary2["updates"] == 2 * (200 - 24)
    rows2 = read_metrics(run_dir / "metrics.jsonl")[len(rows):]
    assert rows2[0]["env_steps"] == 500 and rows2[0]["updates"] == summary["updates"] + 50

    with pytest.raises(SystemExit, match="pass --resume"):
        tr.main([*TINY, "--run-dir", str(run_dir)])
    with pytest.raises(SystemExit, match="num_envs 4 -> 8"):
        tr.main([*TINY, "--run-dir", str(run_dir), "--resume", "--num-envs", "8"])


# ----------------------------------------------------------------------------- --backend real


def test_backend_real_trains_on_the_game_through_the_bridge_and_resumes(tmp_path, capsys):
    import threading

    import zmq

    from bridge.games.kinematic import KinematicCarGame
    from bridge.sdk import LockstepServer

    class SeedSpy(KinematicCarGame):
        seeds: list = []

        def reset(self, seed):
            self.seeds.append(seed)
            return super().reset(seed)

    ctx = zmq.Context()
    server = LockstepServer(SeedSpy(), "tcp://127.0.0.1:*", context=ctx)
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, kwargs={"stop": stop}, daemon=True)
    thread.start()
    run_dir = tmp_path / "real"
    args = ["--backend", "real", "--address", server.address, "--critic-hidden", "16,16", "--actor-hidden",
            "16,16", "--batch-size", "16", "--buffer-size", "2000", "--learning-starts", "50", "--chunk-iterations", "50",
            "--eval-every-env-steps", "100", "--eval-max-steps", "60", "--checkpoint-every-env-steps", "100",
            "--episode-steps", "150", "--game-seed", "7", "--no-progress", "--run-dir", str(run_dir),
            "--no-observe-imu"]  # fmt: skip
    try:
        summary = tr.main([*args, "--total-env-steps", "200"])
        assert LAST_LINE.match(_last_line(capsys))
        assert summary["env_steps"] == 200 and summary["updates"] == 200 - 50 + 1  # one update per game step
        config = json.loads((run_dir / "config.json").read_text())
        assert config["host_loop"] is True and config["command"]["backend"] == "real"
        assert config["command"]["observe_imu"] is False  # the game's observation without its IMU readings
        inputs = {leaf.shape[0] for leaf in jax.tree_util.tree_leaves(load_agent(run_dir).agent.actor_params)
                  if np.ndim(leaf) == 2}  # the kernels' input sizes
        assert ObsConfig(imu=False).size in inputs and ObsConfig().size not in inputs
        for name in ("metrics.jsonl", "learning_curve.png", "best_lap.png", "summary.json"):
            assert (run_dir / name).is_file(), name
        rows = read_metrics(run_dir / "metrics.jsonl")
        evals = [r for r in rows if "eval_limit_s" in r]
        assert [r["env_steps"] for r in evals] == [100, 200, 200]  # two periodic and the final one
        # the evaluations drove the game's car (the untrained policy barely moves it: no laps yet)
        assert all(np.isfinite(r["eval_return"]) and r["eval_return"] != 0.0 and r["eval_laps"] == 0 for r in evals)
        assert np.isfinite(summary["limit_s"]) and summary["limit_s"] > 0.0
        assert len(SeedSpy.seeds) >= 4 and set(SeedSpy.seeds) == {7}  # training and evaluation episodes alike

        summary2 = tr.main([*args, "--total-env-steps", "300", "--resume"])
        assert summary2["env_steps"] == 300 and summary2["updates"] == 300 - 50 + 1
    finally:
        stop.set()
        thread.join(timeout=5)
        ctx.destroy(linger=0)


def test_learning_rate_decays_on_a_cosine_from_full_to_lr_final_over_the_budget():
    f = tr.cosine_decay(0.1)
    spent = np.linspace(0.0, 1.0, 11)
    factors = np.array([f(x) for x in spent])
    assert factors[0] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.1) and factors[5] == pytest.approx(0.55)
    assert np.all(np.diff(factors) < 0)
    opts = lambda cfg: tr._driver_options(cfg, Path("unused"), time.monotonic(), None)  # noqa: E731
    assert opts(tr.TrainConfig(lr_final=1.0))["lr_schedule"] is None  # constant: no schedule at all
    assert opts(tr.TrainConfig())["lr_schedule"](1.0) == pytest.approx(tr.TrainConfig.lr_final)


def test_entropy_goal_moves_from_start_to_final_on_the_learning_rates_cosine():
    opts = lambda cfg: tr._driver_options(cfg, Path("unused"), time.monotonic(), None)  # noqa: E731
    assert opts(tr.TrainConfig())["entropy_schedule"] is None  # no final goal: the start's throughout
    cfg = tr.TrainConfig(entropy_per_action=-1.0, entropy_per_action_final=-3.0, pedals="combined", lr_final=0.1)
    shift, lr = opts(cfg)["entropy_schedule"], opts(cfg)["lr_schedule"]
    base = tr.crossq_config(cfg).target_entropy
    assert base == -2.0  # steer and one pedal axis
    for f in np.linspace(0.0, 1.0, 11):
        done = (1.0 - lr(f)) / (1.0 - 0.1)  # the learning rate's share of its way down
        assert base + shift(f) == pytest.approx(-2.0 + (-6.0 + 2.0) * done)
    assert shift(0.0) == 0.0 and base + shift(1.0) == pytest.approx(-6.0)
    three = dataclasses.replace(cfg, pedals="separate")
    assert tr.crossq_config(three).target_entropy + opts(three)["entropy_schedule"](1.0) == pytest.approx(-9.0)


def test_evaluations_allow_for_laps_at_60_percent_of_the_reference_or_of_the_speed_limiter_when_slower():
    from racerl_jax.racing_setup import slow_lap_steps
    from surrogate.env import EnvConfig

    cfg = EnvConfig(dt=0.05)
    assert slow_lap_steps(30.0, 1000.0, cfg, laps=2) == 2000  # 2 laps of 30 s at 60%: 100 s
    assert slow_lap_steps(30.0, 1000.0, dataclasses.replace(cfg, speed_limit=50.0), laps=2) == 2000  # 20 s < 30 s
    assert slow_lap_steps(30.0, 1000.0, dataclasses.replace(cfg, speed_limit=20.0), laps=2) == 3334  # 50 s a lap
