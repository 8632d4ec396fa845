"""qd.data.strokes: simplified .ndjson drawings rendered like Google's numpy_bitmap files."""

import json

import numpy as np
import pytest

from images_synth import correlation
from qd.command import QDError
from qd.data.bitmaps import open_bitmaps
from qd.data.strokes import iter_ndjson, load_ndjson, parse_ndjson_line, render_strokes

# For these the stroke files are not the first rows of the bitmap files (see bench/tune_strokes.py).
NOT_SAME_DRAWINGS = {"circle", "clock", "crown", "skull", "smiley_face", "square", "star"}


def test_renders_match_googles_bitmaps(shared_strokes, shared_bitmaps):
    cs = []
    for path in sorted(shared_strokes.glob("*.ndjson")):
        if path.stem in NOT_SAME_DRAWINGS:
            continue
        rendered, words = load_ndjson(path)
        rows = np.asarray(open_bitmaps(shared_bitmaps / f"{path.stem}.npy")[: len(rendered)])
        cs += [correlation(r, row) for r, row in zip(rendered, rows)]
    assert len(cs) >= 400
    assert np.mean(cs) > 0.99 and min(cs) > 0.95, (np.mean(cs), min(cs))


def test_render_shape_dtype_and_framing(shared_strokes):
    rendered, words = load_ndjson(shared_strokes / "cat.ndjson")
    assert rendered.shape == (25, 28, 28) and rendered.dtype == np.uint8
    assert words == ["cat"] * 25
    # Google's frame leaves the outermost rows and columns empty.
    assert rendered[:, 0, :].max() == 0 and rendered[:, :, 27].max() == 0
    assert rendered.max() == 255


def test_empty_drawing_is_blank():
    assert render_strokes([]).max() == 0


@pytest.mark.parametrize("line,reason", [
    (b"{not json", "not JSON"),
    (b'{"word": "cat"}', "no 'drawing'"),
    (b'{"drawing": 5}', "not a list"),
    (b'{"drawing": [[[1, 2], [3]]]}', "different lengths"),
    (b'{"drawing": [[["a"], [1]]]}', "non-numeric"),
    (b'{"drawing": [[[1e300], [1]]]}', "outside"),
    (b"[1, 2]", "no 'drawing'"),
    (b"\xff\xfe", "not JSON"),
    (b"[" * 100000 + b"]" * 100000, "not JSON"),
])
def test_broken_lines_give_a_reason(line, reason):
    with pytest.raises(ValueError, match=reason):
        word, strokes = parse_ndjson_line(line)
        render_strokes(strokes)


def test_broken_line_does_not_stop_the_rest(tmp_path, shared_strokes):
    good = (shared_strokes / "apple.ndjson").read_bytes().splitlines()[:2]
    path = tmp_path / "mixed.ndjson"
    path.write_bytes(good[0] + b"\n{oops\n\n" + good[1] + b"\n")
    results = list(iter_ndjson(path))
    assert [(n, e is None) for n, _, _, e in results] == [(1, True), (2, False), (4, True)]
    with pytest.raises(QDError, match=r"mixed.ndjson:2: not JSON"):
        load_ndjson(path)


def test_word_is_kept(tmp_path):
    path = tmp_path / "one.ndjson"
    path.write_text(json.dumps({"word": "house plant", "drawing": [[[0, 255], [0, 255]]]}) + "\n")
    bitmaps, words = load_ndjson(path)
    assert words == ["house plant"] and bitmaps[0].max() > 200


def test_monster_line_is_refused_without_reading_it_whole(tmp_path, shared_strokes):
    from qd.data.strokes import MAX_LINE_BYTES

    good = (shared_strokes / "apple.ndjson").read_bytes().splitlines()[0]
    path = tmp_path / "monster.ndjson"
    path.write_bytes(good + b"\n" + b"[" * (3 * MAX_LINE_BYTES) + b"\n" + good + b"\n")
    results = list(iter_ndjson(path))
    assert [(n, e) for n, _, _, e in results] == [(1, None), (2, f"line longer than {MAX_LINE_BYTES} bytes"),
                                                  (3, None)]
