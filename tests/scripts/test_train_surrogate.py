"""train_surrogate.py: a recording of a game in, a surrogate file that training uses, a report and
plots out; recordings it cannot fit are refused with the fix and exit code 2."""
import json
import math
import re

import numpy as np
import pytest

from bridge.games.kinematic import KinematicCarGame
from bridge.recorder import Recorder
from racerl_jax import surrogate_fit as sf
from racerl_jax import train_racing as tr
from surrogate import fit as F
from surrogate.surrogate_file import default_speed_limit, load_surrogate

LAST = re.compile(r"^model=(\S+) pos_err_1s_median_m=(\S+) speed_err_1s_median_mps=(\S+) "
                  r"yaw_err_1s_median_rad=(\S+) fit_minutes=(\S+)$")
TINY = ["--steps", "30", "--residual-steps", "10", "--starts", "1", "--delay-starts", "1", "--horizon-s", "0.4",
        "--max-delay", "1", "--stride", "3", "--no-progress"]


def record_kinematic_game(run_dir, episodes=4, steps=150, ticks=2, seed=0):
    """The kinematic example game driven in-process by smooth random controls, recorded as
    record_telemetry.py records it (lockstep: one frame per control step of ``ticks`` ticks)."""
    game = KinematicCarGame()
    rng = np.random.default_rng(seed)
    seq = 0
    with Recorder(run_dir, source="test", track=game.track(),
                  meta={"hello": {"game": game.name, "dt": game.dt}, "control_period_s": ticks * game.dt,
                        "config": {"mode": "lockstep"}}) as rec:
        for ep in range(episodes):
            fields = game.reset(seed + ep)
            t = 0.0
            steer = 0.0
            for j in range(steps + 1):
                if j == 0:
                    action = {"steer": 0.0, "throttle": 0.0, "brake": 0.0}
                else:
                    steer = float(np.clip(0.9 * steer + rng.normal(0, 0.08), -0.3, 0.3))
                    pedal = 0.6 if j < steps // 2 else float(rng.uniform(-0.4, 0.6))
                    action = {"steer": steer, "throttle": max(pedal, 0.0), "brake": max(-pedal, 0.0)}
                    fields = game.step(action, ticks)
                    t += ticks * game.dt
                rec.frame({"type": "telemetry", "v": 1, "seq": seq, "episode": ep, "t": t, **fields, **action})
                seq += 1
    return run_dir


def test_a_recording_becomes_a_surrogate_file_that_training_uses(tmp_path, capsys):
    run = record_kinematic_game(tmp_path / "rec")
    out = tmp_path / "fit"
    # The one-step comparison is left out here (tests/surrogate/test_fit.py shows it drifts): the
    # command, its files and training on them are what this proves.
    assert sf.main([str(run), "--out", str(out), *TINY, "--no-one-step", "--dynamic-delays", "2", "--batch", "32"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    m = LAST.match(printed[-1])
    assert m, printed[-1]
    report = json.loads((out / "report.json").read_text())
    assert set(report["models"]) == {"kinematic", "dynamic", "dynamic+residual"}
    chosen = report["chosen"]
    assert set(report["delay_scores"]) == set(report["delay_band_scores"]) == {"0", "1"}  # --max-delay 1
    # the dynamic model fitted at both delays (the two the kinematic model ranked first); its best is the delay
    dyn_scores = {int(k): v for k, v in report["delay_dynamic_scores"].items()}
    assert set(dyn_scores) == {0, 1}
    assert report["models"]["dynamic"]["delay_frames"] == min(dyn_scores, key=lambda d: (dyn_scores[d], d))
    # the steering servo refitted on the windows below the speed up to which the dynamic model is within 1 m
    servo = report["servo"]
    assert servo["below_mps"] == report["trusted_speed_mps"]  # here both bounds are the 1 m floor
    assert set(servo["before"]) == {"max_steer_rate", "steer_tau"}
    assert m.group(1) == chosen.replace(" ", "_")
    assert float(m.group(2)) == pytest.approx(report["models"][chosen]["validation"]["pos_err_1s_median"], abs=1e-3)
    assert chosen != "dynamic (one-step)"
    assert json.loads((out / "surrogate.json").read_text())["provenance"]["least_grip"]["tolerance"] == 0.0
    for name in ("surrogate.json", "car.json", "report.txt", "fit_trajectories.png", "fit_errors.png"):
        assert (out / name).stat().st_size > 0, name
    text = (out / "report.txt").read_text()
    assert "kinematic" in text and "max_drive_force" in text and " N " in text  # parameters with units
    assert "input delay:" in text
    assert f"steering servo refitted on the windows below {servo['below_mps']:.0f} m/s" in text
    # the example game has no speed cap: the report says none was found and the car keeps the default
    assert "(none: no recorded speed was held on the throttle)" in text
    trusted = report["trusted_speed_mps"]  # the speed limit the report suggests, from the bands' errors
    assert trusted is None or f"default to a limiter at {default_speed_limit(trusted):.0f} m/s" in text
    assert "trusted up to" in text or "trusted at no speed" in text
    # the surrogate file: the game's track and tick, the control period it was recorded at
    fitted = load_surrogate(out / "surrogate.json")
    assert fitted.track.name == "circle" and fitted.dt == pytest.approx(0.04) and fitted.game_dt == pytest.approx(0.02)
    assert fitted.provenance["games"] == ["kinematic-circle"] and fitted.provenance["episodes"] == 4
    assert (fitted.residual is not None) == (chosen == "dynamic+residual")
    assert fitted.trusted_speed == trusted
    cfg = tr.resolve(tr.TrainConfig(surrogate=str(out / "surrogate.json"), run_dir=str(tmp_path / "train")))
    assert cfg.speed_limit == default_speed_limit(trusted)  # training keeps under where the fit is trusted
    assert tr.resolve(tr.TrainConfig(surrogate=str(out / "surrogate.json"), speed_limit=0.0)).speed_limit == 0.0
    setup = tr.build_setup(cfg)
    assert setup.env.config.speed_limit == cfg.speed_limit
    assert setup.env.config.dt == pytest.approx(0.04) and setup.env.config.delay_steps == fitted.delay_steps
    assert math.isfinite(setup.limit_s) and setup.limit_s > 0
    car = json.loads((out / "car.json").read_text())
    assert car["max_drive_force"] == pytest.approx(float(fitted.car.max_drive_force))


def test_recordings_it_cannot_fit_exit_2_with_the_fix(tmp_path, capsys):
    assert sf.main([str(tmp_path / "nothing"), "--out", str(tmp_path / "o"), *TINY]) == 2
    assert "run directory made by bridge.recorder" in capsys.readouterr().err
    one = record_kinematic_game(tmp_path / "one", episodes=1)
    assert sf.main([str(one), "--out", str(tmp_path / "o"), *TINY]) == 2
    err = capsys.readouterr().err
    assert "needs at least 2" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "surrogate.json").exists()


def test_bad_options_are_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        sf.parse_args(["r", "--val-fraction", "1.5"])
    assert "--val-fraction 1.5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sf.parse_args(["r", "--steps", "0"])
    assert "FitConfig.steps" in capsys.readouterr().err


def test_switches_reach_the_fit_config():
    assert sf.parse_args(["r"]).fit == F.FitConfig()  # no options: the fit's defaults
    cfg = sf.parse_args(["r", "--no-servo-where-trusted", "--fit-steer-lock", "--balance", "--no-residual"]).fit
    assert (cfg.servo_where_trusted, cfg.fit_steer_lock, cfg.balance, cfg.residual) == (False, True, True, False)
