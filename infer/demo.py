"""`qd-demo`: a drawing page that classifies doodles live, entirely in the browser.

The server only hands out static files on 127.0.0.1: the page (infer/web/), the
onnxruntime-web runtime (infer/web/node_modules: `npm ci` in a clone; a built wheel carries
it, setup.py) and the export's canvas model (model.canvas.onnx, qd-export's onnx-canvas
format: the preprocessing is inside its graph, docs/canvas.md). Everything else happens in
the page: it reads the labels and the open-set rule from the model's own metadata_props
(parsed from the ONNX protobuf in web/onnx-metadata.js, because onnxruntime-web does not
expose custom metadata), feeds the pad's grey levels to the model with onnxruntime-web's
WebAssembly backend and asks instead of guessing when the rule (web/openset.js) says unknown.

Before serving, the model is opened once with onnxruntime here, so a wrong file is a
one-line error at start-up rather than a broken page. No torch, no network.

The server answers only requests whose Host is this machine's loopback name (a page on
another site that rebinds its DNS name to 127.0.0.1 cannot read the model), serves at most
MAX_CONNECTIONS at once, and a client that goes away mid-response is not an error worth a
traceback. A request must arrive whole (request line, headers, any body) within
REQUEST_TIMEOUT_S of the server starting to read it, however it trickles in: a client
dripping a byte now and then cannot hold a connection slot (each read alone waiting at most
IDLE_TIMEOUT_S would let it, for ever); writes to a client that stops reading wait at most
IDLE_TIMEOUT_S each. Every response, errors included, carries the same security headers
(DemoHandler.end_headers).
"""

from __future__ import annotations

import io
import mimetypes
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from typing import Annotated, Optional

import typer
from rich.text import Text

from qd import options
from qd.command import QDError, console, describe_unexpected, err_console, run_app, shown
from qd.data.contract import MODEL_CANVAS_ONNX, ORT_WEB_DIST_ENV

HOST = "127.0.0.1"
DEFAULT_PORT = 8765
# Host header names (any port: an ssh -L tunnel may use another) that mean this server.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
IDLE_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 10.0  # a whole request, from the moment the server starts reading it
MAX_CONNECTIONS = 32
WEB_DIR = Path(__file__).resolve().parent / "web"
ORT_PACKAGE = "onnxruntime-web"
# The only runtime files the page needs: the WebAssembly build's ES module and its
# wasm binary (single-threaded, so no cross-origin isolation is required).
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
PAGE_FILES = ("index.html", "app.js", "onnx-metadata.js", "openset.js", "style.css", "favicon.svg")

# Nothing outside this server may be loaded, and wasm needs its own CSP keyword.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
    "img-src 'self' data: blob:; connect-src 'self'; worker-src 'self' blob:; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# On every response, errors included: nothing it holds may be sniffed into another type, framed,
# cached or sent on as a referrer.
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".wasm": "application/wasm",
    ".onnx": "application/octet-stream",
    ".json": "application/json",
}


@dataclass(frozen=True)
class DemoModel:
    path: Path
    labels: list[str]
    precision: str


PACKAGED_ORT_DIST = WEB_DIR / "node_modules" / ORT_PACKAGE / "dist"


def ort_dist_dir(override: str | os.PathLike | None = None) -> Path:
    """Where onnxruntime-web's dist/ lives: `override`, else $QD_ORT_WEB_DIST, else the copy inside the
    package (infer/web/node_modules: `npm ci` in a clone, or shipped in the wheel)."""
    override = override or os.environ.get(ORT_WEB_DIST_ENV)
    dist = Path(override) if override else PACKAGED_ORT_DIST
    missing = [name for name in ORT_FILES if not (dist / name).is_file()]
    if missing:
        if override:
            raise QDError(f"{dist}: not {ORT_PACKAGE}'s dist folder (missing {missing[0]}); point "
                          f"--ort-web-dist (${ORT_WEB_DIST_ENV}) at node_modules/{ORT_PACKAGE}/dist")
        raise QDError(f"{dist}: {ORT_PACKAGE} is not installed (missing {missing[0]}); in a clone run "
                      f"`npm ci --prefix {WEB_DIR}`, or reinstall quickdraw-edge from a wheel built with npm "
                      f"available, or set ${ORT_WEB_DIST_ENV}")
    return dist


