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
