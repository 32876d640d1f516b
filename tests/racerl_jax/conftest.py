import threading

import numpy as np
import pytest
import zmq

from bridge.games.kinematic import KinematicCarGame
from bridge.sdk import LockstepServer
from surrogate.car import CarParams
from surrogate.surrogate_file import save_surrogate
from surrogate.track_io import TrackData


@pytest.fixture
def game_address():
    """The kinematic example game served in lockstep on a free loopback port, in a thread."""
    ctx = zmq.Context()
    server = LockstepServer(KinematicCarGame(), "tcp://127.0.0.1:*", context=ctx)
    stop = threading.Event()
    th = threading.Thread(target=server.serve, kwargs={"stop": stop}, daemon=True)
    th.start()
    yield server.address
    stop.set()
    th.join(timeout=5)
    ctx.destroy(linger=0)


def game_track() -> TrackData:
    """The kinematic example game's track (its circle)."""
    t = KinematicCarGame().track()
    return TrackData(t["name"], *(np.asarray(t[k], np.float64) for k in ("x", "y", "w_right", "w_left")))


@pytest.fixture(scope="session")
def kinematic_run(tmp_path_factory):
    """A tiny training run (test_train_racing's TINY options, a few hundred env steps) on a fitted
    surrogate of the kinematic example game: its circle, a car of its geometry, its 2-tick control
    period (0.04 s) and one step of input delay. Its checkpoints hold the agent; it drove no clean
    lap, so it has no best_agent/."""
    from racerl_jax import train_racing as tr
    from tests.racerl_jax.test_train_racing import TINY

    tmp = tmp_path_factory.mktemp("kinematic_run")
    fit = save_surrogate(tmp / "kinematic.json", "kinematic", CarParams(lf=1.25, lr=1.25, max_steer=0.5),
                         game_track(), delay_steps=1, dt=0.04, game_dt=0.02)
    tiny = [a for i, a in enumerate(TINY) if a not in ("--track", "--model") and TINY[i - 1] not in ("--track", "--model")]
    run = tmp / "run"
    tr.main([*tiny, "--surrogate", str(fit), "--run-dir", str(run), "--total-env-steps", "400", "--seed", "0"])
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit())[-1] == "400"
    return run
