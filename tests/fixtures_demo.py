"""Fixtures for the browser demo's tests: the exported model it serves and one live server."""

import threading
from pathlib import Path

import pytest

from qd.infer import demo


@pytest.fixture(scope="session")
def demo_model(exported_model) -> Path:
    """The model the page runs: the session export's model.canvas.onnx (model.onnx beside it)."""
    return Path(exported_model) / "model.canvas.onnx"


@pytest.fixture(scope="session")
def live_server(demo_model):
    """(url, info) of a qd-demo server on 127.0.0.1, on a free port, for the whole session."""
    server, info = demo.make_server(demo_model, port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    yield demo.server_url(server), info
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def demo_url(live_server) -> str:
    return live_server[0]
