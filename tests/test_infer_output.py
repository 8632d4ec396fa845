"""qd-infer's machine formats, written a whole batch at a time, say exactly what one-by-one writing said."""

import contextlib
import csv
import io
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qd.infer.model import top_k
from qd.infer.run import OUTPUT_VERSION, CsvWriter, JsonLinesWriter, printable, printable_names

LABELS = ["cat", "dog", 'say "cheese"', "comma, label", "back\\slash", "ünïcode", "new\nline", "tab\tbed",
          '=HYPERLINK("http://evil.example/","cat")', "-1", "+cat", "@SUM(1)", "\tcat", "\rcat"]
NAMES = ["a.png", "b,c.png", 'd"e.png', "x\udcff.png", "line\nbreak.png", "ctrl\x01.png", "drawings.npy[12]",
         "crlf\r.png", "ünï/ça.png", "=cmd|' /C calc'!A0.png", "-rf.png", "@x.png", "+1.png", "\tt.png", "\rr.png"]
# What a spreadsheet runs as a formula at the start of a cell (OWASP, "CSV Injection"): = + - @ tab CR.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def as_a_spreadsheet_safe_cell(text: str) -> str:
    """The text cell qd's CSV holds for `text`: a "'" before it exactly when it starts like a formula."""
    return "'" + text if text.startswith(FORMULA_START) else text


@pytest.fixture
def batch():
    rng = np.random.default_rng(3)
    probs = rng.random((len(NAMES), len(LABELS))).astype(np.float32) ** 4
    probs[0, 2] = 1e-7  # tiny values: fixed decimals, never an exponent
    probs /= probs.sum(axis=1, keepdims=True)
    return top_k(probs, 3)


def written(writer_class, index, probs, top=3):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        writer = writer_class(LABELS, top)
        writer.rows(NAMES, index, probs)
        writer.rows(NAMES[:2], index[:2], probs[:2])  # a second batch continues the same stream
    return out.getvalue()


def test_json_lines_are_the_records_json_dumps_would_write(batch):
    index, probs = batch
    lines = written(JsonLinesWriter, index, probs).splitlines()
    assert len(lines) == len(NAMES) + 2
    for line, name, row_i, row_p in zip(lines, printable_names(NAMES) + NAMES[:2], index.tolist() * 2, probs.tolist() * 2):
        top = [{"label": LABELS[i], "probability": round(p, 6)} for i, p in zip(row_i, row_p)]
        assert json.loads(line) == {"version": OUTPUT_VERSION, "input": name, "label": top[0]["label"],
                                    "probability": top[0]["probability"], "unknown": None, "top": top,
                                    "error": None}  # no rule applied: null
        assert "e-" not in line  # probabilities with six decimals, as in the CSV


def test_csv_is_byte_identical_to_csv_writer(batch):
    index, probs = batch
    expected = io.StringIO()
    reference = csv.writer(expected, lineterminator="\r\n")  # RFC 4180, so a bare "\r" in a field is quoted
    reference.writerow(["version", "input", "label_1", "probability_1", "label_2", "probability_2", "label_3",
                        "probability_3", "unknown", "error"])
    for name, row_i, row_p in zip(printable_names(NAMES) + NAMES[:2], index.tolist() * 2, probs.tolist() * 2):
        cells = [OUTPUT_VERSION, as_a_spreadsheet_safe_cell(name)]
        for i, p in zip(row_i, row_p):
            cells += [as_a_spreadsheet_safe_cell(LABELS[i]), f"{p:.6f}"]
        reference.writerow(cells + ["", ""])  # no rule applied, no error: empty cells
    assert written(CsvWriter, index, probs) == expected.getvalue()


def test_the_unknown_answer_in_both_formats(batch):
    index, probs = batch
    unknown = np.arange(len(NAMES)) % 3 == 0
    for writer_class in (JsonLinesWriter, CsvWriter):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            writer_class(LABELS, 3, open_set=True).rows(NAMES, index, probs, unknown)
        if writer_class is JsonLinesWriter:
            assert [json.loads(line)["unknown"] for line in out.getvalue().splitlines()] == unknown.tolist()
        else:
            rows = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
            assert rows[0][-2] == "unknown" and [r[-2] for r in rows[1:]] == ["true" if u else "false" for u in unknown]


