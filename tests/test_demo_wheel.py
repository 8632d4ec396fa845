"""`pip install` of a built wheel into a fresh virtual environment, no clone and no npm step:
`from qd import Classifier` works there, and qd-demo serves a page that loads its model in
Chromium with the onnxruntime-web files the wheel carries.

To stay quick and offline, the fresh environment borrows the test environment's third-party
packages (numpy, onnxruntime, typer, ...) through a .pth line, and the wheel goes in with
--no-deps; quickdraw-edge itself comes only from the wheel (the checkout is not on its path).
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_demo_browser import CHROMIUM, CHROMIUM_FLAGS, DESKTOP

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"Chromium not found at {CHROMIUM}")


def _run(args, **kwargs):
    return subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    """A fresh venv with only the built wheel of this checkout installed (dependencies borrowed)."""
    root = tmp_path_factory.mktemp("wheel")
    built = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                  "-w", str(root / "dist"), str(REPO)])
    assert built.returncode == 0, built.stderr
    [wheel] = (root / "dist").glob("quickdraw_edge-*.whl")
    venv = root / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    (Path(purelib) / "borrowed-dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    installed = _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                      "--no-index", str(wheel)])
    assert installed.returncode == 0, installed.stderr
    return venv


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "QD_ORT_WEB_DIST")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_the_wheel_gives_the_python_api_and_its_own_demo_runtime(fresh_venv, tmp_path):
    probe = _run([str(fresh_venv / "bin" / "python"), "-c",
                  "import qd, qd.data, qd.infer.demo as d; from qd import Classifier; "
                  "print(qd.__file__); print(d.ort_dist_dir())"], cwd=tmp_path, env=_env())
    assert probe.returncode == 0, probe.stderr
    for line in probe.stdout.splitlines():
        assert str(fresh_venv) in line and str(REPO) not in line


def test_qd_demo_from_the_wheel_loads_its_page_in_chromium(fresh_venv, demo_model, tmp_path):
    from playwright.sync_api import sync_playwright

    server = subprocess.Popen([str(fresh_venv / "bin" / "qd-demo"), "-m", str(demo_model), "--port", "0"],
                              cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = _served_url(server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, timeout=30_000)
            try:
                page = browser.new_context(**DESKTOP).new_page()
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.goto(url)
                page.wait_for_selector("body[data-state=ready]", timeout=30_000)
                snapshot = page.evaluate("window.qdDemo.snapshot()")
            finally:
                browser.close()
        assert not errors
        assert snapshot["labels"] and len(snapshot["labels"]) > 1
    finally:
        server.terminate()
        server.wait(timeout=10)


def _served_url(server: subprocess.Popen) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = server.stdout.readline()
        if not line:
            raise AssertionError(f"qd-demo exited: {server.stderr.read()}")
        if "http://127.0.0.1:" in line:
            return line[line.index("http://"):].split()[0]
    raise AssertionError("qd-demo printed no URL within 60 s")
