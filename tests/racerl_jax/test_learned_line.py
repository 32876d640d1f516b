"""racerl_jax.learned_line: --reference-line laps:RUN_DIR reads a run's clean laps and learns the line."""
import numpy as np
import pytest

from racerl_jax.learned_line import laps_from_run, learned_reference, parse_reference_line
from surrogate.car import CarParams
from surrogate.laptime import LapLimits, _left_normals, prepare_track
from surrogate.racing_line import RacingLineError
from surrogate.track_io import chord_param, load_track


def oval_lap(offset, speed=30.0, dt=0.05):
    """A lap of the oval from the line at a constant offset (m, + left), sampled every dt."""
    track = prepare_track(load_track("oval"))
    nx, ny = _left_normals(track.x, track.y)
    s = chord_param(track.x, track.y)
    t = np.arange(0.0, s[-1] / speed, dt)
    at = lambda a: np.interp(t * speed, s, np.append(a, a[0]))  # noqa: E731
    return at(track.x + offset * nx), at(track.y + offset * ny), t


def test_a_runs_best_lap_and_its_evaluations_drives_become_the_learned_line(tmp_path):
    x, y, t = oval_lap(+2.0)
    np.savez(tmp_path / "best_lap.npz", x=x, y=y, speed=np.full(x.size, 30.0), lap_s=np.float64(t[-1] + 0.05))
    (tmp_path / "eval-surrogate").mkdir()
    n = x.size
    drive = {"x": np.concatenate([x, x]), "y": np.concatenate([y, y]), "dt": np.full(2 * n, 0.05),
             "lap_completed": np.zeros(2 * n, bool), "lap_clean": np.ones(2 * n, bool), "done": np.zeros(2 * n, bool)}
    drive["lap_completed"][[n - 1, 2 * n - 1]] = True
    np.savez_compressed(tmp_path / "eval-surrogate" / "agent_drive.npz", **drive)
    np.savez_compressed(tmp_path / "eval-surrogate" / "baseline_drive.npz", **drive)  # not the agent's: left out
    assert len(laps_from_run(tmp_path)) == 3
    ref = learned_reference(f"laps:{tmp_path}", load_track("oval"), LapLimits.from_car(CarParams()), vehicle_width=1.8)
    assert abs(np.median(ref.offsets) - 2.0) < 0.5
    assert learned_reference("min-curvature", load_track("oval"), LapLimits.from_car(CarParams()), 1.8) is None
    assert learned_reference("min-time", load_track("oval"), LapLimits.from_car(CarParams()), 1.8) is None


def test_reference_line_settings_that_make_no_sense_are_refused_with_the_fix(tmp_path):
    assert parse_reference_line("") == [] and parse_reference_line(f"laps:{tmp_path},{tmp_path}") == [tmp_path] * 2
    with pytest.raises(ValueError, match="give min-curvature or min-time or laps:RUN_DIR"):
        parse_reference_line("fastest")
    with pytest.raises(RacingLineError, match="no clean lap"):
        learned_reference(f"laps:{tmp_path}", load_track("oval"), LapLimits.from_car(CarParams()), 1.8)
    with pytest.raises(RacingLineError, match="not a directory"):
        laps_from_run(tmp_path / "none")


def test_training_with_reference_line_laps_builds_its_env_on_the_learned_line(tmp_path):
    from racerl_jax.racing_setup import build_setup
    from racerl_jax.train_cli import parse_args

    x, y, t = oval_lap(-2.5)
    np.savez(tmp_path / "best_lap.npz", x=x, y=y, speed=np.full(x.size, 30.0), lap_s=np.float64(t[-1] + 0.05))
    cfg = parse_args(["--track", "oval", "--reference-line", f"laps:{tmp_path}"])
    offset = np.asarray(build_setup(cfg).params.tracks.ref_offset)[0]
    assert abs(np.median(offset) + 2.5) < 0.5  # the driven line, not the minimum-curvature one
    with pytest.raises(SystemExit, match="learns one track's line"):
        parse_args(["--tracks", "oval,technical", "--reference-line", f"laps:{tmp_path}"])
