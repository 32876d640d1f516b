import json
import threading

from bridge import protocol as P
from bridge.client import NdjsonTelemetryServer, TcpTelemetrySource


def frames(n):
    return [P.telemetry(seq=i, episode=0, t=0.02 * i, x=float(i), y=0.0, yaw=0.0, speed=1.0, steer=0.0,
                        throttle=0.5, brake=0.0) for i in range(n)]


def test_reads_valid_frames_and_drops_invalid_lines_counting_them():
    good = frames(4)
    lines = [good[0], good[1], b"not json\n", {**good[2], "speed": -3}, b"\n",
             json.dumps({**good[2], "x": 1}).replace("1", "NaN", 1).encode() + b"\n",
             b'{"type":"telemetry","v":1,"pad":"' + b"x" * 70000 + b'"}\n',  # oversize line
             good[2], good[3], b'{"type":"telemetry","v":1,"seq":9']  # cut short at the end
    with NdjsonTelemetryServer(lines) as srv, TcpTelemetrySource.connect("127.0.0.1", srv.port) as src:
        got = list(src)
    assert [f["seq"] for f in got] == [0, 1, 2, 3]
    assert src.stats.invalid == 5


def test_listen_mode_accepts_a_streaming_game():
    ready = threading.Event()
    port = []

    def on_ready(p):
        port.append(p)
        ready.set()

    result = {}

    def trainer():
        with TcpTelemetrySource.listen("127.0.0.1", 0, timeout=5, ready=on_ready) as src:
            result["frames"] = list(src)

    th = threading.Thread(target=trainer)
    th.start()
    assert ready.wait(5)
    import socket
    with socket.create_connection(("127.0.0.1", port[0])) as game:
        for f in frames(3):
            game.sendall(json.dumps(f).encode() + b"\n")
    th.join(5)
    assert [f["x"] for f in result["frames"]] == [0.0, 1.0, 2.0]
