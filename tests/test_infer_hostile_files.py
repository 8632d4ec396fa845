"""Hostile files qd-infer reads (and qd-eval, through it): each is one line, and the other inputs go on.

- Only the decoder the suffix names runs: content of any other image format, under any
  accepted suffix, is refused with one line saying what it is; no other Pillow plugin is
  even asked (PostScript never reaches Ghostscript).
- Only regular files are read: FIFOs, character devices, sockets and folders behind any
  input suffix, alone or inside a folder, are refused with one line, quickly; the same for
  checkpoints, models and model cards.
- Sizes declared by headers are checked before anything is allocated: .npy shapes
  (bools, huge or negative dimensions), Fortran order read without a whole copy, image
  pixel counts, and decoded images reduced to WORK_PIXELS; memory is measured.
- Anything unexpected while reading one input is one line, and the next input goes on.
"""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from images_synth import correlation, png_header_only
from memory_probe import peak_rss_mib
from qd.command import QDError
from qd.data import images
from qd.data.contract import MAX_PIXELS, WORK_PIXELS
from qd.infer.inputs import Drawings, Failure, read_inputs

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ACCEPTED = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".gif": "GIF", ".webp": "WEBP"}


def drawing(size=(96, 96), mode="L") -> Image.Image:
    image = Image.new("L", size, 255)
    ImageDraw.Draw(image).ellipse((size[0] * 0.2, size[1] * 0.2, size[0] * 0.8, size[1] * 0.8), outline=0,
                                  width=max(2, size[0] // 30))
    return image.convert(mode)


def events_of(path, timeout: float = 20.0, **kwargs) -> list:
    """read_inputs over one path, in a thread: a hang fails the test instead of blocking it."""
    out: list = []
    thread = threading.Thread(target=lambda: out.extend(read_inputs([path], **kwargs)), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"reading {path} did not finish in {timeout} s (it hangs)"
    return out


def one_failure(events: list) -> str:
    failures = [e.message for e in events if isinstance(e, Failure)]
    assert len(failures) == 1 and not any(isinstance(e, Drawings) for e in events), events
    assert "\n" not in failures[0]
    return failures[0]


# ----------------------------------------------------------------------------- the file-type gate

def _encode(fmt: str) -> bytes | None:
    """A small drawing saved by Pillow's writer for `fmt`, or None where Pillow cannot write it here."""
    image = drawing()
    if fmt in ("XBM", "MSP", "PALM"):
        image = image.convert("1")
    elif fmt in ("BLP", "DDS", "ICNS", "WEBP", "AVIF", "JPEG2000"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow deprecates writing some of them (IM)
            image.save(buf, fmt)
    except Exception:
        return None
    return buf.getvalue()


Image.init()
WRITABLE = sorted(fmt for fmt in Image.SAVE if _encode(fmt) is not None)


@SETTINGS
@given(fmt=st.sampled_from(WRITABLE), suffix=st.sampled_from(sorted(ACCEPTED)))
def test_only_the_format_the_suffix_names_is_decoded(tmp_path, monkeypatch, fmt, suffix):
    asked = []
    path = tmp_path / f"drawing{suffix}"
    path.write_bytes(_encode(fmt))
    same = {"MPO": "JPEG"}.get(fmt, fmt) == ACCEPTED[suffix]
    with monkeypatch.context() as patch:
        for name, (factory, accept) in list(Image.OPEN.items()):
            if name != ACCEPTED[suffix]:  # every other plugin records it if it is ever consulted
                def spy(*args, _name=name, _accept=accept, **kwargs):
                    asked.append(_name)
                    return _accept(*args, **kwargs) if _accept else True
                patch.setitem(Image.OPEN, name, (factory, spy))
        if same:
            assert images.load_image_bitmap(path).max() > 0
        else:
            with pytest.raises(images.ImageError) as refused:
                images.load_image_bitmap(path)
            message = str(refused.value)
            assert message.startswith(f"{path}: ") and "\n" not in message
            assert "refused" in message or "not a recognised image file" in message
    assert asked == []


def test_postscript_named_png_never_reaches_ghostscript(tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    ran = []
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: ran.append(a) or Image.new("L", (1, 1)))
    monkeypatch.setattr(subprocess, "check_call", lambda *a, **k: ran.append(a))
    path = tmp_path / "x.png"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nnewpath 10 10 moveto 90 90 lineto stroke\n"
                     b"showpage\n%%EOF\n")
    failure = one_failure(events_of(path))
    assert failure == (f"{path}: content is PostScript, not PNG as the name .png says; refused "
                       "(only BMP, GIF, JPEG, PNG, WEBP are decoded)")
    assert ran == []


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".png"), ("PNG", ".jpg"), ("GIF", ".webp"), ("BMP", ".gif")])
def test_an_accepted_format_under_another_suffix_says_how_to_fix_it(tmp_path, fmt, suffix):
    path = tmp_path / f"x{suffix}"
    path.write_bytes(_encode(fmt))
    better = next(s for s, name in ACCEPTED.items() if name == fmt)
    assert one_failure(events_of(path)).endswith(f"refused (rename it to {better})")


