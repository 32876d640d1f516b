import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from racerl_jax.gym_envs import SurrogateEnv, SurrogateVectorEnv
from surrogate.env import EnvConfig
from surrogate.env_params import make_params

CFG = EnvConfig(max_episode_steps=100, n_track_points=512)


@pytest.fixture(scope="module")
def params():
    return make_params(["oval"], config=CFG)[0]


def test_single_env_passes_gymnasium_env_checker(params):
    env = SurrogateEnv(CFG, params=params)
    check_env(env, skip_render_check=True)


def test_single_env_is_deterministic_per_seed(params):
    env = SurrogateEnv(CFG, params=params)
    a, _ = env.reset(seed=3)
    b, _ = env.reset(seed=3)
    c, _ = env.reset(seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_vector_env_steps_n_cars_and_reports_final_observations(params):
    n = 8
    venv = SurrogateVectorEnv(n, CFG, params=params)
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (n, CFG.obs.size)
    assert venv.observation_space.shape == (n, CFG.obs.size)
    venv.action_space.seed(0)
    saw_done = False
    for _ in range(150):
        obs, r, term, trunc, info = venv.step(venv.action_space.sample())
        assert obs.shape == (n, CFG.obs.size) and r.shape == (n,)
        done = term | trunc
        np.testing.assert_array_equal(info["_final_obs"], done)
        if done.any():
            saw_done = True
            assert not np.array_equal(info["final_obs"][done], obs[done])
    assert saw_done


def test_stable_baselines3_sac_learns_on_the_single_env(params):
    import stable_baselines3 as sb3  # a dev dependency: the learner most people reach for first

    env = SurrogateEnv(CFG, params=params)
    model = sb3.SAC("MlpPolicy", env, learning_starts=50, batch_size=32, buffer_size=500, seed=0, verbose=0,
                    policy_kwargs={"net_arch": [32, 32]})
    model.learn(total_timesteps=120)
    action, _ = model.predict(env.reset(seed=0)[0], deterministic=True)
    assert env.action_space.contains(action.astype(np.float32))
