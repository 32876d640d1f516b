import math

import numpy as np
import pytest

from racerl_jax.dashboard import synthetic
from racerl_jax.dashboard.track import Track


def test_track_projection_follows_the_segments_between_the_track_files_points():
    oval = synthetic.Oval()
    track = Track(oval.track_doc())
    d = np.linspace(0.0, 300.0, 301)
    xy = np.array([oval.pose(v)[:2] for v in d])
    np.testing.assert_allclose((track.project(xy[:, 0], xy[:, 1]) + 1.0) % track.length - 1.0, d, atol=0.05)
    assert math.isnan(track.project(np.array([np.nan]), np.array([0.0]))[0])
    with pytest.raises(ValueError, match="w_left"):
        Track({"x": [0, 1, 2], "y": [0, 1, 0]})