def test_a_multi_page_tiff_named_png_is_refused_unread(tmp_path):
    pages = [drawing() for _ in range(50)]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:])
    (tmp_path / "many.png").write_bytes(buf.getvalue())
    assert "content is TIFF, not PNG" in one_failure(events_of(tmp_path / "many.png"))


# ----------------------------------------------------------------------------- regular files only

def _special(kind: str, path: Path) -> object:
    """Make `path` a FIFO, a link to a device, a socket or a folder; returns what must stay alive."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind in ("/dev/zero", "/dev/urandom", "/dev/null"):
        os.symlink(kind, path)
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        return server
    else:
        path.mkdir()
    return None


SPECIAL = st.sampled_from(["fifo", "/dev/zero", "/dev/urandom", "/dev/null", "socket"])
SUFFIXES = st.sampled_from([".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".npy", ".ndjson"])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=SPECIAL, suffix=SUFFIXES, in_folder=st.booleans(), data=st.data())
def test_special_files_are_refused_quickly_alone_or_in_a_folder(tmp_path_factory, kind, suffix, in_folder, data):
    root = tmp_path_factory.mktemp("special")
    path = root / f"special{suffix}"
    keep = _special(kind, path)
    try:
        if in_folder:
            drawing().save(root / "good.png")
            events = events_of(root)
            failures = [e.message for e in events if isinstance(e, Failure)]
            assert sum(len(e.names) for e in events if isinstance(e, Drawings)) == 1
        else:
            failures = [one_failure(events_of(path))]
        assert len(failures) == 1 and failures[0].startswith(f"{path}: is ")
        assert failures[0].endswith("not a regular file; refused")
    finally:
        if keep is not None:
            keep.close()


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "/dev/urandom"])
def test_special_checkpoints_models_and_cards_are_refused(tmp_path, kind):
    from qd.evaluate.backends import read_card
    from qd.infer.model import OnnxClassifier
    from qd.train.checkpoint import load_checkpoint

    for name, load in (("best.pt", load_checkpoint), ("model.onnx", OnnxClassifier), ("model.json", read_card)):
        path = tmp_path / name
        _special(kind, path)
        done: list = []

        def attempt():
            try:
                load(path)
            except QDError as exc:
                done.append(str(exc))

        thread = threading.Thread(target=attempt, daemon=True)
        thread.start()
        thread.join(20)
        assert not thread.is_alive(), f"{name} as {kind} hangs"
        assert len(done) == 1 and done[0].startswith(f"{path}: is ") and "not a regular file" in done[0]
        path.unlink()


def test_an_ndjson_file_is_read_only_up_to_its_size_when_opened(tmp_path, shared_strokes):
    from qd.data.strokes import iter_ndjson

    path = tmp_path / "growing.ndjson"
    lines = (shared_strokes / "cat.ndjson").read_bytes().splitlines(keepends=True)[:3]
    path.write_bytes(b"".join(lines))
    seen = []
    with open(path, "ab") as appender:
        for number, _, bitmap, error in iter_ndjson(path):
            seen.append(number)
            appender.write(lines[0])  # a writer keeps appending while we read: we still stop
            appender.flush()
    assert seen == [1, 2, 3]


# ----------------------------------------------------------------------------- sizes declared by headers

def _npy(header: str, body: bytes = b"") -> bytes:
    text = header + " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1") + body


DIMS = st.one_of(st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.just(None),
                 st.text(st.characters(max_codepoint=255), max_size=3), st.tuples(st.integers(0, 3)))


@SETTINGS
@given(dims=st.lists(DIMS, min_size=1, max_size=3), fortran=st.booleans(), descr=st.sampled_from(["|u1", "<f4"]))
def test_npy_shapes_that_are_not_sizes_are_one_line(tmp_path, dims, fortran, descr):
    shape = tuple(dims)
    if all(type(d) is int and 0 <= d <= 3 for d in shape):
        shape = shape + (True,)  # keep the example hostile: a bool in the shape
    path = tmp_path / "hostile.npy"
    path.write_bytes(_npy(repr({"descr": descr, "fortran_order": fortran, "shape": shape}), b"\x00" * 784))
    assert one_failure(events_of(path)).startswith(f"{path}: ")


def test_a_shape_of_true_784_is_one_line(tmp_path):
    path = tmp_path / "bool.npy"
    path.write_bytes(_npy("{'descr': '|u1', 'fortran_order': False, 'shape': (True, 784), }", b"\x00" * 784))
    assert one_failure(events_of(path)) == f"{path}: corrupt .npy header (shape (True, 784))"


@SETTINGS
@given(rows=st.integers(1, 70), shape=st.sampled_from(["flat", "square", "one", "bare"]),
       dtype=st.sampled_from(["uint8", "float32", ">f8", "float16"]), chunk=st.integers(1, 32))
def test_fortran_order_arrays_read_exactly_in_chunks(tmp_path, rows, shape, dtype, chunk):
    rng = np.random.default_rng(rows)
    data = rng.integers(0, 256, (rows, 784)).astype(np.uint8)
    values = data if dtype == "uint8" else (data / 255.0).astype(dtype)
    array = {"flat": values, "square": values.reshape(rows, 28, 28), "one": values[:1].reshape(28, 28),
             "bare": values[:1].reshape(784)}[shape]
    path = tmp_path / "fortran.npy"
    np.save(path, np.asfortranarray(array))
    got = np.concatenate([e.bitmaps for e in events_of(path, chunk_rows=chunk)])
    expected = data[: len(got)]
    assert len(got) == (1 if shape in ("one", "bare") else rows)
    assert np.array_equal(got, expected)


def test_big_and_fortran_npy_files_are_read_in_bounded_memory(tmp_path):
    rows = 160_000  # 125 MB each: C order and Fortran order
    chunk = np.random.default_rng(0).integers(0, 256, (10_000, 784), dtype=np.uint8)
    for name, order in (("c.npy", "C"), ("f.npy", "F")):
        with open(tmp_path / name, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": order == "F",
                                                     "shape": (rows, 784)})
            block = np.tile(chunk, (rows // len(chunk), 1))
            f.write(block.tobytes(order=order))
            del block
    baseline = peak_rss_mib("import numpy, qd.infer.inputs")
    for name in ("c.npy", "f.npy"):
        peak = peak_rss_mib(f"from qd.infer.inputs import read_inputs\n"
                            f"n = sum(len(e.names) for e in read_inputs([{str(tmp_path / name)!r}]))\nassert n == {rows}")
        assert peak - baseline < 64, f"{name}: {peak - baseline:.0f} MiB above the baseline for a 125 MB file"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's own, before our refusal
@SETTINGS
@given(width=st.integers(0, 200_000), height=st.integers(0, 200_000))
def test_image_pixel_counts_are_checked_from_the_header_before_decoding(tmp_path, width, height):
    path = tmp_path / "header.png"
    path.write_bytes(png_header_only(max(width, 0), max(height, 0)))
    events = events_of(path)
    if width * height > MAX_PIXELS:
        assert "refused" in one_failure(events) and "decompression bomb" in one_failure(events)
    else:
        assert len(events) == 1  # a result, or one line (this header has almost no pixel data)


MODES = st.sampled_from(["1", "L", "LA", "P", "P-transparency", "RGB", "RGBA", "CMYK", "I;16", "I", "F"])


def _in_mode(image: Image.Image, mode: str) -> Image.Image:
    if mode == "P-transparency":
        paletted = image.convert("P")
        paletted.info["transparency"] = 255
        return paletted
    if mode in ("I;16", "I", "F"):
        grey = np.asarray(image)
        return Image.fromarray({"I;16": (grey.astype(np.uint16) * 257), "I": grey.astype(np.int32) * 257,
                                "F": grey.astype(np.float32) / 255}[mode])
    return image.convert(mode)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mode=MODES, width=st.integers(200, 700), height=st.integers(200, 700))
def test_images_over_the_working_size_are_reduced_in_every_mode(mode, width, height):
    big = drawing((width, height))
    image = _in_mode(big, mode)
    reduced = images.reduce_to_work_size(image, work_pixels=128 * 96)
    assert reduced.width * reduced.height <= 128 * 96 < image.width * image.height
    assert correlation(images.image_to_bitmap(reduced), images.image_to_bitmap(big)) > 0.9


def test_a_decoded_image_over_work_pixels_is_reduced_before_preprocessing(tmp_path):
    side = int((WORK_PIXELS * 2.2) ** 0.5)
    path = tmp_path / "big.png"
    drawing((side, side)).save(path)
    opened = images.open_image(path)
    assert opened.width * opened.height <= WORK_PIXELS and opened.width == -(-side // 2)


def test_a_7000_px_png_is_preprocessed_in_bounded_memory(tmp_path):
    path = tmp_path / "big.png"
    image = Image.new("RGB", (7000, 7000), "white")
    ImageDraw.Draw(image).ellipse((1400, 1400, 5600, 5600), outline="black", width=60)
    image.save(path, compress_level=1)
    del image
    baseline = peak_rss_mib("import qd.data.images, numpy")
    peak = peak_rss_mib(f"from qd.data.images import load_image_bitmap\nb = load_image_bitmap({str(path)!r})\n"
                        "assert b.max() > 100")
    # decoding 49 M RGB pixels takes 196 MB by itself; the preprocessing used to add 1 GB on top
    assert peak - baseline < 400, f"{peak - baseline:.0f} MiB for one 7000x7000 image"


# ----------------------------------------------------------------------------- one line, and the rest goes on

EXCEPTIONS = st.sampled_from([ValueError, RuntimeError, KeyError, OverflowError, MemoryError, RecursionError,
                              struct.error, ZeroDivisionError, AssertionError, IndexError, TypeError, OSError,
                              UnicodeDecodeError, SystemError])


def _raise(kind):
    if kind is UnicodeDecodeError:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
    raise kind("boom\nsecond line")


@SETTINGS
@given(kind=EXCEPTIONS, victim=st.sampled_from(["image", "npy", "ndjson"]), workers=st.sampled_from([1, 2]))
def test_an_unexpected_error_in_one_input_is_one_line_and_the_rest_are_read(tmp_path, monkeypatch, shared_strokes,
                                                                          kind, victim, workers):
    import qd.data.decode as decode
    import qd.infer.inputs as inputs

    drawing().save(tmp_path / "a.png")
    drawing((80, 120)).save(tmp_path / "b.png")
    np.save(tmp_path / "c.npy", np.zeros((3, 784), np.uint8))
    (tmp_path / "d.ndjson").write_bytes((shared_strokes / "cat.ndjson").read_bytes().splitlines(keepends=True)[0])
    target = {"image": "b.png", "npy": "c.npy", "ndjson": "d.ndjson"}[victim]
    real = {"image": decode.load_image_bitmap, "npy": inputs.DrawingArray.read, "ndjson": inputs.iter_ndjson}[victim]

    def broken(*args, **kwargs):
        where = args[0].path if victim == "npy" else args[0]
        if Path(where).name == target:
            _raise(kind)
        return real(*args, **kwargs)

    with monkeypatch.context() as patch:  # undone after this example (Hypothesis runs many in one test)
        if victim == "npy":
            patch.setattr(inputs.DrawingArray, "read", broken)
        elif victim == "image":  # images decode in qd.data.decode (in this process: two files are too few for workers)
            patch.setattr(decode, "load_image_bitmap", broken)
        else:
            patch.setattr(inputs, "iter_ndjson", broken)
        events = list(read_inputs([tmp_path], workers=workers))
    failures = [e.message for e in events if isinstance(e, Failure)]
    names = [n for e in events if isinstance(e, Drawings) for n in e.names]
    assert len(failures) == 1 and failures[0].startswith(str(tmp_path / target)) and "\n" not in failures[0]
    expected = {"image": 3 + 1 + 1, "npy": 2 + 1, "ndjson": 2 + 3}[victim]
    assert len(names) == expected


def test_an_npy_cut_while_it_is_read_is_one_line_not_sigbus(tmp_path):
    path = tmp_path / "shrinking.npy"
    np.save(path, np.ones((10_000, 784), np.uint8))
    events = read_inputs([path], chunk_rows=1000)
    first = next(events)
    assert isinstance(first, Drawings) and len(first.names) == 1000
    os.truncate(path, os.path.getsize(path) // 2)  # another program cuts the file
    rest = list(events)
    drawings = sum(len(e.names) for e in rest if isinstance(e, Drawings))
    failures = [e.message for e in rest if isinstance(e, Failure)]
    assert 3000 <= drawings < 5000
    assert len(failures) == 1 and "the file shrank while it was read" in failures[0]


def test_an_ndjson_coordinate_of_400_digits_is_that_line_only(tmp_path, shared_strokes):
    good = (shared_strokes / "cat.ndjson").read_bytes().splitlines()[0]
    huge = json.dumps({"word": "cat", "drawing": [[[1, int("9" * 400)], [1, 2]]]}).encode()
    path = tmp_path / "huge.ndjson"
    path.write_bytes(good + b"\n" + huge + b"\n" + good + b"\n")
    events = events_of(path)
    assert [e.message for e in events if isinstance(e, Failure)] == [
        f"{path}:2: stroke 0 has coordinates outside the simplified 0..255 range"]
    assert sum(len(e.names) for e in events if isinstance(e, Drawings)) == 2
