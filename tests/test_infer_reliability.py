"""qd-infer's inputs when they are hostile: each ends in a result or one clear error line, never a
traceback, hang or memory blow-up; odd paths; two qd-infer processes at once."""

import io
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from images_synth import bitmap_as_paper, png_header_only
from qd.data.bitmaps import open_bitmaps
from qd.data.images import ImageError, load_image_bitmap
from qd.data.strokes import parse_ndjson_line, render_strokes
from qd.infer.inputs import Drawings, Failure, read_inputs

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def one_result(path):
    """Everything qd-infer does with one file: a list of bitmaps, or failure lines; nothing else."""
    bitmaps, failures = [], []
    for event in read_inputs([path]):
        if isinstance(event, Drawings):
            assert event.bitmaps.dtype == np.uint8 and event.bitmaps.shape[1] == 784
            bitmaps.append(event.bitmaps)
        else:
            assert isinstance(event, Failure)
            assert "\n" not in event.message and event.message.startswith(str(path))
            failures.append(event.message)
    return bitmaps, failures


@pytest.fixture(scope="module")
def good_png(shared_bitmaps):
    buf = io.BytesIO()
    bitmap_as_paper(np.asarray(open_bitmaps(shared_bitmaps / "cat.npy")[0]), 96).save(buf, "PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------- images

@SETTINGS
@given(data=st.data())
def test_corrupted_images_give_a_result_or_one_line(tmp_path, good_png, data):
    kind = data.draw(st.sampled_from(["truncate", "flip", "random", "splice"]))
    body = bytearray(good_png)
    if kind == "truncate":
        body = body[: data.draw(st.integers(0, len(body)))]
    elif kind == "flip":
        for _ in range(data.draw(st.integers(1, 20))):
            body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    elif kind == "random":
        body = bytearray(data.draw(st.binary(max_size=2000)))
    else:
        body = body[:33] + bytearray(data.draw(st.binary(max_size=500)))
    suffix = data.draw(st.sampled_from([".png", ".jpg", ".gif", ".bmp", ".webp"]))
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(bytes(body))
    bitmaps, failures = one_result(path)
    assert len(bitmaps) + len(failures) == 1


@pytest.mark.parametrize("width,height", [(30000, 30000), (100000, 1), (1, 100000000), (0, 10)])
def test_header_only_giants_and_zero_size_are_refused_before_decoding(tmp_path, width, height):
    path = tmp_path / "giant.png"
    path.write_bytes(png_header_only(width, height))
    bitmaps, failures = one_result(path)
    assert bitmaps == [] and len(failures) == 1
    assert "refused" in failures[0] or "zero size" in failures[0] or "cannot" in failures[0] or \
        "not a recognised" in failures[0]


def test_image_modes_all_work(tmp_path, good_png):
    base = Image.open(io.BytesIO(good_png)).convert("L")
    reference = load_image_bitmap(_save(tmp_path / "ref.png", base))
    variants = {
        "cmyk.jpg": base.convert("CMYK"),
        "sixteen.png": Image.fromarray(np.asarray(base).astype(np.uint16) * 257),
        "palette.png": base.convert("P"),
        "rgba.webp": base.convert("RGBA"),
        "one-bit.bmp": base.convert("1", dither=Image.Dither.NONE),
    }
    for name, image in variants.items():
        got = load_image_bitmap(_save(tmp_path / name, image))
        assert np.corrcoef(got.ravel(), reference.ravel())[0, 1] > 0.9, name
    # palette with a transparent background index, and an animated GIF (first frame is used)
    p = base.convert("P")
    p.save(tmp_path / "ptrans.png", transparency=int(np.asarray(p)[0, 0]))
    assert np.corrcoef(load_image_bitmap(tmp_path / "ptrans.png").ravel(), reference.ravel())[0, 1] > 0.9
    base.save(tmp_path / "anim.gif", save_all=True, append_images=[Image.new("L", base.size, 0)] * 3)
    assert np.corrcoef(load_image_bitmap(tmp_path / "anim.gif").ravel(), reference.ravel())[0, 1] > 0.9
    one = tmp_path / "one.png"
    Image.new("L", (1, 1), 0).save(one)
    with pytest.raises(ImageError, match="no drawing found"):
        load_image_bitmap(one)


def _save(path, image):
    image.save(path)
    return path


# ----------------------------------------------------------------------------- .npy

def _npy_bytes(header: dict | str, body: bytes, version=(1, 0)) -> bytes:
    text = header if isinstance(header, str) else repr(header)
    text = text + " " * ((64 - (10 + len(text) + 1) % 64) % 64) + "\n"
    head = text.encode("latin1", "replace")
    size = struct.pack("<H", len(head)) if version == (1, 0) else struct.pack("<I", len(head))
    return b"\x93NUMPY" + bytes(version) + size + head + body


HEADER_SHAPES = st.one_of(
    st.tuples(), st.tuples(st.integers(0, 10)), st.tuples(st.integers(0, 10), st.sampled_from([784, 28, 100])),
    st.tuples(st.integers(0, 5), st.sampled_from([28, 27]), st.sampled_from([28, 29])),
    st.just((2**62, 784)), st.just((-1, 784)),
)


@SETTINGS
@given(shape=HEADER_SHAPES, descr=st.sampled_from(["|u1", "<f4", "<f8", ">f4", "<i4", "|O", "|b1", "<U3", "V8",
                                                    "<f2"]),
       fortran=st.booleans(), extra=st.integers(-50, 50), seed=st.integers(0, 2**16),
       version=st.sampled_from([(1, 0), (2, 0), (3, 0), (9, 9)]))
def test_adversarial_npy_headers_and_bodies(tmp_path, shape, descr, fortran, extra, seed, version):
    rng = np.random.default_rng(seed)
    try:
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(descr).itemsize
    except (TypeError, ValueError, OverflowError):
        n = 100
    n = max(0, min(n, 200_000) + extra)
    body = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    path = tmp_path / "adv.npy"
    path.write_bytes(_npy_bytes({"descr": descr, "fortran_order": fortran, "shape": shape}, body, version))
    bitmaps, failures = one_result(path)
    assert len(failures) == 1 or (bitmaps and not failures)


@SETTINGS
@given(header=st.text(max_size=200))
def test_garbage_npy_header_text(tmp_path, header):
    path = tmp_path / "garbage.npy"
    path.write_bytes(_npy_bytes(header, b"\x00" * 784))
    bitmaps, failures = one_result(path)
    assert bitmaps == [] and len(failures) == 1


def test_pickle_npy_code_does_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.npy"
    np.save(path, np.array([Evil()], dtype=object), allow_pickle=True)
    _, failures = one_result(path)
    assert len(failures) == 1 and "pickle" in failures[0] and not marker.exists()


# ----------------------------------------------------------------------------- .ndjson

JSONISH = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=5),
                       lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5),
                                                                                         children, max_size=4),
                       max_leaves=30)