def test_one_label_and_an_empty_batch(batch):
    index, probs = batch
    out = written(JsonLinesWriter, index[:, :1], probs[:, :1], top=1)
    assert all(len(json.loads(l)["top"]) == 1 for l in out.splitlines())
    empty = io.StringIO()
    with contextlib.redirect_stdout(empty):
        CsvWriter(LABELS, 3).rows([], index[:0], probs[:0])
    assert empty.getvalue().count("\n") == 1  # the header only


def test_a_failed_input_is_a_record_with_its_error_in_both_formats(batch, capsys):
    """Between two drawings' records, in order, with the exact name and reason; still named on stderr."""
    index, probs = batch
    name, message = NAMES[1], f"{NAMES[1]}: not an image (bad, \"quoted\")"
    for writer_class in (JsonLinesWriter, CsvWriter):
        writer = writer_class(LABELS, 3)
        writer.rows(NAMES[:1], index[:1], probs[:1])
        writer.failure(message, name)
        writer.rows(NAMES[2:3], index[2:3], probs[2:3])
        out, err = capsys.readouterr()
        assert err.count("error:") == 1 and "not an image" in err
        if writer_class is JsonLinesWriter:
            records = [json.loads(line) for line in out.splitlines()]
            assert records[1] == {"version": OUTPUT_VERSION, "input": name, "label": None, "probability": None,
                                  "unknown": None, "top": [], "error": message}
            assert [r["error"] for r in records] == [None, message, None]
            assert [set(r) for r in records] == [set(records[1])] * 3  # one schema for every record
        else:
            rows = list(csv.DictReader(io.StringIO(out, newline="")))
            assert [r["input"] for r in rows] == [printable(n) for n in NAMES[:3]]
            assert rows[1]["error"] == message and rows[1]["label_1"] == rows[1]["unknown"] == ""
            assert rows[0]["error"] == rows[2]["error"] == "" and {r["version"] for r in rows} == {str(OUTPUT_VERSION)}


TEXT = st.one_of(st.text(), st.builds(str.__add__, st.sampled_from(FORMULA_START + ("'", " ", "'=")), st.text()))


@settings(max_examples=300, deadline=None)
@given(names=st.lists(TEXT, min_size=1, max_size=6), labels=st.lists(TEXT, min_size=2, max_size=6, unique=True),
       failed=TEXT, seed=st.integers(0, 2**32 - 1))
def test_csv_text_cells_a_spreadsheet_would_run_are_neutralised_and_numbers_stay_numbers(names, labels, failed, seed):
    """Any name, label or error: read back by the csv module, each text cell is the text, or "'" + the text exactly
    when the text starts with a formula character; no cell starts with one; probabilities are plain decimals."""
    probs = np.random.default_rng(seed).random((len(names), len(labels))).astype(np.float32)
    probs /= probs.sum(axis=1, keepdims=True)
    index, top = top_k(probs, 2)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        writer = CsvWriter(labels, 2)
        writer.rows(names, index, top)
        writer.failure(f"{failed}: not an image", failed)
    rows = list(csv.reader(io.StringIO(out.getvalue(), newline="")))
    assert len(rows) == 1 + len(names) + 1
    for row, name, row_i, row_p in zip(rows[1:], names, index.tolist(), top.tolist()):
        assert row[1] == as_a_spreadsheet_safe_cell(name)
        assert row[2::2][:2] == [as_a_spreadsheet_safe_cell(labels[i]) for i in row_i]
        assert row[3:7:2] == [f"{p:.6f}" for p in row_p] and all(0 <= float(p) <= 1 for p in row[3:7:2])
    failure = rows[-1]
    assert failure[1] == as_a_spreadsheet_safe_cell(failed)
    assert failure[-1] == as_a_spreadsheet_safe_cell(f"{failed}: not an image")
    for row in rows:
        assert not any(cell.startswith(FORMULA_START) for cell in row), row
