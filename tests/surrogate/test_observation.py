import jax
import jax.numpy as jnp
import numpy as np
import pytest

from surrogate.observation import ACCEL_SCALE, SPEED_SCALE, YAW_RATE_SCALE, ObsConfig, noisy_observation, sensor_noise_table

TABLE = jnp.asarray(sensor_noise_table({"speed_mps": [0.0, 40.0], "speed": [0.0, 0.8], "accel_lat": [0.0, 20.0],
                                        "yaw_rate": [0.0, 1.0]}))


def _obs(cfg: ObsConfig, speeds, rows=4000):
    obs = jax.random.normal(jax.random.PRNGKey(0), (len(speeds), 1, cfg.size))
    obs = obs.at[:, 0, 0].set(jnp.asarray(speeds) / SPEED_SCALE)
    return jnp.tile(obs, (1, rows, 1))


def test_noisy_observation_jitters_the_speed_and_imu_features_by_the_tables_spread_at_each_rows_speed():
    cfg = ObsConfig()
    obs = _obs(cfg, [10.0, 30.0])
    noisy = np.asarray(noisy_observation(obs, TABLE, jax.random.PRNGKey(1), cfg))
    d = noisy - np.asarray(obs)
    for i, v in enumerate((10.0, 30.0)):  # the table's spread, linear in speed up to 40 m/s
        assert np.std(d[i, :, 0]) == pytest.approx(0.8 * v / 40 / SPEED_SCALE, rel=0.05)
        assert np.std(d[i, :, 2]) == pytest.approx(20.0 * v / 40 / ACCEL_SCALE, rel=0.05)
        assert np.std(d[i, :, 3]) == pytest.approx(1.0 * v / 40 / YAW_RATE_SCALE, rel=0.05)
    assert np.all(d[:, :, 1] == 0.0)  # the table has no longitudinal-acceleration noise
    assert np.all(d[:, :, 4:] == 0.0)  # pose, controls and the track ahead: never
    assert len(np.unique(d[1, :, 2])) == d.shape[1]  # each row draws its own


def test_noisy_observation_without_the_imu_features_jitters_the_speed_alone_and_never_below_zero():
    cfg = ObsConfig(imu=False)
    obs = _obs(cfg, [0.5])
    wide = jnp.asarray(sensor_noise_table({"speed_mps": [0.0], "speed": [2.0], "yaw_rate": [1.0]}))
    noisy = np.asarray(noisy_observation(obs, wide, jax.random.PRNGKey(2), cfg))
    d = noisy - np.asarray(obs)
    assert np.all(noisy[..., 0] >= 0.0) and np.any(noisy[..., 0] == 0.0)  # 0.5 m/s, 2 m/s spread: some at rest
    assert np.any(d[..., 0] != 0.0) and np.all(d[..., 1:] == 0.0)
