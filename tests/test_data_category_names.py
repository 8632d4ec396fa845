"""The one category-name rule (qd.data.bitmaps.check_category_name) and everywhere a name comes in:
import (class folders, .ndjson words), fetch, list and dataset loading."""

import json
import unicodedata

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fixtures_data import invoke_cli
from qd.command import QDError
from qd.data.bitmaps import BitmapDataset, bitmap_header_bytes, check_category_name, list_categories
from qd.data.cli import main
from qd.data.importer import import_drawings

LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
INVISIBLE = "\x00\x07\x1b\x7f\x80\x9b\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067" \
            "\u2068\u2069\ufeff\u00ad\u061c\u2060"
FORBIDDEN = LINE_BREAKS + INVISIBLE + "/\\"
SQUARE = [[[0, 50, 50, 0, 0], [0, 0, 50, 50, 0]]]
TRIANGLE = [[[0, 200, 100, 0], [200, 200, 0, 200]]]


def names(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",))):
    return st.text(alphabet, min_size=1, max_size=30)


@settings(max_examples=300, deadline=None)
@given(name=names(st.characters()))
def test_an_accepted_name_is_one_visible_line_in_nfc(name):
    try:
        accepted = check_category_name(name)
    except QDError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(repr(name))
        return
    assert accepted == unicodedata.normalize("NFC", name)
    assert accepted.splitlines() == [accepted] and accepted == accepted.strip()
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in accepted)
    assert "/" not in accepted and "\\" not in accepted and not accepted.startswith(".")
    assert len(accepted.encode()) <= 200


@settings(max_examples=300, deadline=None)
@given(before=names(), bad=st.sampled_from(FORBIDDEN), after=names())
def test_a_name_holding_a_line_break_an_invisible_character_or_a_separator_is_refused(before, bad, after):
    with pytest.raises(QDError):
        check_category_name(before + bad + after)


@pytest.mark.parametrize("name", [".", "..", ".hidden", "", " cat", "cat ", "\ud83d", "x" * 201])
def test_dots_blanks_surrogates_and_overlong_names_are_refused(name):
    with pytest.raises(QDError):
        check_category_name(name)


@settings(max_examples=200, deadline=None)
@given(name=names())
def test_names_differing_only_by_normalisation_are_one_category(name):
    forms = set()
    for form in ("NFC", "NFD", "NFKC", "NFKD"):
        spelt = unicodedata.normalize(form, name)
        try:
            forms.add((unicodedata.normalize("NFC", spelt) == unicodedata.normalize("NFC", name),
                       check_category_name(spelt)))
        except QDError:
            continue
    assert len({accepted for same, accepted in forms if same}) <= 1


def write_ndjson(path, rows):
    path.write_text("".join(json.dumps({"word": word, "drawing": drawing}) + "\n" for word, drawing in rows))
    return path


def test_import_refuses_line_breaking_and_invisible_names_and_merges_normalisation_twins(tmp_path):
    src = write_ndjson(tmp_path / "words.ndjson", [
        ("caf\u00e9", SQUARE), ("cafe\u0301", TRIANGLE),  # one category, two spellings
        ("dog", SQUARE), ("bad\nname", SQUARE), ("ev\u202eil", SQUARE), ("zero\u200bwidth", SQUARE),
        ("line\u2028sep", SQUARE)])
    out = tmp_path / "data"
    report = import_drawings([src], out)
    assert {r.category: r.rows for r in report.results} == {"caf\u00e9": 2, "dog": 1}
    assert len(report.failures) == 4 and all("not a category name" in f for f in report.failures)
    assert sorted(p.name for p in out.iterdir()) == ["caf\u00e9.npy", "dog.npy"]


def test_import_refuses_a_class_folder_with_a_newline_and_merges_folder_twins(tmp_path, shared_strokes):
    from qd.data.strokes import draw_strokes_image, parse_ndjson_line

    lines = (shared_strokes / "cat.ndjson").read_text().splitlines()[:3]
    src = tmp_path / "src"
    for i, (folder, line) in enumerate(zip(("caf\u00e9", "cafe\u0301", "evil\nname"), lines)):
        (src / folder).mkdir(parents=True)
        draw_strokes_image(parse_ndjson_line(line)[1], size=64, line_width=3).save(src / folder / f"{i}.png")
    write_ndjson(src / "dog.ndjson", [("dog", SQUARE)])
    result = invoke_cli(main, "import", src, "--data", tmp_path / "data", "--workers", "1")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "evil\\nname" in errors[0], result.output
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["caf\u00e9.npy", "dog.npy"]
    assert np.load(tmp_path / "data" / "caf\u00e9.npy").shape == (2, 784)


@pytest.mark.parametrize("stem", ["two\nlines", "ev\u202eil", "zero\u200bwidth", "cafe\u0301", "form\x0cfeed"])
def test_a_data_folder_file_with_a_bad_name_is_one_line_for_list_and_datasets(tmp_path, stem):
    for name in ("cat", stem):
        (tmp_path / f"{name}.npy").write_bytes(bitmap_header_bytes(1) + bytes(784))
    with pytest.raises(QDError) as refused:
        list_categories(tmp_path)
    assert str(tmp_path / f"{stem}.npy") in str(refused.value) and "rename or remove it" in str(refused.value)
    with pytest.raises(QDError):
        BitmapDataset(tmp_path)
    result = invoke_cli(main, "list", "--data", tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output


def test_fetch_refuses_a_name_with_a_newline_before_any_request(qd_server, tmp_path):
    result = invoke_cli(main, "fetch", "cat\ndog", "--source", qd_server.base_url, "--data", tmp_path)
    assert result.exit_code == 1 and "not a category name" in result.stderr
    assert not qd_server.hits and not list(tmp_path.iterdir())
