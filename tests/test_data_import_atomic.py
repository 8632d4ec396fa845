"""qd-data import writes its category files all or none: a folder in the way, a full disk while
writing any one of them, or a rename failing half-way leaves the folder's old files exactly as
they were, no temp file behind, and one error line naming the real file."""

import errno
import json
import os

import pytest

from fixtures_data import invoke_cli
from qd import files as files_module
from qd.data import importer
from qd.data.cli import main

SQUARE = [[[0, 50, 50, 0, 0], [0, 0, 50, 50, 0]]]
TRIANGLE = [[[0, 200, 100, 0], [200, 200, 0, 200]]]
CATEGORIES = ("apple", "cat", "dog", "zebra")


@pytest.fixture
def setup(tmp_path, shared_bitmaps):
    """(sources, out): out holds the real apple.npy (3,000 drawings) and cat.npy; the source has four categories."""
    src = tmp_path / "new.ndjson"
    src.write_text("".join(json.dumps({"word": word, "drawing": drawing}) + "\n"
                           for word in CATEGORIES for drawing in (SQUARE, TRIANGLE)))
    out = tmp_path / "data"
    out.mkdir()
    for name in ("apple", "cat"):
        (out / f"{name}.npy").write_bytes((shared_bitmaps / f"{name}.npy").read_bytes())
    return src, out


def snapshot(out):
    return {p.name: (p.read_bytes() if p.is_file() else "folder") for p in sorted(out.iterdir())}


def run_import(src, out):
    result = invoke_cli(main, "import", src, "--data", out, "--workers", "1")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "Traceback" not in result.output
    return result, errors


@pytest.mark.parametrize("victim", CATEGORIES)
def test_a_folder_in_the_way_fails_before_anything_is_replaced(setup, victim):
    src, out = setup
    in_the_way = out / f"{victim}.npy"
    in_the_way.unlink(missing_ok=True)
    in_the_way.mkdir()
    before = snapshot(out)
    result, errors = run_import(src, out)
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert errors[0].startswith(f"error: {out / victim}.npy: ") and "nothing written" in errors[0]
    assert snapshot(out) == before  # apple.npy still has its 3,000 drawings


@pytest.mark.parametrize("victim", CATEGORIES)
def test_a_full_disk_on_any_file_names_it_and_changes_nothing(setup, victim, monkeypatch):
    src, out = setup
    before = snapshot(out)
    real_open = open

    def full_disk(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        if "w" in mode and os.path.basename(path).startswith(f".{victim}.npy."):
            f.close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a buffered write raises it: no file name
        return f

    monkeypatch.setattr(importer, "open", full_disk, raising=False)
    result, errors = run_import(src, out)
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert errors[0].startswith(f"error: {out / victim}.npy: No space left on device; nothing written"), errors
    assert snapshot(out) == before


@pytest.mark.parametrize("victim", CATEGORIES)
def test_a_rename_failing_half_way_puts_back_the_files_already_replaced(setup, victim, monkeypatch):
    src, out = setup
    before = snapshot(out)
    real_replace = os.replace

    def failing_replace(a, b, *args, **kwargs):
        if os.path.basename(b) == f"{victim}.npy":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_replace(a, b, *args, **kwargs)

    monkeypatch.setattr(files_module.os, "replace", failing_replace)
    result, errors = run_import(src, out)
    monkeypatch.undo()
    assert result.exit_code == 1 and len(errors) == 1, result.output
    assert errors[0].startswith(f"error: {out / victim}.npy: Input/output error; nothing written"), errors
    assert snapshot(out) == before


def test_the_same_import_succeeds_once_the_way_is_clear(setup):
    src, out = setup
    (out / "dog.npy").mkdir()
    assert run_import(src, out)[0].exit_code == 1
    (out / "dog.npy").rmdir()
    result, errors = run_import(src, out)
    assert result.exit_code == 0 and not errors, result.output
    assert sorted(p.name for p in out.iterdir()) == [f"{name}.npy" for name in CATEGORIES]
    assert "replaced a file of 3,000" in result.stdout
