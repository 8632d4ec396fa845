"""qd-infer's machine formats, written a whole batch at a time, say exactly what one-by-one writing said."""

import contextlib
import csv
import io
import json

import numpy as np
import pytest

from qd.infer.model import top_k
from qd.infer.output import CsvWriter, JsonLinesWriter, printable_names

LABELS = ["cat", "dog", 'say "cheese"', "comma, label", "back\\slash", "ünïcode", "new\nline", "tab\tbed"]
NAMES = ["a.png", "b,c.png", 'd"e.png', "x\udcff.png", "line\nbreak.png", "ctrl\x01.png", "drawings.npy[12]",
         "crlf\r.png", "ünï/ça.png"]


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
        assert json.loads(line) == {"input": name, "label": top[0]["label"], "probability": top[0]["probability"],
                                    "unknown": None, "top": top}  # no rule applied: null
        assert "e-" not in line  # probabilities with six decimals, as in the CSV


def test_csv_is_byte_identical_to_csv_writer(batch):
    index, probs = batch
    expected = io.StringIO()
    reference = csv.writer(expected, lineterminator="\r\n")  # RFC 4180, so a bare "\r" in a field is quoted
    reference.writerow(["input", "label_1", "probability_1", "label_2", "probability_2", "label_3", "probability_3",
                        "unknown"])
    for name, row_i, row_p in zip(printable_names(NAMES) + NAMES[:2], index.tolist() * 2, probs.tolist() * 2):
        cells = [name]
        for i, p in zip(row_i, row_p):
            cells += [LABELS[i], f"{p:.6f}"]
        reference.writerow(cells + [""])  # no rule applied: an empty cell
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
            assert rows[0][-1] == "unknown" and [r[-1] for r in rows[1:]] == ["true" if u else "false" for u in unknown]


def test_one_label_and_an_empty_batch(batch):
    index, probs = batch
    out = written(JsonLinesWriter, index[:, :1], probs[:, :1], top=1)
    assert all(len(json.loads(l)["top"]) == 1 for l in out.splitlines())
    empty = io.StringIO()
    with contextlib.redirect_stdout(empty):
        CsvWriter(LABELS, 3).rows([], index[:0], probs[:0])
    assert empty.getvalue().count("\n") == 1  # the header only
