"""A fake lockstep plugin for trainer-side tests: a REP socket in a thread that answers each
request with whatever ``answer(request_bytes)`` returns (bytes, a list of frames, or None for
silence)."""
from __future__ import annotations

import threading
from typing import Callable

import zmq

from bridge import protocol as P


def telemetry_bytes(seq: int = 0, episode: int = 0, **over) -> bytes:
    frame = {"type": "telemetry", "v": 1, "seq": seq, "episode": episode, "t": 0.0, "x": 0.0, "y": 0.0,
             "yaw": 0.0, "speed": 0.0, "steer": 0.0, "throttle": 0.0, "brake": 0.0, **over}
    return P.encode(frame)


class ScriptedPlugin:
    def __init__(self, ctx: zmq.Context, answer: Callable[[bytes], bytes | list | None],
                 address: str = "tcp://127.0.0.1:*"):
        self.answer = answer
        self.sock = ctx.socket(zmq.ROUTER)  # ROUTER: can stay silent, or answer with several frames
        self.sock.linger = 0
        self.sock.bind(address)
        self.address = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(20, zmq.POLLIN):
                continue
            ident, *rest = self.sock.recv_multipart()
            body = rest[-1]  # REQ puts an empty delimiter before the request
            self.requests.append(body)
            out = self.answer(body)
            if out is None:
                continue  # silence: the client times out
            frames = out if isinstance(out, list) else [out]
            self.sock.send_multipart([ident, b"", *frames])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close(linger=0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
