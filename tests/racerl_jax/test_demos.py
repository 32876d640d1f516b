"""Demonstrations: the baseline driver's transitions, in the agent's action units, driven on the training envs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from racerl_jax import demos as demos_lib
from racerl_jax import train_racing as tr
from racerl_jax.train_config import TrainConfig
from racerl_jax.train_loop import scale_action
from surrogate.baseline import baseline_params_for
from surrogate.env import EnvConfig, RacingEnv, action_bounds
from surrogate.env_params import make_params
from surrogate.track import select_track


@pytest.mark.parametrize("pedals,overshoot", [("separate", 0.0), ("combined", 0.0), ("combined", 0.1)])
def test_agent_action_is_what_scale_action_maps_onto_the_env_action(pedals, overshoot):
    low, high = action_bounds(pedals)
    env_actions = jax.random.uniform(jax.random.PRNGKey(0), (64, len(low)), minval=low, maxval=high)
    agent = demos_lib.agent_action(env_actions, low, high, overshoot)
    assert float(jnp.max(jnp.abs(agent))) <= 1.0
    np.testing.assert_allclose(scale_action(agent, low, high, overshoot), env_actions, atol=1e-5)


def test_the_baseline_demonstrations_lap_the_oval_and_fill_a_buffer_of_every_transition():
    cfg = EnvConfig(model="kinematic", n_track_points=1024, start="line", max_episode_steps=1_000)
    params, refs = make_params(["oval"], config=cfg)
    env = RacingEnv(cfg)
    driver = (select_track(params.tracks, 0), baseline_params_for(params.car))
    steps = int(1.25 * refs[0].lap_time_s / cfg.dt)  # one lap from rest at the baseline's 92% pace, and a bit
    d = demos_lib.collect(env, params, driver, 2, 2 * steps - 1, jax.random.PRNGKey(0), noise=0.0)
    assert int(d.buffer.size) == 2 * steps  # rounded up to a whole step of both envs
    assert d.laps == 2 and d.clean_laps == 2 and d.off_track == 0  # the driver's own actions: it laps
    data = jax.tree.map(np.asarray, d.buffer.data)
    assert np.all(np.abs(data.action) <= 1.0) and np.all(np.isfinite(data.obs))
    assert data.reward.sum() > 0  # progress paid
    noisy = demos_lib.collect(env, params, driver, 2, 2 * steps, jax.random.PRNGKey(0), noise=0.3)
    assert not np.allclose(np.asarray(noisy.buffer.data.action), data.action)


def test_demos_from_a_missing_tuning_or_with_several_tracks_are_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="one surrogate track"):
        TrainConfig(tracks=("oval", "flowing"), demos="baseline")
    cfg = TrainConfig(track="oval", demos=str(tmp_path / "none.json"), model="kinematic")
    setup = tr.build_setup(cfg)
    with pytest.raises(SystemExit, match="--demos: .*none.json.*drive_baseline.py --tune"):
        tr.demonstrations(cfg, setup)