def canvas_model_path(model: str | os.PathLike | None) -> Path:
    """The export's canvas model: --model may be an export folder, a model.canvas.onnx, any other model file of
    the export (its folder's canvas model is used) or None (the newest export, as qd-infer finds it)."""
    from .model import resolve_model_path

    if model is not None and Path(model).is_dir():
        folder = Path(model)
    else:
        path = resolve_model_path(model)
        if path.name == MODEL_CANVAS_ONNX:
            return path
        folder = path.parent
    canvas = folder / MODEL_CANVAS_ONNX
    if not canvas.is_file():
        raise QDError(f"{folder}: no {MODEL_CANVAS_ONNX} in this export; the demo page runs the canvas model "
                      f"(qd-export CHECKPOINT --format onnx-canvas --out {folder})")
    return canvas


def check_model(model: str | os.PathLike | None) -> DemoModel:
    """The canvas model the page will run, opened once here (refuses non-ONNX files, models without qd.*
    metadata and models that are not canvas models)."""
    from .model import CanvasModel

    canvas = CanvasModel(canvas_model_path(model), threads=1)
    return DemoModel(path=canvas.path, labels=canvas.labels, precision=canvas.precision)


class _RequestReader(io.RawIOBase):
    """The socket as the request parser reads it: every read waits at most until the request's
    deadline (and at most `idle` seconds), and past the deadline a read is a TimeoutError, which
    http.server answers by closing the connection."""

    def __init__(self, sock: socket.socket, idle: float | None):
        self.sock = sock
        self.idle = idle
        self.deadline: float | None = None  # time.monotonic() by which the request must be in

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        wait = self.idle
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request did not arrive in time")
            wait = left if wait is None else min(wait, left)
        self.sock.settimeout(wait)
        try:
            return self.sock.recv_into(buffer)
        finally:
            self.sock.settimeout(self.idle)  # writes: each waits at most `idle`


class DemoHandler(BaseHTTPRequestHandler):
    """Serves a fixed set of files; anything else is 404. GET and HEAD only."""

    server_version = "qd-demo"
    routes: dict[str, Path] = {}
    timeout = IDLE_TIMEOUT_S  # each read and write on the connection (StreamRequestHandler)
    request_timeout = REQUEST_TIMEOUT_S  # a whole request (None: no bound beyond `timeout`)

    def setup(self):
        super().setup()
        self.rfile.close()  # the buffered socket file StreamRequestHandler made: read through the deadline instead
        self._reader = _RequestReader(self.connection, self.timeout)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self):
        self._reader.deadline = None if self.request_timeout is None else time.monotonic() + self.request_timeout
        try:
            super().handle_one_request()
        finally:
            self._reader.deadline = None

    def send_response_only(self, code, message=None):
        if self.request_version == "HTTP/0.9":  # http.server would answer it with no status line or headers
            self.request_version = "HTTP/1.0"
        super().send_response_only(code, message)

    def end_headers(self):
        """Every response's headers end here (send_error's too): the security headers go on all of them."""
        for name, value in SECURITY_HEADERS:
            self.send_header(name, value)
        super().end_headers()

    def do_GET(self):  # noqa: N802 (http.server naming)
        self._serve(send_body=True)

    def do_HEAD(self):  # noqa: N802
        self._serve(send_body=False)

    def _serve(self, send_body: bool) -> None:
        if not host_is_loopback(self.headers.get("Host")):
            self.send_error(HTTPStatus.FORBIDDEN, "this server answers only to 127.0.0.1 and localhost")
            return
        route = unquote(urlsplit(self.path).path)
        if route == "/":
            route = "/index.html"
        target = self.routes.get(route)
        if target is None:
            self.send_error(HTTPStatus.NOT_FOUND, "not found")
            return
        try:
            body = target.read_bytes()
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND, "not found")
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", CONTENT_TYPES.get(target.suffix, mimetypes.guess_type(target.name)[0]
                                                           or "application/octet-stream"))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format, *args):  # quiet: the terminal shows the URL, not every request
        pass


