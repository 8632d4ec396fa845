"""Fixtures for the data stage's tests (and the stages that build on it).

`qd_server` is a loopback HTTP server (127.0.0.1, ephemeral port, one thread per
request) that serves the shared bitmaps in Google's layout,
`<base_url>/<URL-encoded category>.npy`, with Range support and fault injection:

    def test_resume(qd_server, tmp_path):
        qd_server.drop_after("cat", 100_000)        # next response for cat breaks at byte 100000
        qd_server.drop_after("cat", 100_000, reset=True)  # ... with a TCP reset instead of a close
        qd_server.serve_html("dog")                 # dog.npy answers with an HTML error page
        qd_server.fail_with("apple", 503, times=2)  # two 503s, then the file
        qd_server.ignore_range()                    # answer every Range request with a full 200
        qd_server.stall("bird", seconds=2.0, after=4096)  # pause mid-body for a while
        release = qd_server.hold("bird", after=4096)  # pause mid-body until release.set() (or the reset)
        qd_server.drip("bird", after=4096, step=1, pause=0.1)  # then 1 byte per 0.1 s, for at most 30 s
        qd_server.drip("bird", headers=True)        # the status line and headers dripped too
        qd_server.add("The Eiffel Tower", some_path)  # serve another file under any name
        qd_server.validators("etag")                # send only an ETag (or "last_modified", or none)
        qd_server.honour_if_range(False)            # answer Range with 206 whatever If-Range says
        qd_server.change_after("cat", other_path, requests=1)  # the file changes after the first request
        qd_server.fail_with("cat", 404, reason="Not [/] here")  # any reason phrase
        ... fetch from qd_server.base_url ...
        qd_server.hits_for("cat")  # [Hit(method, category, range, status, sent), ...]

Every file is served with an ETag and a Last-Modified derived from its content (so a
file replaced by another has new ones), and If-Range is honoured (RFC 9110: a Range
request whose If-Range does not match gets the whole current file, 200).

One server runs for the whole session; the function-scoped `qd_server` clears faults,
extra names and the request log before and after each test.
"""

from __future__ import annotations

import email.utils
import hashlib
import re
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

BASE_PATH = "/quickdraw_dataset/full/numpy_bitmap"
HTML_PAGE = (b"<!DOCTYPE html>\n<html lang=en><head><title>Error 429 (Too Many Requests)</title></head>"
             b"<body><p>We're sorry, but you have sent too many requests to us recently.</p></body></html>\n")
MAX_STALL_SECONDS = 10.0  # a stalled handler never outlives the test run by much
MAX_HOLD_SECONDS = 300.0  # a held response is released by the test or the reset; this only bounds a crash
MAX_DRIP_SECONDS = 30.0  # a dripping response ends by itself (connection closed), or at the reset


@dataclass(frozen=True)
class Drip:
    """How a response is dripped (BitmapServer.drip)."""

    after: int
    step: int
    pause: float
    seconds: float
    headers: bool


@dataclass(frozen=True)
class Hit:
    """One request as the server saw it."""

    method: str
    category: str | None
    range: str | None
    status: int
    sent: int  # body bytes actually written


