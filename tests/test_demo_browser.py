"""qd-demo end to end in real headless Chromium (Debian's `chromium`), driven by Playwright.

A circle, a square and a star are drawn on the page's canvas with the mouse in a
desktop viewport and with touch in a phone viewport; the expected class must be in
the page's top 3, and a screenshot of each lands in artifacts/demo-screenshots/.
The page runs the export's canvas model (model.canvas.onnx, the preprocessing inside its
graph); its probabilities must match `qd-infer --json` (qd.data.images + model.onnx) on the
PNG of the very same canvas within 1e-3, with the same top-1.

Set-up (CI too): `apt-get install -y chromium` and `npm ci --prefix infer/web`.
Playwright is used as a library only; it never downloads a browser.
"""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from qd.infer import demo

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = REPO / "artifacts" / "demo-screenshots"
CHROMIUM = os.environ.get("QD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# As the machine's set-up notes require: no sandbox as root, no GPU, and none of
# Chromium's background traffic (the network is closed; the page is all local).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage"]
DESKTOP = {"viewport": {"width": 1280, "height": 800}, "device_scale_factor": 1}
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 3, "is_mobile": True, "has_touch": True}
SHAPES = ("circle", "square", "star")
NO_GUESS_SHOWN = "() => document.querySelector('#top3 .guess').dataset.label === ''"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"Chromium not found at {CHROMIUM}: apt-get install -y chromium")


# ----------------------------------------------------------------------------- shapes (pad fractions)

def _polyline(corners: list[tuple[float, float]], per_side: int = 12) -> list[tuple[float, float]]:
    points = []
    for (x0, y0), (x1, y1) in zip(corners, corners[1:]):
        points += [(x0 + (x1 - x0) * t / per_side, y0 + (y1 - y0) * t / per_side) for t in range(per_side)]
    return points + [corners[-1]]


def shape_points(shape: str) -> list[tuple[float, float]]:
    """One closed stroke, in fractions of the pad's width and height."""
    if shape == "circle":
        return [(0.5 + 0.3 * math.cos(a), 0.5 + 0.3 * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 25)]
    if shape == "square":
        return _polyline([(0.22, 0.22), (0.78, 0.22), (0.78, 0.78), (0.22, 0.78), (0.22, 0.22)], per_side=5)
    if shape == "star":
        tips = [(0.5 + 0.34 * math.cos(math.radians(-90 + 144 * k)), 0.53 + 0.34 * math.sin(math.radians(-90 + 144 * k)))
                for k in range(6)]
        return _polyline(tips, per_side=4)
    raise ValueError(shape)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, timeout=30_000)
        yield chromium
        chromium.close()


class DemoPage:
    """One page of the demo in a fresh browser context, with the requests it made."""

    def __init__(self, browser, url: str, device: dict):
        self.context = browser.new_context(**device)
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", self._on_console)
        self.page.goto(url)
        self.page.wait_for_selector("body[data-state=ready]", timeout=30_000)
        self.touch = device.get("has_touch", False)
        self.cdp = self.context.new_cdp_session(self.page) if self.touch else None

    def _on_console(self, message):
        if message.type == "error":
            self.errors.append(message.text)

    def close(self):
        self.context.close()

    def pad_points(self, fractions):
        box = self.page.locator("#pad").bounding_box()
        return [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in fractions]

    def stroke(self, fractions, finish: bool = True):
        points = self.pad_points(fractions)
        if self.touch:  # real touch events through the DevTools protocol, as a finger makes them
            self.cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [_touch(points[0])]})
            for point in points[1:]:
                self.cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [_touch(point)]})
            if finish:
                self.cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        else:
            self.page.mouse.move(*points[0])
            self.page.mouse.down()
            for point in points[1:]:
                self.page.mouse.move(*point)
            if finish:
                self.page.mouse.up()

    def shown_top3(self) -> list[tuple[str, float]]:
        rows = self.page.locator("#top3 .guess")
        return [(rows.nth(i).get_attribute("data-label"), float(rows.nth(i).get_attribute("data-probability") or "nan"))
                for i in range(rows.count())]

    def snapshot(self) -> dict:
        return self.page.evaluate("window.qdDemo.snapshot()")


def _touch(point):
    return {"x": point[0], "y": point[1], "radiusX": 4, "radiusY": 4, "force": 1, "id": 1}


def top3_of(probabilities, labels) -> list[str]:
    order = np.argsort(-np.asarray(probabilities), kind="stable")[:3]
    return [labels[i] for i in order]