@SETTINGS
@given(drawing=JSONISH, raw=st.binary(max_size=200), use_raw=st.booleans())
def test_adversarial_ndjson_lines(tmp_path, drawing, raw, use_raw):
    line = raw if use_raw else json.dumps({"word": "cat", "drawing": drawing}).encode()
    path = tmp_path / "adv.ndjson"
    path.write_bytes(line.replace(b"\n", b" ") + b"\n")
    try:
        word, strokes = parse_ndjson_line(line.replace(b"\n", b" "))
        render_strokes(strokes)
    except ValueError as exc:
        assert "\n" not in str(exc)
    bitmaps, failures = one_result(path)
    assert len(bitmaps) + len(failures) >= 1


@SETTINGS
@given(strokes=st.lists(st.integers(1, 20).flatmap(
    lambda n: st.tuples(st.lists(st.floats(0, 255), min_size=n, max_size=n),
                        st.lists(st.floats(0, 255), min_size=n, max_size=n))), max_size=8))
def test_any_valid_drawing_renders(strokes):
    bitmap = render_strokes([[list(x), list(y)] for x, y in strokes])
    assert bitmap.shape == (28, 28) and bitmap.dtype == np.uint8
    assert (bitmap.max() > 0) == bool(strokes)


# ----------------------------------------------------------------------------- paths

def test_very_deep_folder_unicode_and_bad_utf8_names(tmp_path, good_png):
    deep = tmp_path / "deep"
    path = deep
    for i in range(60):
        path = path / f"level {i} ✏️"
    path.mkdir(parents=True)
    (path / "猫 drawing.png").write_bytes(good_png)
    bad_name = os.fsencode(str(tmp_path / "deep")) + b"/bad-\xff\xfe.png"
    with open(bad_name, "wb") as f:
        f.write(good_png)
    bitmaps, failures = [], []
    for event in read_inputs([deep]):
        (bitmaps if isinstance(event, Drawings) else failures).append(event)
    assert failures == [] and sum(len(d.names) for d in bitmaps) == 2


def test_printable_names_never_crash_output(capsys):
    from qd.infer.run import JsonLinesWriter, printable

    assert printable("bad-\udcff.png") == "bad-\\xff.png"
    writer = JsonLinesWriter(["a", "b"], 1)
    writer.rows(["bad-\udcff.png"], np.array([[1]]), np.array([[0.5]]))
    assert json.loads(capsys.readouterr().out)["input"] == "bad-\\xff.png"


# ----------------------------------------------------------------------------- concurrency

def test_two_qd_infer_processes_at_once(exported_model, tmp_path, shared_bitmaps):
    rows = np.asarray(open_bitmaps(shared_bitmaps / "star.npy")[:600])
    np.save(tmp_path / "rows.npy", rows)
    for i in range(20):
        bitmap_as_paper(rows[i], 200).save(tmp_path / f"{i}.png")
    command = [sys.executable, "-m", "qd.infer.cli", str(tmp_path), "--model", str(exported_model), "--csv"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][1]
    assert outs[0][0] == outs[1][0] and len(outs[0][0].splitlines()) == 1 + 600 + 20


def test_reading_while_a_new_model_is_atomically_replaced(exported_model, tmp_path, shared_bitmaps):
    """qd-export replaces model.onnx with os.replace; a reader sees the old or the new model, never half."""
    import shutil
    import threading

    from qd.infer.model import OnnxClassifier

    target = tmp_path / "model.onnx"
    shutil.copy(exported_model / "model.onnx", target)
    sources = [(exported_model / "model.onnx").read_bytes(), (exported_model / "model.int8.onnx").read_bytes()]
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            tmp = tmp_path / f".model.onnx.{i}.tmp"
            tmp.write_bytes(sources[i % 2])
            os.replace(tmp, target)
            i += 1

    rows = np.asarray(open_bitmaps(shared_bitmaps / "apple.npy")[:64])
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        precisions = set()
        for _ in range(15):
            classifier = OnnxClassifier(target)
            precisions.add(classifier.precision)
            assert classifier.predict(rows).probabilities.shape == (64, len(classifier.labels))
    finally:
        stop.set()
        thread.join()
    assert precisions <= {"fp32", "int8"}