class BitmapServer:
    """Serves `<category>.npy` files from a folder (plus added names) in Google's layout."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._no_requests_in_flight = threading.Condition(self._lock)
        self._in_flight = 0
        self._cache: dict[Path, bytes] = {}
        self.reset()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="qd-bitmap-server", daemon=True)

    # -- life cycle -------------------------------------------------------------------
    def start(self) -> "BitmapServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{BASE_PATH}"

    def url(self, category: str) -> str:
        return f"{self.base_url}/{urllib.parse.quote(category + '.npy', safe='')}"

    # -- content and faults -------------------------------------------------------------
    def reset(self, wait_s: float = 30.0) -> None:
        """Clear faults and the request log, once the requests still being answered are done.

        A handler records its hit after writing the body, so on a busy machine a client can
        be done (and its test over) before the hit lands; waiting keeps a previous test's
        late hit out of the next test's log."""
        with self._lock:
            for held in [*getattr(self, "_holds", {}).values(), *getattr(self, "_drips", {}).values()]:
                held[0].set()  # a test that failed before releasing its hold frees its handler here
            self._no_requests_in_flight.wait_for(lambda: self._in_flight == 0, timeout=wait_s)
            self.files: dict[str, Path] = {p.stem: p for p in sorted(self.folder.glob("*.npy"))}
            self.hits: list[Hit] = []
            self._drops: dict[str, list] = {}  # category -> [file offset, times left, reset?]
            self._html: set[str] = set()
            self._status: dict[str, list[int]] = {}  # category -> [status, times left]
            self._stalls: dict[str, tuple[float, int]] = {}
            self._holds: dict[str, tuple[threading.Event, int]] = {}
            self._drips: dict[str, tuple[threading.Event, Drip]] = {}
            self._ignore_range = False
            self._validators = {"etag", "last_modified"}
            self._honour_if_range = True
            self._reasons: dict[str, str] = {}
            self._changes: dict[str, list] = {}  # category -> [requests left before the change, new path]

    def add(self, category: str, path: Path) -> None:
        """Serve `path` as `<category>.npy` (any name, e.g. with spaces)."""
        with self._lock:
            self.files[category] = Path(path)
            self._cache.pop(Path(path), None)

    def remove(self, category: str) -> None:
        with self._lock:
            self.files.pop(category, None)

    def drop_after(self, category: str, offset: int, times: int = 1, reset: bool = False) -> None:
        """Cut the connection once a response for `category` reaches file byte `offset`:
        a clean close (the client sees a short body), or with `reset` a TCP RST (the client
        sees ECONNRESET, and may lose bytes that were in flight)."""
        with self._lock:
            self._drops[category] = [offset, times, reset]

    def serve_html(self, category: str) -> None:
        """Answer every request for `category` with a 200 HTML error page."""
        with self._lock:
            self._html.add(category)

    def fail_with(self, category: str, status: int, times: int = 1, reason: str | None = None) -> None:
        with self._lock:
            self._status[category] = [status, times]
            if reason is not None:
                self._reasons[category] = reason

    def validators(self, *names: str) -> None:
        """Which validators responses carry: "etag", "last_modified" (both by default), or none."""
        with self._lock:
            self._validators = set(names)

    def honour_if_range(self, honour: bool = True) -> None:
        with self._lock:
            self._honour_if_range = honour

    def change_after(self, category: str, path: Path, requests: int = 1) -> None:
        """Serve `path` as `category` from its (requests + 1)th request on: a file replaced mid-download."""
        with self._lock:
            self._changes[category] = [requests, Path(path)]
            self._cache.pop(Path(path), None)

    def stall(self, category: str, seconds: float, after: int = 0) -> None:
        """Pause `seconds` after sending `after` body bytes of each response for `category`."""
        with self._lock:
            self._stalls[category] = (min(seconds, MAX_STALL_SECONDS), after)

    def hold(self, category: str, after: int = 0) -> threading.Event:
        """Send `after` body bytes of each response for `category`, then wait until the returned event is set
        (or the server is reset): a transfer that stays open exactly as long as the test needs, on any machine."""
        release = threading.Event()
        with self._lock:
            self._holds[category] = (release, after)
        return release

    def drip(self, category: str, after: int = 0, step: int = 1, pause: float = 0.1,
             seconds: float = MAX_DRIP_SECONDS, headers: bool = False) -> threading.Event:
        """Send `after` body bytes of each response for `category`, then `step` bytes every `pause` seconds,
        for at most `seconds` (capped at MAX_DRIP_SECONDS); then close the connection, the rest unsent.
        With `headers`, the status line and headers are dripped too (and `after` counts from their start).
        The returned event (or the server's reset) stops a drip at once: a server far slower than any
        client's floor, which still ends by itself."""
        stop = threading.Event()
        with self._lock:
            self._drips[category] = (stop, Drip(after, max(step, 1), pause, min(seconds, MAX_DRIP_SECONDS),
                                                headers))
        return stop

    def ignore_range(self, ignore: bool = True) -> None:
        with self._lock:
            self._ignore_range = ignore

    def hits_for(self, category: str) -> list[Hit]:
        with self._lock:
            return [hit for hit in self.hits if hit.category == category]

    def bytes_of(self, category: str) -> bytes:
        with self._lock:
            path = self.files[category]
        return self._read(path)

    # -- used by the handler --------------------------------------------------------------
    def _read(self, path: Path) -> bytes:
        with self._lock:
            if path not in self._cache:
                self._cache[path] = path.read_bytes()
            return self._cache[path]

    def _plan(self, category: str) -> dict:
        """Decide, under the lock, which faults this request gets (consuming one-shot ones)."""
        with self._lock:
            change = self._changes.get(category)
            if change is not None:
                if change[0] <= 0:
                    self.files[category] = change[1]
                    del self._changes[category]
                change[0] -= 1
            plan = {"path": self.files.get(category), "html": category in self._html,
                    "status": None, "drop": None, "stall": self._stalls.get(category),
                    "hold": self._holds.get(category), "drip": self._drips.get(category),
                    "ignore_range": self._ignore_range, "validators": set(self._validators),
                    "honour_if_range": self._honour_if_range, "reason": self._reasons.get(category)}
            if category in self._status:
                status, left = self._status[category]
                plan["status"] = status
                self._status[category][1] -= 1
                if left <= 1:
                    del self._status[category]
            if category in self._drops:
                plan["drop"] = self._drops[category]
            return plan

    def _consume_drop(self, category: str) -> None:
        with self._lock:
            entry = self._drops.get(category)
            if entry is not None:
                entry[1] -= 1
                if entry[1] <= 0:
                    del self._drops[category]

    def _record(self, hit: Hit) -> None:
        with self._lock:
            self.hits.append(hit)

    def _request_started(self) -> None:
        with self._lock:
            self._in_flight += 1

    def _request_done(self) -> None:
        with self._lock:
            self._in_flight -= 1
            self._no_requests_in_flight.notify_all()


