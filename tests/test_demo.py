"""qd-demo without a browser: the server, the CLI, and the page's JavaScript run under Node.

The JavaScript port of qd.data.images (infer/web/preprocess.js) is checked here against
the Python original on many kinds of image; tests/test_demo_browser.py then checks the
whole page in real Chromium.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageDraw

from images_synth import bitmap_as_paper, off_centre, photo_of_paper
from qd.data.bitmaps import open_bitmaps
from qd.data.errors import QDError
from qd.data import images
from qd.data.images import BlankImageError, image_to_bitmap
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
    for path, content_type in [("app.js", "text/javascript"), ("preprocess.js", "text/javascript"),
                               ("style.css", "text/css"), ("ort/ort.wasm.min.mjs", "text/javascript"),
                               ("ort/ort-wasm-simd-threaded.wasm", "application/wasm")]:
        status, headers, payload = fetch(url + path)
        assert status == 200 and headers["Content-Type"].startswith(content_type), path
        assert len(payload) > 0, path
    status, _, model_bytes = fetch(url + "model.onnx")
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
        shutil.copy(demo_model, folder / "model.onnx")
        os.utime(folder / "model.onnx", (1_700_000_000 + i * 100, 1_700_000_000 + i * 100))
    monkeypatch.setenv("QD_ARTIFACTS", str(tmp_path))
    assert demo.check_model(None).path == tmp_path / "exports" / "newer" / "model.onnx"
    assert demo.check_model(tmp_path / "exports" / "older").path == tmp_path / "exports" / "older" / "model.onnx"


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


@pytest.mark.parametrize("case", ["missing", "not-onnx", "foreign-onnx", "directory", "no-exports"])
def test_cli_refuses_bad_models_in_one_line(case, tmp_path, demo_model):
    args: list[str]
    if case == "missing":
        args, expected = ["--model", str(tmp_path / "nope.onnx")], "does not exist"
    elif case == "not-onnx":
        (tmp_path / "bad.onnx").write_bytes(b"<html>not a model</html>")
        args, expected = ["--model", str(tmp_path / "bad.onnx")], "not a loadable ONNX model"
    elif case == "foreign-onnx":
        import onnx

        model = onnx.load(str(demo_model))
        del model.metadata_props[:]
        onnx.save(model, str(tmp_path / "foreign.onnx"))
        args, expected = ["--model", str(tmp_path / "foreign.onnx")], "no qd.labels"
    elif case == "directory":
        args, expected = ["--model", str(tmp_path)], "does not exist"  # a folder without model.onnx
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


@needs_node
def test_javascript_uses_the_same_constants_as_python():
    constants = run_node("constants")
    for name, value in constants.items():
        assert getattr(images, name) == value, (
            f"qd.data.images.{name} is {getattr(images, name)!r} but infer/web/preprocess.js has {value!r}: "
            "port the change to the browser demo")


def canvas_like_drawings() -> list[Image.Image]:
    """Anti-aliased black-on-white strokes on an opaque RGBA canvas, as the page draws them."""
    images = []
    for seed, (w, h) in enumerate([(512, 512), (512, 512), (300, 200), (97, 311)]):
        rng = np.random.default_rng(seed)
        big = Image.new("RGBA", (w * 4, h * 4), "white")
        draw = ImageDraw.Draw(big)
        for _ in range(3):
            points = [tuple(p) for p in (rng.random((6, 2)) * [w * 4, h * 4]).tolist()]
            draw.line(points, fill="black", width=int(rng.integers(4, 60)), joint="curve")
        images.append(big.resize((w, h), Image.BOX))
    return images


def port_cases(shared_bitmaps) -> list[Image.Image]:
    rows = open_bitmaps(shared_bitmaps / "star.npy")[:3]
    paper = [bitmap_as_paper(row, 280) for row in rows]
    cases = canvas_like_drawings() + paper
    cases.append(off_centre(paper[0]))
    cases.append(photo_of_paper(paper[1], seed=3))  # uneven lighting, noise, JPEG
    transparent = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    ImageDraw.Draw(transparent).ellipse((40, 50, 160, 150), outline=(255, 255, 255, 255), width=6)
    cases.append(transparent)  # light ink on transparency: flattened onto black
    faint = Image.new("RGB", (256, 256), (200, 190, 180))
    ImageDraw.Draw(faint).rectangle((60, 80, 200, 180), outline=(150, 140, 130), width=3)
    cases.append(faint)  # faint pencil on tinted paper
    cases.append(Image.new("RGBA", (64, 64), "white"))  # blank
    return cases


@needs_node
def test_javascript_preprocessing_matches_python(tmp_path, shared_bitmaps):
    jobs, expected = [], []
    for i, image in enumerate(port_cases(shared_bitmaps)):
        rgba = image.convert("RGBA")
        raw = tmp_path / f"{i}.rgba"
        raw.write_bytes(np.asarray(rgba, dtype=np.uint8).tobytes())
        jobs.append({"rgba": str(raw), "width": rgba.width, "height": rgba.height})
        try:  # the page sees canvas RGBA pixels, qd-infer the decoded file: same result wanted
            expected.append(image_to_bitmap(image))
        except BlankImageError:
            expected.append(None)
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    started = time.perf_counter()
    got = run_node("preprocess", str(tmp_path / "jobs.json"))
    assert time.perf_counter() - started < 30
    assert expected[-1] is None and got[-1] is None, "a blank pad must not be classified"
    total_off = 0
    for i, (js, py) in enumerate(zip(got, expected)):
        assert (js is None) == (py is None), i
        if py is None:
            continue
        diff = np.abs(np.asarray(js, dtype=np.int64).reshape(28, 28) - py.astype(np.int64))
        assert diff.max() <= 1, (i, int(diff.max()))  # the float64 area average may round one level apart
        total_off += int((diff > 0).sum())
    assert total_off <= 5, f"{total_off} pixels differ by one grey level"


@needs_node
def test_javascript_open_set_rule_matches_python(tmp_path):
    """openset.js scores, decides and refuses as qd.infer.openset does, rule by rule."""
    from qd.infer.openset import OPEN_SET_KEY, SCORES, OpenSetRule, parse_open_set, softmax

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
