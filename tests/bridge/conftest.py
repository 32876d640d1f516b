import threading

import pytest
import zmq

from bridge.games.kinematic import KinematicCarGame
from bridge.sdk import LockstepServer, RealtimeServer


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


class ServerThread:
    """Runs a server's serve() in a thread; stop() joins it (sockets closed by serve's finally)."""

    def __init__(self, server, **serve_kw):
        self.server = server
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=server.serve, kwargs={"stop": self.stop_event, **serve_kw},
                                       daemon=True)
        self.thread.start()

    def stop(self):
        self.stop_event.set()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive(), "server thread did not stop"


@pytest.fixture
def lockstep_server(ctx):
    st = ServerThread(LockstepServer(KinematicCarGame(), "tcp://127.0.0.1:*", context=ctx))
    yield st.server
    st.stop()


@pytest.fixture
def realtime_server(ctx):
    server = RealtimeServer(KinematicCarGame(), "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", rate_hz=200,
                            action_timeout=0.2, info_address="tcp://127.0.0.1:*", context=ctx)
    st = ServerThread(server)
    yield server
    st.stop()