def host_is_loopback(host: str | None) -> bool:
    """True for a Host header naming this machine's loopback interface, with or without a port."""
    if not host:
        return False
    host = host.strip().lower()
    name = host[: host.index("]") + 1] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
    return name in LOOPBACK_NAMES


class DemoServer(ThreadingHTTPServer):
    """A thread per connection, at most MAX_CONNECTIONS of them; clients that vanish are not errors."""

    daemon_threads = True

    def __init__(self, *args, **kwargs):
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many at once: refuse this one, keep serving the others
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, socket.timeout)):
            return  # the browser closed the tab, or a connection idled out: nothing went wrong here
        err_console.print(Text.assemble("qd-demo: a request failed (", shown(describe_unexpected(exc)), ")"),
                          highlight=False, soft_wrap=True)


def build_routes(model: DemoModel, ort_dist: Path) -> dict[str, Path]:
    routes = {f"/{name}": WEB_DIR / name for name in PAGE_FILES}
    routes.update({f"/ort/{name}": ort_dist / name for name in ORT_FILES})
    routes[f"/{MODEL_CANVAS_ONNX}"] = model.path
    return routes


def make_server(model_path: str | os.PathLike | None, port: int = DEFAULT_PORT,
                ort_dist: str | os.PathLike | None = None) -> tuple[DemoServer, DemoModel]:
    """A ready (not yet serving) server on 127.0.0.1:port; port 0 picks a free one.

    `model_path`: a model.canvas.onnx, another model file of an export or an export folder (the export's
    model.canvas.onnx is served), or None for the newest export;
    `ort_dist`: onnxruntime-web's dist/ folder (default: ort_dist_dir())."""
    model = check_model(model_path)
    handler = type("BoundDemoHandler", (DemoHandler,), {"routes": build_routes(model, ort_dist_dir(ort_dist))})
    try:
        server = DemoServer((HOST, port), handler)
    except OSError as exc:
        raise QDError(f"{HOST}:{port}: cannot listen ({exc.strerror or exc}); try --port with another number") from None
    return server, model


def server_url(server: ThreadingHTTPServer) -> str:
    return f"http://{HOST}:{server.server_address[1]}/"


app = options.make_app()


@app.command(help=options.describe(
    "Serve the drawing demo on 127.0.0.1 until Ctrl+C: sketch a doodle, watch the exported model guess, "
    "all in the browser.",
    "qd-demo -m artifacts/exports/first"))
def demo(
    model: Annotated[Optional[str], options.model_option(
        f"An export folder, or a model file in one: the page runs the export's {MODEL_CANVAS_ONNX} "
        "(qd-export --format onnx-canvas). Default: the newest export.")] = None,
    port: Annotated[int, typer.Option(
        "--port", "-p", min=0, max=65535, help="Port on 127.0.0.1 (0 = any free port).")] = DEFAULT_PORT,
    ort_web_dist: Annotated[Optional[Path], typer.Option(
        "--ort-web-dist", metavar="DIR", envvar=ORT_WEB_DIST_ENV, show_default=False,
        help=f"{ORT_PACKAGE}'s dist/ folder. Default: the copy inside the package.")] = None,
    artifacts: Annotated[Optional[Path], options.artifacts_option()] = None,
    version: Annotated[bool, options.version_option()] = False,
) -> None:
    server, info = make_server(model, port, ort_web_dist)
    url = server_url(server)
    console.print(Text.assemble("qd-demo: model ", shown(info.path), f" ({len(info.labels)} classes, ",
                                shown(info.precision), ")"), highlight=False, soft_wrap=True)
    console.print(Text.assemble("qd-demo: open ", (url, "bold"), " in your browser and draw (Ctrl+C to stop)"),
                  highlight=False, soft_wrap=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        console.print("qd-demo: stopped", highlight=False, soft_wrap=True)
    finally:
        server.server_close()


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
