"""qd-data import: class folders of images and .ndjson files -> Google-layout <category>.npy."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from fixtures_data import run_entry_point
from qd.data import cli
from qd.data.bitmaps import open_bitmaps
from qd.data.decode import decode_file
from qd.data.importer import ImportOptions, category_of_file, import_drawings
from qd.data.strokes import draw_strokes_image, parse_ndjson_line, render_drawing
from terminal import run_on_terminal, shows_a_bar


def strokes_of(shared_strokes, category, count):
    lines = (shared_strokes / f"{category}.ndjson").read_text().splitlines()[:count]
    return [parse_ndjson_line(line)[1] for line in lines]


def save(image: Image.Image, path, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    (image.convert(mode) if mode else image).save(path)
    return path


@pytest.fixture
def source(tmp_path, shared_strokes):
    """SRC/cat/*.png|jpg of mixed sizes and modes (one repeated), SRC/dog/*, and a .ndjson beside them."""
    root = tmp_path / "src"
    for category, suffix, modes in (("cat", ".png", ("L", "RGB", "RGBA", "P")), ("dog", ".jpg", ("L", "RGB"))):
        for i, strokes in enumerate(strokes_of(shared_strokes, category, 4)):
            image = draw_strokes_image(strokes, size=48 + 24 * i, line_width=2 + i)
            save(image, root / category / f"{i}{suffix}", modes[i % len(modes)])
    save(draw_strokes_image(strokes_of(shared_strokes, "cat", 1)[0], size=48, line_width=2),
         root / "cat" / "again" / "copy.png")  # the same drawing as cat/0.png, in a subfolder
    (root / "apple.ndjson").write_text("".join(json.dumps({"word": "apple", "drawing": s}) + "\n"
                                               for s in strokes_of(shared_strokes, "apple", 3)))
    return root


def test_folders_and_strokes_become_category_files_through_the_shared_paths(source, tmp_path):
    out = tmp_path / "data"
    report = import_drawings([source], out)
    assert report.ok, report.failures
    by_name = {r.category: r for r in report.results}
    assert sorted(by_name) == ["apple", "cat", "dog"]
    assert (by_name["cat"].rows, by_name["cat"].duplicates) == (4, 1)  # the copy counted once
    cat = np.asarray(open_bitmaps(out / "cat.npy"))
    assert cat.dtype == np.uint8 and cat.shape == (4, 784)
    # exactly what qd-infer's decode path and the one stroke renderer give
    np.testing.assert_array_equal(cat[1], decode_file(source / "cat" / "1.png").reshape(-1))
    first_apple = json.loads((source / "apple.ndjson").read_text().splitlines()[0])["drawing"]
    np.testing.assert_array_equal(open_bitmaps(out / "apple.npy")[0], render_drawing(first_apple).reshape(-1))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp file left


def test_rerun_gives_the_same_files_and_the_cap_keeps_the_first_distinct(source, tmp_path):
    out = tmp_path / "data"
    import_drawings([source], out)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    report = import_drawings([source], out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    assert all(r.replaced == r.rows for r in report.results)
    capped = import_drawings([source], tmp_path / "capped", ImportOptions(max_per_category=2))
    assert {r.category: r.rows for r in capped.results} == {"apple": 2, "cat": 2, "dog": 2}
    np.testing.assert_array_equal(open_bitmaps(tmp_path / "capped" / "cat.npy"), open_bitmaps(out / "cat.npy")[:2])


def test_raw_strokes_are_normalised_like_googles_simplified(shared_strokes, tmp_path):
    simplified = strokes_of(shared_strokes, "cat", 1)[0]
    raw = [[[3 * x + 100 for x in xs], [3 * y + 40 for y in ys], list(range(len(xs)))] for xs, ys in simplified]
    path = tmp_path / "full_raw_cat.ndjson"
    path.write_text(json.dumps({"drawing": raw}) + "\n" + json.dumps({"drawing": simplified}) + "\n")
    assert category_of_file(path) == "cat"
    assert np.abs(render_drawing(raw).astype(int) - render_drawing(simplified)).max() <= 1
    dog = tmp_path / "dog.ndjson"
    dog.write_text(json.dumps({"drawing": strokes_of(shared_strokes, "dog", 1)[0]}) + "\n")
    report = import_drawings([path, dog], tmp_path / "data")
    assert report.ok and {r.category: (r.rows, r.duplicates) for r in report.results} == {"cat": (1, 1), "dog": (1, 0)}


def test_qd_data_list_shows_an_imported_folder(source, tmp_path, monkeypatch, capsys):
    out = tmp_path / "data"
    code, stdout, stderr = run_cli(monkeypatch, capsys, "import", str(source), "--out", str(out), "--workers", "1")
    assert code == 0, stderr
    assert "cat: 4 drawings (1 duplicate(s) dropped)" in stdout and "3 categories, 11 drawings" in stdout
    code, stdout, _ = run_cli(monkeypatch, capsys, "list", str(out))
    assert code == 0 and "apple" in stdout and "3 categories" in stdout and " 11 " in stdout


def run_cli(monkeypatch, capsys, *args):
    return run_entry_point(monkeypatch, capsys, cli.main, "qd-data", *args, columns=200)


def error_lines(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    return [line for line in lines if line.startswith("error:")]


def test_bad_inputs_get_one_line_each_and_leave_nothing_half_written(source, tmp_path, monkeypatch, capsys):
    (source / "bird").mkdir()
    (source / "bird" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (source / "cat" / "truncated.png").write_bytes((source / "cat" / "0.png").read_bytes()[:60])
    with open(source / "apple.ndjson", "a") as f:
        f.write('{"word": "apple"}\n{"word": "../escape", "drawing": [[[0, 9], [0, 9]]]}\n'
                '{"word": "", "drawing": [[[0, 9], [0, 9]]]}\n{"word": "a/b", "drawing": [[[0, 9], [0, 9]]]}\n')
    out = tmp_path / "data"
    code, stdout, err = run_cli(monkeypatch, capsys, "import", str(source), "--out", str(out), "--workers", "1")
    errors = error_lines(err)
    assert code == 1
    assert any("broken.png" in e for e in errors) and any("truncated.png" in e for e in errors)
    assert any("bird: no readable drawing" in e for e in errors)
    assert any("apple.ndjson:4: no 'drawing'" in e for e in errors)
    for name in ("../escape", "''", "a/b"):
        assert sum(name in e and "not a category name" in e or name == "''" and "cannot be empty" in e
                   for e in errors) >= 1
    assert len(errors) == 7, errors  # one line each, nothing else
    assert sorted(p.name for p in out.iterdir()) == ["apple.npy", "cat.npy", "dog.npy"]
    assert not (tmp_path / "escape.npy").exists()


@pytest.mark.parametrize("layout, expected", [
    ("empty", "no class folders or .ndjson files found"),
    ("one class", "only one category (cat) found"),
    ("images at the top", "image(s) outside class folders"),
])
def test_sources_that_cannot_make_a_data_folder_write_nothing(layout, expected, source, tmp_path, monkeypatch,
                                                              capsys):
    root = tmp_path / layout.replace(" ", "-")
    root.mkdir()
    if layout == "one class":
        (source / "cat").rename(root / "cat")
    elif layout == "images at the top":
        for path in sorted((source / "cat").glob("*.png")):
            path.rename(root / path.name)
    out = tmp_path / "data"
    code, _, err = run_cli(monkeypatch, capsys, "import", str(root), "--out", str(out), "--workers", "1")
    errors = error_lines(err)
    assert code == 1 and any(expected in e for e in errors), err
    assert not out.exists() or not list(out.iterdir())


def test_progress_bar_on_a_terminal_only_and_the_same_files_either_way(source, tmp_path):
    def command(out):
        return [sys.executable, "-m", "qd.data.cli", "import", source, "--data", out, "--workers", "2"]
    _, piped, code = run_on_terminal(command(tmp_path / "piped"))
    assert code == 0, piped
    _, terminal, code = run_on_terminal(command(tmp_path / "terminal"), stderr_tty=True)
    assert code == 0, terminal
    assert shows_a_bar(terminal) and "importing" in terminal
    assert "\x1b" not in piped and not shows_a_bar(piped)
    for category in ("apple", "cat", "dog"):
        assert (tmp_path / "terminal" / f"{category}.npy").read_bytes() == \
            (tmp_path / "piped" / f"{category}.npy").read_bytes()
