import threading

import pytest
import zmq

from bridge.games.kinematic import KinematicCarGame
from bridge.sdk import LockstepServer


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
