"""qd-demo under hostile clients: the Host header must name this machine (DNS rebinding), idle
connections are closed, connections are capped, clients that vanish are no tracebacks, a whole
request must arrive within a deadline (drip-fed requests cannot hold the slots), and every
response, errors included, carries the security headers."""

from __future__ import annotations

import http.client
import select
import socket
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    monkeypatch.setattr(demo.DemoHandler, "request_timeout", None)
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


# ------------------------------------------------------------------ a whole request's time is bounded

def drip(port: int, prefix: bytes, closed: dict, key: int, seconds: float) -> None:
    """Send `prefix` then one more byte every 0.1 s, never finishing the request, for at most `seconds`;
    record in closed[key] the seconds until the server hung up (None if it never did)."""
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    started = time.monotonic()
    closed[key] = None
    try:
        client.sendall(prefix)
        while time.monotonic() - started < seconds:
            readable, _, _ = select.select([client], [], [], 0.1)
            if readable and not client.recv(1 << 16):
                closed[key] = time.monotonic() - started  # the server closed the connection
                return
            client.sendall(b"a")
    except (ConnectionError, TimeoutError):
        closed[key] = time.monotonic() - started
    finally:
        client.close()


@pytest.mark.parametrize("prefix", [b"GET /", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Drip: "],
                         ids=["request line", "headers"])
def test_drip_fed_requests_at_the_connection_cap_cannot_lock_a_normal_client_out(server, monkeypatch, prefix):
    """Clients that fill every connection slot and send a byte every 0.1 s (well inside the idle timeout of each
    read) are cut off at the request deadline, and a normal client gets its page within a bound."""
    monkeypatch.setattr(demo.DemoHandler, "timeout", 30.0)  # no single read ever waits that long here
    monkeypatch.setattr(demo.DemoHandler, "request_timeout", 1.0)
    drip_for = 30.0  # far past the deadline: a dripper still connected then would hold its slot for ever
    closed: dict[int, float | None] = {}
    drippers = [threading.Thread(target=drip, args=(server, prefix, closed, i, drip_for), daemon=True)
                for i in range(3)]  # the fixture's connection cap
    for thread in drippers:
        thread.start()
    started = time.monotonic()
    served = None
    while time.monotonic() - started < 20:  # a user reloading the page
        try:
            served = get(server)
            break
        except (ConnectionError, http.client.HTTPException, TimeoutError):
            select.select([], [], [], 0.05)
    for thread in drippers:
        thread.join(drip_for + 10)
    assert served == 200, "a normal client was locked out by drip-fed connections"
    assert all(closed[i] is not None and closed[i] < drip_for for i in range(3)), closed


def test_a_request_that_arrives_whole_in_time_is_served_however_it_trickles(server, monkeypatch):
    monkeypatch.setattr(demo.DemoHandler, "request_timeout", 20.0)
    client = socket.create_connection(("127.0.0.1", server), timeout=10)
    for byte in b"GET /favicon.svg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n":
        client.sendall(bytes([byte]))  # one byte a packet
    status, headers = read_response(client)
    client.close()
    assert status == 200 and headers["content-type"] == "image/svg+xml"


# ------------------------------------------------------------------ security headers on every response

def read_response(client: socket.socket) -> tuple[int | None, dict[str, str]]:
    """(status, headers with lower-case names) of the one response on `client`, read until the server closes;
    (None, {}) when the server closed without answering."""
    data = b""
    while chunk := client.recv(1 << 20):
        data += chunk
    if not data:
        return None, {}
    head = data.split(b"\r\n\r\n", 1)[0].decode("iso-8859-1").split("\r\n")
    version, status = head[0].split(" ", 2)[:2]
    assert version.startswith("HTTP/1."), head[0]
    headers: dict[str, str] = {}
    for line in head[1:]:
        name, value = line.split(":", 1)
        assert name.lower() not in headers, f"{name} sent twice"
        headers[name.lower()] = value.strip()
    return int(status), headers


def assert_security_headers(status: int, headers: dict[str, str]) -> None:
    csp = headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp and "object-src 'none'" in csp, status
    assert headers.get("x-content-type-options") == "nosniff", status
    assert headers.get("x-frame-options") == "DENY", status
    assert headers.get("referrer-policy") == "no-referrer", status
    assert headers.get("cache-control") == "no-store", status


def exchange(port: int, raw: bytes) -> tuple[int | None, dict[str, str]]:
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        client.sendall(raw)
        return read_response(client)
    finally:
        client.close()


@pytest.mark.parametrize("raw,status", [
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 200),
    (b"HEAD /app.js HTTP/1.0\r\nHost: localhost\r\n\r\n", 200),
    (b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n", 403),
    (b"GET /nope HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404),
    (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\nhi", 501),
    (b"DELETE / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 501),
    (b"GET / HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n", 505),
    (b"GET / HTTP/x\r\n\r\n", 400),
    (b"GET / HTTP/1.1 junk\r\n\r\n", 400),
    (b"PUT /\r\n\r\n", 400),
    (b"GET /index.html\r\nHost: 127.0.0.1\r\n\r\n", 200),  # HTTP/0.9 (no status line, no headers): answered as 1.0
    (b"GET /index.html HTTP/0.9\r\nHost: 127.0.0.1\r\n\r\n", 200),
    (b"GET /a\xc2\xa0b HTTP/0.9\r\n\r\n", 400),  # NBSP splits words too
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nX: " + b"y" * 70000 + b"\r\n\r\n", 431),
])
def test_every_status_carries_the_security_headers(server, raw, status):
    got, headers = exchange(server, raw)
    assert got == status
    assert_security_headers(got, headers)


METHODS = st.one_of(st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT",
                                     "get", "BREW", ""]),
                    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=8))
PATHS = st.one_of(st.sampled_from(["/", "/index.html", "/app.js", "/model.canvas.onnx", "/ort/ort.wasm.min.mjs",
                                   "/nope", "/../../etc/passwd", "//evil.example/", "*", "/%2e%2e/x", "/index.html?x=1",
                                   ""]),
                  st.text(st.characters(min_codepoint=33, max_codepoint=0x2fff, blacklist_categories=("Cs",)),
                          max_size=40))
VERSIONS = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/1", "http/1.1", ""])
HOSTS = st.sampled_from(["127.0.0.1", "localhost:8765", "[::1]", "evil.example", "", None])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=METHODS, path=PATHS, version=VERSIONS, host=HOSTS)
def test_any_request_is_answered_with_the_security_headers_or_not_at_all(server, method, path, version, host):
    line = " ".join(part for part in (method, path, version) if part)
    raw = (line + "\r\n" + (f"Host: {host}\r\n" if host is not None else "") + "\r\n").encode()
    status, headers = exchange(server, raw)
    if status is not None:  # an empty request line gets no answer at all
        assert_security_headers(status, headers)
