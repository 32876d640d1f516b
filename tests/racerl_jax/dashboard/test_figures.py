import base64

import numpy as np

from racerl_jax.dashboard import figures, synthetic
from racerl_jax.dashboard.data import Run


def test_figures_draw_the_runs_metrics_with_the_learning_rate_and_list_the_config_differences(tmp_path):
    oval = synthetic.Oval()
    runs = []
    for name, lr in (("a", 3e-4), ("b", 1e-3)):
        log, path = synthetic.training_run(tmp_path / name, oval, evals=1, steps=10, learning_rate=lr)
        log.close()
        runs.append(Run(path))
        runs[-1].refresh()
    fig = figures.training_figure(runs, "env_steps")
    lr = [t for t in fig["data"] if t["name"] == "b: lr_scale"][0]
    got = np.frombuffer(base64.b64decode(lr["y"]["bdata"]), "<f4")
    np.testing.assert_allclose(got, 1e-3 * np.array([1.0, 0.99, 0.98]), rtol=1e-6)
    names, rows = figures.config_differences(runs)
    assert names == ["a", "b"] and rows == [["crossq.learning_rate", "0.0003", "0.001"]]
    # every car view draws from a run without failing, and says when there is nothing to draw
    for run in runs + [Run(tmp_path / "none")]:
        trace, best = run.live(3000), run.best_lap()
        for f in (figures.map_figure(run.track, trace, best, None), figures.lap_figure(run.track, trace, best, 5),
                  figures.decisions_figure(trace, 5)):
            assert f["data"] or f["layout"]["annotations"]


def _decode(a):
    return np.frombuffer(base64.b64decode(a["bdata"]), "<f4")


def test_long_windows_are_thinned_to_the_plots_width_and_the_value_line_runs_through_its_logged_points(tmp_path):
    oval = synthetic.Oval()
    log, path = synthetic.training_run(tmp_path / "run", oval, evals=0, steps=3000)
    log.close()
    run = Run(path)
    run.refresh()
    trace = run.live(3000)
    fig = figures.decisions_figure(trace, cursor=10)
    by = {t["name"]: t for t in fig["data"]}
    assert len(_decode(by["policy steer"]["x"])) <= figures.LINE_POINTS
    value = _decode(by["critics' value"]["y"])
    assert np.isfinite(value).all() and len(value) > 100  # only the logged points, no gaps
    assert by["safety (60)"]["text"][:1] == ["rate_limited"]  # every 50th step, none thinned away
    lap = figures.lap_figure(run.track, trace, None, None)
    assert all(len(_decode(t["x"])) <= figures.LINE_POINTS for t in lap["data"] if t["name"] == "this lap")