class _Handler(BaseHTTPRequestHandler):
    server_version = "qd-test-bitmaps/1.0"

    def log_message(self, format, *args):  # keep pytest output clean
        pass

    def do_HEAD(self):
        self._serve_counted(send_body=False)

    def do_GET(self):
        self._serve_counted(send_body=True)

    def _serve_counted(self, send_body: bool) -> None:
        owner: BitmapServer = self.server.owner  # type: ignore[attr-defined]
        owner._request_started()
        try:
            self._serve(send_body)
        finally:
            owner._request_done()

    def _serve(self, send_body: bool) -> None:
        owner: BitmapServer = self.server.owner  # type: ignore[attr-defined]
        path = urllib.parse.urlsplit(self.path).path
        range_header = self.headers.get("Range")
        prefix = BASE_PATH + "/"
        if not path.startswith(prefix) or not path.endswith(".npy"):
            return self._error(owner, None, range_header, 404)
        category = urllib.parse.unquote(path[len(prefix):-len(".npy")])
        plan = owner._plan(category)
        if plan["status"] is not None:
            return self._error(owner, category, range_header, plan["status"], plan["reason"])
        if plan["html"]:
            return self._send(owner, category, range_header, 200, HTML_PAGE, 0, len(HTML_PAGE),
                              {"Content-Type": "text/html; charset=UTF-8"}, send_body, plan)
        if plan["path"] is None:
            return self._error(owner, category, range_header, 404)
        data = owner._read(plan["path"])
        total = len(data)
        headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes",
                   **_validators_of(data, plan["validators"])}
        span = None if plan["ignore_range"] else _parse_range(range_header, total)
        if_range = self.headers.get("If-Range")
        if span is not None and if_range and plan["honour_if_range"] and if_range not in headers.values():
            span = None  # the file changed since the client's copy: the whole current file, 200
        if span == "unsatisfiable":
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{total}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            owner._record(Hit(self.command, category, range_header, 416, 0))
            return
        if span is None:
            return self._send(owner, category, range_header, 200, data, 0, total, headers, send_body, plan)
        first, last = span
        headers["Content-Range"] = f"bytes {first}-{last}/{total}"
        return self._send(owner, category, range_header, 206, data, first, last + 1, headers, send_body, plan)

    def _send(self, owner, category, range_header, status, data, start, end, headers, send_body, plan) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(end - start))
        if plan.get("drip") is not None:
            return self._send_dripping(owner, category, range_header, status, data, start, end, send_body,
                                       *plan["drip"])
        self.end_headers()
        sent = 0
        if send_body:
            stop = end
            drop = plan["drop"]
            if drop is not None and start < drop[0] < end:
                stop = drop[0]
                owner._consume_drop(category)
            sent = self._write_body(data, start, stop, plan["stall"], plan["hold"])
            if stop < end:
                self._abort(reset=drop[2])
        owner._record(Hit(self.command, category, range_header, status, sent))

    def _write_body(self, data: bytes, start: int, stop: int, stall, hold) -> int:
        sent = 0
        try:
            for pause in (stall, hold):
                if pause is None:
                    continue
                wait, after = pause
                cut = min(start + after, stop)
                self.wfile.write(data[start:cut])
                self.wfile.flush()
                sent += cut - start
                if isinstance(wait, threading.Event):
                    wait.wait(MAX_HOLD_SECONDS)
                else:
                    time.sleep(wait)
                start = cut
            self.wfile.write(data[start:stop])
            self.wfile.flush()
            sent += stop - start
        except OSError:  # the client went away (timeout, SIGKILL): fine
            self.close_connection = True
        return sent

    def _send_dripping(self, owner, category, range_header, status, data, start, end, send_body,
                       stop: threading.Event, drip: Drip) -> None:
        """Headers (whole, or dripped), `drip.after` bytes at once, then `drip.step` bytes per `drip.pause`
        seconds until the drip's time is up or `stop` is set; then the connection is closed."""
        self._headers_buffer.append(b"\r\n")
        head = b"".join(self._headers_buffer)
        self._headers_buffer = []
        body = data[start:end] if send_body else b""
        stream = head + body if drip.headers else body
        written = 0
        deadline = time.monotonic() + drip.seconds
        try:
            if not drip.headers:
                self.wfile.write(head)
            written = min(drip.after, len(stream))
            self.wfile.write(stream[:written])
            while written < len(stream) and time.monotonic() < deadline and not stop.is_set():
                self.wfile.write(stream[written:written + drip.step])
                written = min(written + drip.step, len(stream))
                stop.wait(drip.pause)
        except OSError:  # the client gave up: what a drip is for
            pass
        if written < len(stream):
            self._abort(reset=False)
        self.close_connection = True
        sent = max(written - len(head), 0) if drip.headers else written
        owner._record(Hit(self.command, category, range_header, status, sent))

    def _abort(self, reset: bool) -> None:
        """Drop the connection mid-body, as a flaky network would."""
        self.close_connection = True
        try:
            if reset:  # linger 0 + close = RST
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            else:
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _error(self, owner, category, range_header, status: int, reason: str | None = None) -> None:
        body = f"<html><body><h1>{status}</h1></body></html>".encode()
        self.send_response(status, reason)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        owner._record(Hit(self.command, category, range_header, status, len(body)))