def save_screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


# ----------------------------------------------------------------------------- tests

@pytest.fixture(scope="module", params=["desktop", "phone"])
def drawn_shapes(request, browser, demo_url):
    """Each shape drawn once on a cleared pad (mouse on desktop, touch on a phone), with what the page showed."""
    device_name = request.param
    device = DESKTOP if device_name == "desktop" else PHONE
    demo_page = DemoPage(browser, demo_url, device)
    page = demo_page.page
    results = {}
    try:
        labels = page.evaluate("window.qdDemo.labels()")
        assert set(SHAPES) <= set(labels), f"the test model must know {SHAPES}, it knows {labels}"
        for shape in SHAPES:
            if page.evaluate("window.qdDemo.strokeCount()"):
                page.click("#clear")
                page.wait_for_function(NO_GUESS_SHOWN, timeout=10_000)
            demo_page.stroke(shape_points(shape))
            snap = demo_page.snapshot()
            results[shape] = {
                "snapshot": snap,
                "shown": demo_page.shown_top3(),
                "bar": page.locator("#top3 .guess .fill").first.evaluate("e => e.style.width"),
                "screenshot": save_screenshot(page, f"{device_name}-{shape}"),
            }
        yield {
            "device_name": device_name, "device": device, "shapes": results,
            "pointer_type": page.evaluate("window.qdDemo.lastPointerType()"),
            "pad_box": page.locator("#pad").bounding_box(),
            "errors": list(demo_page.errors), "requests": list(demo_page.requests),
        }
    finally:
        demo_page.close()


@pytest.mark.parametrize("shape", SHAPES)
def test_drawn_shape_is_recognised_and_shown(drawn_shapes, shape):
    result = drawn_shapes["shapes"][shape]
    snap, shown = result["snapshot"], result["shown"]
    model_top3 = top3_of(snap["probabilities"], snap["labels"])
    assert [label for label, _ in shown] == model_top3  # the page shows exactly what the model said
    assert shape in model_top3, f"{drawn_shapes['device_name']} {shape}: top 3 {shown}"
    # The test model knows only a few classes, so top 3 alone would prove little: a clean shape must win.
    assert model_top3[0] == shape, f"{drawn_shapes['device_name']} {shape}: top 3 {shown}"
    bar = result["bar"]
    assert bar.endswith("%") and abs(float(bar[:-1]) - shown[0][1] * 100) < 0.01


def test_screenshots_are_saved(drawn_shapes):
    device = drawn_shapes["device"]
    for shape in SHAPES:
        path = drawn_shapes["shapes"][shape]["screenshot"]
        assert path.parent == SCREENSHOTS
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.width == device["viewport"]["width"] * device["device_scale_factor"]


def test_page_fits_the_device_uses_its_pointer_and_stays_local(drawn_shapes, demo_url):
    device = drawn_shapes["device"]
    box = drawn_shapes["pad_box"]
    assert box["x"] >= 0 and box["x"] + box["width"] <= device["viewport"]["width"]
    assert box["y"] + box["height"] <= device["viewport"]["height"]  # the pad is drawable without scrolling
    assert drawn_shapes["pointer_type"] == ("touch" if device.get("has_touch") else "mouse")
    assert drawn_shapes["errors"] == []
    origin = demo_url.rstrip("/")
    requests = drawn_shapes["requests"]
    assert requests and all(url.startswith(origin + "/") for url in requests), requests


def test_guesses_update_while_a_stroke_is_drawn_and_clear_resets(browser, demo_url):
    demo_page = DemoPage(browser, demo_url, DESKTOP)
    try:
        page = demo_page.page
        demo_page.stroke(shape_points("circle")[:16], finish=False)  # pen still down
        page.wait_for_function("() => document.querySelector('#top3 .guess').dataset.label !== ''", timeout=10_000)
        page.mouse.up()
        assert page.is_enabled("#clear") and page.is_enabled("#undo")
        page.click("#clear")
        page.wait_for_function(NO_GUESS_SHOWN, timeout=10_000)
        assert page.evaluate("window.qdDemo.strokeCount()") == 0
        assert page.is_disabled("#clear")
        assert page.evaluate("window.qdDemo.snapshot()")["empty"] is True
    finally:
        demo_page.close()


