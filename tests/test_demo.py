"""qd-demo without a browser: the server, the CLI, and the page's JavaScript run under Node.

The page runs the export's canvas model (model.canvas.onnx: the preprocessing is inside
its graph); here its answers on drawings like the page's are checked against qd-infer's,
and the page's JavaScript (metadata reader, open-set rule) against the Python original;
tests/test_demo_browser.py then checks the whole page in real Chromium.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageDraw

from qd.command import QDError
from qd.data.images import image_to_bitmap
from qd.infer import demo

REPO = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).with_name("demo_port_runner.mjs")
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="Node.js is not installed (the demo's set-up needs it: see readme-demo)")


def fetch(url: str, method: str = "GET"):
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), b""


# ----------------------------------------------------------------------------- server

def test_server_serves_page_runtime_and_model_with_strict_headers(live_server, demo_model):
    url, info = live_server
    assert url.startswith("http://127.0.0.1:")
    status, headers, body = fetch(url)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    for path, content_type in [("app.js", "text/javascript"), ("openset.js", "text/javascript"),
                               ("style.css", "text/css"), ("ort/ort.wasm.min.mjs", "text/javascript"),
                               ("ort/ort-wasm-simd-threaded.wasm", "application/wasm")]:
        status, headers, payload = fetch(url + path)
        assert status == 200 and headers["Content-Type"].startswith(content_type), path
        assert len(payload) > 0, path
    assert fetch(url + "model.onnx")[0] == 404  # the page runs the canvas model only
    status, _, model_bytes = fetch(url + "model.canvas.onnx")
    assert status == 200 and model_bytes == demo_model.read_bytes()
    status, headers, body = fetch(url + "index.html", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    assert info.labels == json.loads(ort.InferenceSession(str(demo_model)).get_modelmeta().custom_metadata_map["qd.labels"])


@pytest.mark.parametrize("path", ["../pyproject.toml", "%2e%2e/pyproject.toml", "demo.py", "web/app.js",
                                  "node_modules/onnxruntime-web/package.json", "ort/ort.all.js", "package.json",
                                  "ort/../../demo.py"])
def test_server_serves_nothing_outside_its_file_list(live_server, path):
    url, _ = live_server
    status, _, _ = fetch(url + path)
    assert status == 404


def test_page_references_only_local_files():
    html = (demo.WEB_DIR / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all(not re.match(r"^[a-z]+:|^//", ref) for ref in refs), refs
    for source in demo.WEB_DIR.glob("*.js"):
        imports = re.findall(r'from\s+"([^"]+)"', source.read_text())
        assert all(ref.startswith("./") for ref in imports), (source.name, imports)


def test_every_page_file_exists_and_is_listed_as_package_data():
    for name in demo.PAGE_FILES:
        assert (demo.WEB_DIR / name).is_file(), name
    pyproject = (REPO / "pyproject.toml").read_text()
    for pattern in ("web/*.html", "web/*.js", "web/*.css", "web/*.svg"):
        assert f'"{pattern}"' in pyproject


def test_missing_onnxruntime_web_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("QD_ORT_WEB_DIST", str(tmp_path))
    with pytest.raises(QDError, match=r"not onnxruntime-web's dist folder \(missing ort.wasm.min.mjs\); point "
                                      r"--ort-web-dist \(\$QD_ORT_WEB_DIST\)"):
        demo.ort_dist_dir()
    monkeypatch.delenv("QD_ORT_WEB_DIST")
    monkeypatch.setattr(demo, "PACKAGED_ORT_DIST", tmp_path / "none")
    with pytest.raises(QDError, match="npm ci"):
        demo.ort_dist_dir()


def test_default_model_is_the_newest_export_and_a_folder_is_accepted(tmp_path, monkeypatch, demo_model):
    for i, run in enumerate(["older", "newer"]):
        folder = tmp_path / "exports" / run
        folder.mkdir(parents=True)
        for name in ("model.onnx", "model.canvas.onnx"):
            shutil.copy(demo_model.with_name(name), folder / name)
        os.utime(folder / "model.onnx", (1_700_000_000 + i * 100, 1_700_000_000 + i * 100))
    monkeypatch.setenv("QD_ARTIFACTS", str(tmp_path))
    assert demo.check_model(None).path == tmp_path / "exports" / "newer" / "model.canvas.onnx"
    older = tmp_path / "exports" / "older"
    assert demo.check_model(older).path == older / "model.canvas.onnx"
    assert demo.check_model(older / "model.onnx").path == older / "model.canvas.onnx"


# ----------------------------------------------------------------------------- CLI

def run_cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qd.infer.demo", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "QD_ARTIFACTS": str(cwd / "artifacts")})


def test_cli_prints_where_to_open_the_demo_and_serves_it(demo_model, tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "qd.infer.demo", "--model", str(demo_model), "--port", "0"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "COLUMNS": "200"})
    try:
        lines = [process.stdout.readline() for _ in range(2)]
        match = re.search(r"open (http://127\.0\.0\.1:\d+/) in your browser", lines[1])
        assert match, lines
        assert f"model {demo_model}" in lines[0] and "classes" in lines[0]
        status, _, body = fetch(match.group(1))
        assert status == 200 and b'id="pad"' in body
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.parametrize("case", ["missing", "not-onnx", "foreign-onnx", "not-canvas", "no-canvas", "directory",
                                  "no-exports"])
def test_cli_refuses_bad_models_in_one_line(case, tmp_path, demo_model):
    args: list[str]
    if case == "missing":
        args, expected = ["--model", str(tmp_path / "nope.onnx")], "does not exist"
    elif case == "not-onnx":
        (tmp_path / "model.canvas.onnx").write_bytes(b"<html>not a model</html>")
        args, expected = ["--model", str(tmp_path / "model.canvas.onnx")], "not a loadable ONNX model"
    elif case == "foreign-onnx":
        import onnx

        model = onnx.load(str(demo_model))
        del model.metadata_props[:]
        onnx.save(model, str(tmp_path / "model.canvas.onnx"))
        args, expected = ["--model", str(tmp_path / "model.canvas.onnx")], "no qd.labels"
    elif case == "not-canvas":  # a classifier saved under the canvas model's name
        shutil.copy(demo_model.with_name("model.onnx"), tmp_path / "model.canvas.onnx")
        args, expected = ["--model", str(tmp_path)], "not a canvas model"
    elif case == "no-canvas":  # an export without the onnx-canvas format
        shutil.copy(demo_model.with_name("model.onnx"), tmp_path / "model.onnx")
        args, expected = ["--model", str(tmp_path)], "no model.canvas.onnx in this export"
    elif case == "directory":
        args, expected = ["--model", str(tmp_path)], "no model.canvas.onnx in this export"  # an empty folder
    else:
        args, expected = [], "no exported model found"
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_cli_refuses_a_port_in_use(demo_model, tmp_path, live_server):
    port = live_server[0].rsplit(":", 1)[1].rstrip("/")
    result = run_cli("--model", str(demo_model), "--port", port, cwd=tmp_path)
    assert result.returncode == 1 and "cannot listen" in result.stderr and "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- the JavaScript, under Node

def run_node(*args: str) -> object:
    result = subprocess.run([NODE, str(RUNNER), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@needs_node
def test_javascript_reads_the_same_metadata_as_onnxruntime(demo_model):
    expected = ort.InferenceSession(str(demo_model)).get_modelmeta().custom_metadata_map
    assert run_node("metadata", str(demo_model)) == dict(expected)


def canvas_like_drawings() -> list[Image.Image]:
    """Anti-aliased black-on-white strokes on an opaque RGBA canvas, as the page draws them."""
    drawings = []
    for seed, (w, h) in enumerate([(512, 512), (512, 512), (300, 200), (97, 311)]):
        rng = np.random.default_rng(seed)
        big = Image.new("RGBA", (w * 4, h * 4), "white")
        draw = ImageDraw.Draw(big)
        for _ in range(3):
            points = [tuple(p) for p in (rng.random((6, 2)) * [w * 4, h * 4]).tolist()]
            draw.line(points, fill="black", width=int(rng.integers(4, 60)), joint="curve")
        drawings.append(big.resize((w, h), Image.BOX))
    return drawings


def page_grey(image: Image.Image) -> np.ndarray:
    """The grey levels app.js feeds the canvas model: luma of the RGBA pad, flattened onto white."""
    rgba = np.asarray(image.convert("RGBA"), dtype=np.int64)
    luma = 299 * rgba[..., 0] + 587 * rgba[..., 1] + 114 * rgba[..., 2]
    alpha = rgba[..., 3]
    return ((luma * alpha + 255000 * (255 - alpha) + 127500) // 255000).astype(np.float32)


def test_canvas_model_sees_page_drawings_as_qd_infer_does(demo_model):
    """What the page computes (the canvas model on the pad's grey levels) against qd-infer on the same
    pixels (qd.data.images + model.onnx): the same bitmap within one grey level, the same top-1, and a
    blank pad answered as blank, never classified."""
    from qd.infer.model import CanvasModel, OnnxClassifier

    canvas_model = CanvasModel(demo_model)
    classifier = OnnxClassifier(demo_model.with_name("model.onnx"))
    for i, image in enumerate(canvas_like_drawings()):
        answer = canvas_model.classify(page_grey(image), f"drawing {i}")
        bitmap = image_to_bitmap(image)
        assert np.abs(answer.bitmap.astype(np.int64) - bitmap).max() <= 1, i
        expected = classifier.predict(bitmap[None]).probabilities
        assert int(answer.probabilities.argmax()) == int(expected.argmax()), i
        assert np.abs(answer.probabilities - expected[0]).max() < 1e-3, i
    blank = canvas_model.classify(page_grey(Image.new("RGBA", (512, 512), "white")))
    assert blank.blank and not blank.probabilities.any() and not np.isnan(blank.probabilities).any()


@needs_node
def test_javascript_open_set_rule_matches_python(tmp_path):
    """openset.js scores, decides and refuses as qd.infer.model does, rule by rule."""
    from qd.data.contract import META_OPEN_SET as OPEN_SET_KEY
    from qd.infer.model import SCORES, OpenSetRule, parse_open_set, softmax

    rng = np.random.default_rng(0)
    cases, expected = [], []
    for rule in SCORES:
        for _ in range(6):
            logits = (rng.normal(0, 3, size=7)).astype(np.float32)
            outputs = {"logits": logits.tolist(), "probabilities": softmax(logits[None], 1.3)[0].tolist()}
            threshold = float(SCORES[rule](np.asarray([outputs[SCORES[rule].output]]))[0] + rng.normal(0, 0.5))
            record = OpenSetRule(rule, threshold)
            cases.append({"metadata": {OPEN_SET_KEY: record.to_json()}, "outputs": outputs})
            py = {name: np.asarray([v], dtype=np.float32) for name, v in outputs.items()}
            expected.append((rule, float(record.scores(py)[0]), bool(record.unknown(py)[0])))
    malformed = ['{"rule": "max_logit", "threshold": NaN}', '{"rule": "telepathy", "threshold": 1}', "[", "[]"]
    for raw in malformed:
        cases.append({"metadata": {OPEN_SET_KEY: raw}, "outputs": {}})
    cases.append({"metadata": {}, "outputs": {}})
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    got = run_node("openset", str(tmp_path / "cases.json"))
    for (rule, score, unknown), js in zip(expected, got):
        assert js["rule"] == rule and js["score"] == pytest.approx(score, rel=1e-5, abs=1e-5)
        assert js["unknown"] == unknown  # thresholds sit far (~0.5) from the scores, beyond rounding
    for raw, js in zip(malformed, got[len(expected):]):
        with pytest.raises(QDError):
            parse_open_set(Path("model.onnx"), {OPEN_SET_KEY: raw})
        assert "model metadata qd.open_set" in js["error"]
    assert got[-1] == {"rule": None, "unknown": False}
