"""qd.infer.inputs: every input kind, mixed, and the bad ones (one clear line each, the rest still read)."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from images_synth import bitmap_as_paper, png_header_only
from qd.data.bitmaps import open_bitmaps
from qd.data.images import image_to_bitmap
from qd.infer.inputs import DrawingArray, Drawings, discover, read_inputs
from qd.infer.run import Batcher


def collect(paths, **kw):
    names, bitmaps, failures = [], [], []
    for event in read_inputs([str(p) for p in paths], **kw):
        if isinstance(event, Drawings):
            names += event.names
            bitmaps.append(event.bitmaps)
        else:
            failures.append(event.message)
    return names, (np.concatenate(bitmaps) if bitmaps else np.zeros((0, 784), np.uint8)), failures


@pytest.fixture(scope="module")
def rows(shared_bitmaps):
    return np.asarray(open_bitmaps(shared_bitmaps / "apple.npy")[:50])


@pytest.fixture
def folder(tmp_path, rows, shared_strokes):
    root = tmp_path / "in"
    (root / "sub" / "deeper").mkdir(parents=True)
    bitmap_as_paper(rows[0], 200).save(root / "a.png")
    bitmap_as_paper(rows[1], 150).convert("RGB").save(root / "b.jpg", quality=90)
    bitmap_as_paper(rows[2], 100).save(root / "sub" / "c.bmp")
    bitmap_as_paper(rows[3], 90).save(root / "sub" / "d.gif")
    bitmap_as_paper(rows[4], 120).save(root / "sub" / "deeper" / "e.webp")
    np.save(root / "sub" / "f.npy", rows[5:15])
    (root / "sub" / "g.ndjson").write_bytes(b"\n".join((shared_strokes / "apple.ndjson").read_bytes().splitlines()[:3]))
    (root / "README.txt").write_text("not an input")  # skipped silently inside folders
    (root / "._a.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble junk")  # hidden: skipped
    (root / ".cache").mkdir()
    bitmap_as_paper(rows[0], 50).save(root / ".cache" / "thumb.png")
    return root


def test_folder_recursive_finds_every_kind_in_order(folder):
    names, bitmaps, failures = collect([folder])
    assert failures == []
    short = [os.path.relpath(n.split("[")[0].split(".ndjson:")[0] + (".ndjson" if ".ndjson:" in n else ""), folder)
             for n in names]
    # Folders in name order, a folder's files before its subfolders.
    assert short == ["a.png", "b.jpg", "sub/c.bmp", "sub/d.gif"] + ["sub/f.npy"] * 10 + ["sub/g.ndjson"] * 3 + \
        ["sub/deeper/e.webp"]
    assert len(names) == 5 + 10 + 3
    assert bitmaps.shape == (18, 784) and bitmaps.dtype == np.uint8


def test_no_recursive_reads_only_the_top(folder):
    names, _, failures = collect([folder], recursive=False)
    assert [os.path.basename(n) for n in names] == ["a.png", "b.jpg"] and failures == []


def test_npy_passes_through_unchanged_in_every_shape_and_dtype(tmp_path, rows):
    cases = {
        "n784.npy": rows[:7], "n28.npy": rows[:7].reshape(7, 28, 28),
        "one28.npy": rows[0].reshape(28, 28), "one784.npy": rows[0],
        "float32.npy": rows[:7].astype(np.float32) / 255, "float64.npy": rows[:7].astype(np.float64) / 255,
        "fortran.npy": np.asfortranarray(rows[:7]),
    }
    for name, array in cases.items():
        np.save(tmp_path / name, array)
        names, bitmaps, failures = collect([tmp_path / name])
        expected = np.asarray(array).reshape(-1, 784)
        if expected.dtype != np.uint8:
            expected = rows[: len(expected)]
        assert failures == [] and np.array_equal(bitmaps, expected), name
    assert collect([tmp_path / "one28.npy"])[0] == [str(tmp_path / "one28.npy")]
    assert collect([tmp_path / "n784.npy"])[0][3] == f"{tmp_path / 'n784.npy'}[3]"


def test_npy_is_read_in_chunks_and_never_mapped(tmp_path, rows):
    """Chunks by pread, never a memory map: resident memory stays at one chunk, and a file cut
    while it is read is an error line, not SIGBUS (tests/test_infer_hostile_files.py)."""
    path = tmp_path / "big.npy"
    np.save(path, np.tile(rows, (4, 1)))
    with DrawingArray.open(path) as array:
        assert array.rows == 200 and not array.single
        assert np.array_equal(array.read(150, 400), np.tile(rows, (4, 1))[150:])
        with open("/proc/self/maps") as maps:
            assert str(path) not in maps.read()
    chunks = [event for event in read_inputs([path], chunk_rows=64)]
    assert [len(c.names) for c in chunks] == [64, 64, 64, 8]


def test_images_are_preprocessed_like_the_shared_function(tmp_path, rows):
    image = bitmap_as_paper(rows[7], 300)
    image.save(tmp_path / "x.png")
    names, bitmaps, _ = collect([tmp_path / "x.png"])
    assert np.array_equal(bitmaps[0].reshape(28, 28), image_to_bitmap(Image.open(tmp_path / "x.png")))


@pytest.mark.parametrize("workers", [1, 3])
def test_parallel_decoding_keeps_order_and_results(tmp_path, rows, workers):
    for i in range(20):
        bitmap_as_paper(rows[i], 64 + 8 * i).save(tmp_path / f"{i:02d}.png")
    names, bitmaps, failures = collect([tmp_path], workers=workers)
    assert [os.path.basename(n) for n in names] == [f"{i:02d}.png" for i in range(20)]
    reference = collect([tmp_path], workers=1)[1]
    assert np.array_equal(bitmaps, reference) and failures == []


def _bad_files(tmp_path, rows):
    bad = tmp_path / "bad"
    bad.mkdir()
    good = tmp_path / "good.png"
    bitmap_as_paper(rows[0], 100).save(good)
    png = io.BytesIO()
    bitmap_as_paper(rows[1], 256).save(png, "PNG")
    (bad / "truncated.png").write_bytes(png.getvalue()[:300])
    (bad / "text.png").write_text("this is text, not a PNG\n")
    (bad / "bomb.png").write_bytes(png_header_only(40000, 40000))
    (bad / "blank.png").write_bytes(_png(Image.new("L", (64, 64), 255)))
    np.save(bad / "shape.npy", np.zeros((3, 100), np.uint8))
    np.save(bad / "dtype.npy", np.zeros((3, 784), np.int32))
    np.save(bad / "pickle.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    np.save(bad / "range.npy", np.full((2, 784), 7.0, np.float32))
    np.save(bad / "nan.npy", np.full((2, 784), np.nan, np.float32))
    np.save(bad / "truncated.npy", rows[:5])
    with open(bad / "truncated.npy", "r+b") as f:
        f.truncate(os.path.getsize(bad / "truncated.npy") - 100)
    (bad / "notnpy.npy").write_bytes(b"hello")
    (bad / "zero.npy").write_bytes(b"")
    np.save(bad / "empty.npy", np.zeros((0, 784), np.uint8))
    (bad / "broken.ndjson").write_text('{"word": "cat", "drawing": [[[0, 10], [0, 10]]]}\n{oops\n')
    return good, bad


def _png(image):
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


EXPECTED_REASONS = {
    "truncated.png": "cannot decode image", "text.png": "not a recognised image", "bomb.png": "refused",
    "blank.png": "no drawing found", "shape.npy": "shape is (3, 100)", "dtype.npy": "dtype is int32",
    "pickle.npy": "needs pickle", "range.npy": "must be in 0..1", "nan.npy": "NaN",
    "truncated.npy": "truncated", "notnpy.npy": "not a .npy file", "zero.npy": "not a .npy file",
    "empty.npy": "no drawings", "broken.ndjson:2": "not JSON",
}


def test_bad_inputs_one_line_each_and_good_ones_still_read(tmp_path, rows):
    good, bad = _bad_files(tmp_path, rows)
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    names, bitmaps, failures = collect([good, bad, tmp_path / "missing.png", empty, tmp_path / "x.txt"])
    assert names == [str(good), f"{bad / 'broken.ndjson'}:1"]
    assert all("\n" not in f for f in failures)
    for name, reason in EXPECTED_REASONS.items():
        hits = [f for f in failures if f.startswith(f"{bad / name}:") or f.startswith(f"{bad / name} ")]
        assert len(hits) == 1 and reason in hits[0], (name, hits)
    assert f"{tmp_path / 'missing.png'}: no such file or directory" in failures
    assert any(f.startswith(str(empty)) and "no images, .npy or .ndjson files" in f for f in failures)
    assert len(failures) == len(EXPECTED_REASONS) + 3  # + missing path, empty folder, x.txt
    assert any("x.txt" in f and "no such file" in f for f in failures)


def test_unsupported_file_given_explicitly(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hi")
    assert [f.message for f in discover([path])] == [f"{path}: unsupported file type (expected .png, .jpg, "
                                                     ".jpeg, .bmp, .gif, .webp, .npy, .ndjson)"]


def test_symlink_loops_unicode_and_spaces(tmp_path, rows):
    root = tmp_path / "loop"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "back").symlink_to(root, target_is_directory=True)
    (root / "sub" / "self").symlink_to(root / "sub", target_is_directory=True)
    (root / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    bitmap_as_paper(rows[0], 80).save(root / "sub" / "chat noir 猫 ✏️.png")
    names, _, failures = collect([root])
    assert names == [str(root / "sub" / "chat noir 猫 ✏️.png")]
    assert len(failures) == 1 and "dangling.png" in failures[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable files")
def test_permission_denied(tmp_path, rows):
    path = tmp_path / "secret.png"
    bitmap_as_paper(rows[0], 80).save(path)
    path.chmod(0)
    try:
        _, _, failures = collect([path])
        assert failures == [f"{path}: Permission denied"]
    finally:
        path.chmod(0o644)


def test_permission_denied_even_as_root(tmp_path, rows, monkeypatch):
    """Root reads everything, so the refusal is simulated where the file is opened."""
    import qd.data.images as images

    good = tmp_path / "good.png"
    secret = tmp_path / "secret.png"
    bitmap_as_paper(rows[0], 80).save(good)
    bitmap_as_paper(rows[1], 80).save(secret)
    real_open = images.open_regular

    def guarded_open(path):
        if str(path) == str(secret):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path)

    monkeypatch.setattr(images, "open_regular", guarded_open)
    names, _, failures = collect([tmp_path])
    assert names == [str(good)] and failures == [f"{secret}: Permission denied"]


def test_batcher_makes_exact_batches():
    batcher = Batcher(4)
    out = []
    for n in (3, 6, 1, 2):
        out += list(batcher.add(Drawings([f"x{i}" for i in range(n)], np.zeros((n, 784), np.uint8))))
    assert [len(names) for names, _ in out] == [4, 4, 4]
    assert [n for names, _ in out for n in names] == [f"x{i}" for n in (3, 6, 1, 2) for i in range(n)]
    assert batcher.count == 0
    out = list(batcher.add(Drawings(["y"], np.zeros((1, 784), np.uint8))))
    assert out == [] and batcher.flush()[0] == ["y"]
