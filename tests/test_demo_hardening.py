"""Issue 15, class 7 for qd-demo: the Host header must name this machine (DNS rebinding), idle
connections are closed, connections are capped, and clients that vanish are no tracebacks."""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time

import pytest

from onnx_synth import tiny_canvas_model
from qd.infer import demo


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A qd-demo server on a free port with a 6 MB model, short idle timeout and a small connection cap."""
    monkeypatch.setattr(demo.DemoHandler, "timeout", 1.0)
    monkeypatch.setattr(demo, "MAX_CONNECTIONS", 3)
    model = tiny_canvas_model(tmp_path / "model.canvas.onnx", [f"class {i}" for i in range(2000)])
    httpd, _ = demo.make_server(model, port=0)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def get(port: int, path: str = "/", host: str | None = "default") -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        if host == "default":
            connection.request("GET", path)
        else:
            connection.putrequest("GET", path, skip_host=True)
            if host is not None:
                connection.putheader("Host", host)
            connection.endheaders()
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.mark.parametrize("host,status", [
    ("127.0.0.1:{port}", 200), ("localhost:{port}", 200), ("LOCALHOST", 200), ("127.0.0.1:9000", 200),
    ("[::1]:{port}", 200), ("evil.example:{port}", 403), ("127.0.0.1.evil.example", 403),
    ("localhost.evil.example:{port}", 403), ("", 403), (None, 403),
])
def test_only_requests_naming_this_machine_are_answered(server, host, status):
    assert get(server, "/model.canvas.onnx", host if host is None else host.format(port=server)) == status


def test_idle_connections_are_closed(server):
    idle = socket.create_connection(("127.0.0.1", server), timeout=10)
    started = time.monotonic()
    assert idle.recv(1) == b""  # the server hung up on a connection that sent nothing
    assert time.monotonic() - started < 8
    idle.close()


def test_connections_are_capped_and_the_server_recovers(server, monkeypatch):
    # Connections made from here on are never timed out by the server: with the fixture's 1 s, a busy machine
    # could let the server drop the three idle ones before the fourth is refused.
    monkeypatch.setattr(demo.DemoHandler, "timeout", None)
    idle = [socket.create_connection(("127.0.0.1", server), timeout=10) for _ in range(3)]
    extra = socket.create_connection(("127.0.0.1", server), timeout=10)
    extra.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert extra.recv(100) == b""  # refused while three connections hold every slot
    for connection in idle + [extra]:
        connection.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if get(server) == 200:
                break
        except (ConnectionError, http.client.HTTPException):
            time.sleep(0.1)
    else:
        pytest.fail("the server did not recover once the idle connections were gone")


def test_a_client_that_aborts_mid_download_is_not_a_traceback(server, capfd):
    for _ in range(5):
        client = socket.create_connection(("127.0.0.1", server), timeout=10)
        client.sendall(b"GET /model.canvas.onnx HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        client.recv(10)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # a reset while the server is still sending 6 MB
    time.sleep(1.0)
    assert get(server) == 200
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err and captured.err == ""