def qd_infer_json(model: Path, pngs: list[Path]) -> dict[str, dict]:
    """Run the real `qd-infer --json` on image files: {file name: its JSON record, every class in "top"}."""
    num_classes = len(json.loads(ort.InferenceSession(str(model)).get_modelmeta().custom_metadata_map["qd.labels"]))
    result = subprocess.run([sys.executable, "-m", "qd.infer.cli", "--json", "--top", str(num_classes),
                             "--model", str(model), *map(str, pngs)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return {Path(row["input"]).name: row for row in rows}


def qd_infer_probabilities(model: Path, pngs: list[Path]) -> dict[str, dict[str, float]]:
    """{file name: {label: probability}} from `qd-infer --json`."""
    return {name: {item["label"]: item["probability"] for item in row["top"]}
            for name, row in qd_infer_json(model, pngs).items()}


def test_browser_and_qd_infer_agree_on_the_same_drawings(drawn_shapes, browser, demo_url, demo_model, tmp_path):
    snapshots = {shape: drawn_shapes["shapes"][shape]["snapshot"] for shape in SHAPES}
    if drawn_shapes["device_name"] == "desktop":  # plus a multi-stroke scribble that no class fits well
        demo_page = DemoPage(browser, demo_url, DESKTOP)
        try:
            rng = np.random.default_rng(7)
            for _ in range(3):
                demo_page.stroke([tuple(p) for p in 0.1 + 0.8 * rng.random((6, 2))])
            snapshots["scribble"] = demo_page.snapshot()
        finally:
            demo_page.close()
    pngs = []
    for name, snap in snapshots.items():
        png = tmp_path / f"{name}.png"
        png.write_bytes(base64.b64decode(snap["png"].split(",", 1)[1]))
        pngs.append(png)
    records = qd_infer_json(demo_model.with_name("model.onnx"), pngs)
    for name, snap in snapshots.items():
        record = records[f"{name}.png"]
        browser_probs = np.asarray(snap["probabilities"])
        python_probs = np.asarray([{i["label"]: i["probability"] for i in record["top"]}[label] for label in snap["labels"]])
        assert int(np.argmax(browser_probs)) == int(np.argmax(python_probs)), name
        gap = float(np.abs(browser_probs - python_probs).max())
        assert gap < 1e-3, (name, gap)
        assert snap["unknown"] is record["unknown"], name  # the same open-set answer as qd-infer
    if "scribble" in snapshots:  # a model trained with qd-train's defaults is not sure of a scribble
        assert snapshots["scribble"]["unknown"] is True


def test_page_asks_with_the_closest_classes_when_the_rule_says_unknown(browser, demo_model, tmp_path):
    """A copy of the export whose threshold no drawing reaches: the page asks instead of guessing,
    still listing the closest classes, as qd-infer marks the same PNG unknown."""
    import onnx

    for name in ("model.onnx", "model.canvas.onnx"):
        model = onnx.load(str(demo_model.with_name(name)))
        for prop in model.metadata_props:
            if prop.key == "qd.open_set":
                rule = json.loads(prop.value)
                rule["threshold"] = 1e9
                prop.value = json.dumps(rule)
        onnx.save(model, str(tmp_path / name))
    strict = tmp_path / "model.onnx"
    server, _ = demo.make_server(tmp_path, port=0)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    demo_page = DemoPage(browser, demo.server_url(server), DESKTOP)
    try:
        page = demo_page.page
        assert "says when it is not sure" in page.inner_text("#model-info")
        demo_page.stroke(shape_points("circle"))
        snap = demo_page.snapshot()
        page.wait_for_function("() => document.body.classList.contains('unknown')", timeout=10_000)
        assert snap["unknown"] is True
        assert page.inner_text("#guesses-title") == "Not sure — is it one of these?"
        shown = demo_page.shown_top3()
        assert [label for label, _ in shown] == top3_of(snap["probabilities"], snap["labels"])
        assert "does not look much like any" in page.inner_text("#status")
        save_screenshot(page, "desktop-not-sure")
        png = tmp_path / "circle.png"
        png.write_bytes(base64.b64decode(snap["png"].split(",", 1)[1]))
        assert qd_infer_json(strict, [png])["circle.png"]["unknown"] is True
        page.click("#clear")
        page.wait_for_function(NO_GUESS_SHOWN, timeout=10_000)
        assert page.inner_text("#guesses-title") == "Top guesses"
        assert demo_page.errors == []
    finally:
        demo_page.close()
        server.shutdown()
        server.server_close()