def _validators_of(data: bytes, which: set[str]) -> dict[str, str]:
    """ETag and Last-Modified as a server derives them, here from the content itself."""
    digest = hashlib.sha1(data).hexdigest()
    headers = {}
    if "etag" in which:
        headers["ETag"] = f'"{digest[:20]}"'
    if "last_modified" in which:
        headers["Last-Modified"] = email.utils.formatdate(1_500_000_000 + int(digest[:7], 16), usegmt=True)
    return headers


def _parse_range(header: str | None, total: int):
    """(first, last) for a single `bytes=` range, None to send everything, or 'unsatisfiable'."""
    if not header:
        return None
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header)
    if not match or (not match.group(1) and not match.group(2)):
        return None  # multiple or malformed ranges: a plain 200, as RFC 9110 allows
    first_text, last_text = match.groups()
    if not first_text:  # suffix range: the last N bytes
        n = int(last_text)
        return (max(total - n, 0), total - 1) if n and total else "unsatisfiable"
    first = int(first_text)
    last = min(int(last_text), total - 1) if last_text else total - 1
    if first >= total or first > last:
        return "unsatisfiable"
    return first, last


@pytest.fixture(scope="session")
def qd_server_session(shared_bitmaps):
    """The one loopback server of the session; prefer `qd_server`, which resets it."""
    server = BitmapServer(shared_bitmaps).start()
    yield server
    server.stop()


@pytest.fixture
def qd_server(qd_server_session) -> BitmapServer:
    """The session's bitmap server with no faults, no extra names and an empty request log."""
    qd_server_session.reset()
    yield qd_server_session
    qd_server_session.reset()


@dataclass(frozen=True)
class CliRun:
    exit_code: int
    stdout: str
    stderr: str
    output: str  # stdout and stderr interleaved, as a terminal shows them


def invoke_cli(main, *args, env: dict | None = None) -> CliRun:
    """Run a `qd-*` entry point function (`main()`, which goes through run_app) in-process,
    with sys.argv set and the output captured: exactly what a user would see and get."""
    import sys

    from typer.testing import CliRunner

    runner = CliRunner()
    saved_argv = sys.argv
    with runner.isolation(env=env) as (out, err, mixed):
        sys.argv = ["qd-cli", *(str(a) for a in args)]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.argv = saved_argv
        sys.stdout.flush()
        sys.stderr.flush()
        texts = [stream.getvalue().decode("utf-8", "replace") for stream in (out, err, mixed)]
    return CliRun(code, *texts)


@pytest.fixture
def qd_cli():
    """`qd_cli(main, *args, env=None) -> CliRun`: see invoke_cli (also importable:
    `from fixtures_data import invoke_cli`)."""
    return invoke_cli


def run_entry_point(monkeypatch, capsys, main, program: str, *args, columns: int | None = None):
    """A `qd-*` entry point as the shell runs it, output captured by capsys: (exit code, stdout, stderr).
    `columns` widens rich's console so lines are not wrapped."""
    import sys

    if columns is not None:
        monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setattr(sys, "argv", [program, *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err
