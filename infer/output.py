"""How qd-infer shows results: a rich table (streamed batch by batch), JSON lines or CSV.

Machine formats (--json, --csv) own stdout; failures and the closing summary go to
stderr, so `qd-infer ... --csv > out.csv` stays a clean file. The table and every
failure line show names and labels through qd.command.shown (escape codes made
visible); CSV carries them exactly, JSON exactly too (strict JSON, with invisible
characters written as \\u escapes).

The machine formats' schema is docs/output.md (OUTPUT_VERSION, written in every record):
one record per drawing, and one per input that failed, with its reason in `error` (the
failure is still named on stderr, and the exit code is still 1). Each row carries the
open-set answer: `unknown` is true or false when the model's rule was applied, null (JSON)
or empty (CSV) when it was not (a model exported without one, or --no-unknown). The table
shows "unknown ·" before the closest class.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from dataclasses import dataclass

import numpy as np
from rich.text import Text

from qd.command import console, err_console, fail, shown

# The version of the --json/--csv record schema (docs/output.md); changed whenever a field's meaning changes.
OUTPUT_VERSION = 1


@dataclass
class Summary:
    classified: int
    failed: int
    seconds: float
    unknown: int | None = None  # drawings flagged unknown; None when the open-set rule was not applied

    @property
    def rate(self) -> float:
        return self.classified / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        failed = f"; {self.failed} input{'s' if self.failed != 1 else ''} failed" if self.failed else ""
        unknown = f", {self.unknown:,} unknown" if self.unknown is not None else ""
        return (f"{self.classified:,} drawing{'s' if self.classified != 1 else ''} classified in "
                f"{self.seconds:.2f} s ({self.rate:,.0f} images/s){unknown}{failed}")


class Writer:
    """Receives rows batch by batch: names, top-k label indices and probabilities, and the
    open-set answer per row (None for the whole batch when no rule was applied)."""

    threaded = False  # may rows() run in a thread of its own, beside the model?

    def __init__(self, labels: list[str], top: int, open_set: bool = False):
        self.labels = labels
        self.top = top
        self.open_set = open_set  # whether rows come with an unknown answer

    def rows(self, names: list[str], index: np.ndarray, probs: np.ndarray, unknown: np.ndarray | None = None) -> None:
        raise NotImplementedError

    def emit(self, text: str) -> None:
        """Machine formats' text for stdout (qd-infer swaps in its progress bar's writer)."""
        sys.stdout.write(text)
        sys.stdout.flush()

    def failure(self, message: str, input: str) -> None:
        """One input that could not be classified: a line on stderr (machine formats add a record)."""
        self.tell_failure(message)

    def tell_failure(self, message: str) -> None:
        """How a failure reaches a person: `error: ...` on stderr (a Ray worker collects them for its driver)."""
        fail(message)

    def finish(self, summary: Summary) -> None:
        err_console.print(summary.line(), highlight=False, soft_wrap=True)


def notice(message: str) -> None:
    """One `note: ...` line on stderr (plain text, never markup), whatever the output format."""
    err_console.print(Text.assemble(("note:", "yellow"), " ", shown(message)), highlight=False, soft_wrap=True)


# The unknown answer as each machine format writes it: True, False, or None (no rule applied).
JSON_ANSWERS = np.array(["false", "true", "null"], dtype=object)
CSV_ANSWERS = np.array(["false", "true", ""], dtype=object)


def answers(unknown: np.ndarray | None, n: int) -> np.ndarray:
    """0/1/2 per row (False/True/None), to index JSON_ANSWERS or CSV_ANSWERS with."""
    return np.full(n, 2) if unknown is None else unknown.astype(np.int64)


class JsonLinesWriter(Writer):
    """One JSON object per drawing, formatted a whole batch at a time (one % call per batch):
    with a small model, formatting records one by one cost more than classifying them."""

    threaded = True

    def __init__(self, labels, top, open_set=False):
        super().__init__(labels, top, open_set)
        self.quoted_labels = np.array([encode_json_string(l) for l in labels], dtype=object)
        entries = ", ".join(['{"label": %s, "probability": %.6f}'] * top)
        self.record = ('{"version": %d, "input": %%s, "label": %%s, "probability": %%.6f, "unknown": %%s, "top": ['
                       % OUTPUT_VERSION + entries + '], "error": null}\n')

    def rows(self, names, index, probs, unknown=None):
        fields = np.empty((len(names), 4 + 2 * index.shape[1]), dtype=object)
        fields[:, 0] = json_strings(printable_names(names))
        fields[:, 1] = self.quoted_labels[index[:, 0]]
        fields[:, 2] = probs[:, 0]
        fields[:, 3] = JSON_ANSWERS[answers(unknown, len(names))]
        fields[:, 4::2] = self.quoted_labels[index]
        fields[:, 5::2] = probs
        self.emit((self.record * len(names)) % tuple(fields.ravel().tolist()))

    def failure(self, message: str, input: str) -> None:
        super().failure(message, input)
        self.emit(json_line({"version": OUTPUT_VERSION, "input": printable(input), "label": None,
                             "probability": None, "unknown": None, "top": [], "error": printable(message)}) + "\n")


class CsvWriter(Writer):
    """version, input, label_1, probability_1, ..., unknown, error: a whole batch formatted with one % call."""

    threaded = True

    def __init__(self, labels, top, open_set=False):
        super().__init__(labels, top, open_set)
        header = ["version", "input"]
        for rank in range(1, top + 1):
            header += [f"label_{rank}", f"probability_{rank}"]
        self.quoted_labels = np.array([csv_field(l) for l in labels], dtype=object)
        self.record = f"{OUTPUT_VERSION},%s" + ",%s,%.6f" * top + ",%s," + CSV_LINE_END  # error: empty
        self.failed_record = f"{OUTPUT_VERSION},%s" + ",," * top + ",,%s" + CSV_LINE_END
        self.emit(",".join(header + ["unknown", "error"]) + CSV_LINE_END)

    def rows(self, names, index, probs, unknown=None):
        fields = np.empty((len(names), 2 + 2 * index.shape[1]), dtype=object)
        fields[:, 0] = csv_fields(printable_names(names))
        fields[:, 1:-1:2] = self.quoted_labels[index]
        fields[:, 2:-1:2] = probs
        fields[:, -1] = CSV_ANSWERS[answers(unknown, len(names))]
        self.emit((self.record * len(names)) % tuple(fields.ravel().tolist()))

    def failure(self, message: str, input: str) -> None:
        super().failure(message, input)
        self.emit(self.failed_record % (csv_field(printable(input)), csv_field(printable(message))))


class TableWriter(Writer):
    """A rich table, printed batch by batch (same column widths, header once).

    A drawing the open-set rule marks unknown shows "unknown ·" before its closest class."""

    UNKNOWN = "unknown · "

    def __init__(self, labels, top, base: str | None = None, open_set: bool = False):
        super().__init__(labels, top, open_set)
        self.printed_header = False
        self.prefix = base.rstrip("/") + "/" if base else None  # names shown relative to this folder
        self.prediction_width = max(12, min(40, max(len(l) for l in labels)) + 8)  # "label  99.9%"
        self.first_width = self.prediction_width + (len(self.UNKNOWN) if open_set else 0)

    def rows(self, names, index, probs, unknown=None):
        from rich import box
        from rich.table import Table

        widths = [self.first_width] + [self.prediction_width] * (self.top - 1)
        input_width = max(16, console.width - sum(w + 2 for w in widths) - 2)
        table = Table(box=box.SIMPLE_HEAD, show_header=not self.printed_header, show_edge=False,
                      pad_edge=False, header_style="bold")
        heading = Text.assemble("input (in ", shown(self.prefix), ")") if self.prefix else "input"
        table.add_column(heading, width=input_width, overflow="fold", no_wrap=False)
        for rank, width in enumerate(widths, start=1):
            table.add_column(_ordinal(rank), width=width, no_wrap=True, overflow="ellipsis")
        flags = [False] * len(names) if unknown is None else unknown.tolist()
        for name, row_i, row_p, flagged in zip(names, index.tolist(), probs.tolist(), flags):
            first = [shown(self.labels[row_i[0]], "bold"), f" {row_p[0]:6.1%}"]
            cells = [Text.assemble(*([("unknown", "bold yellow"), " · "] if flagged else []), *first)]
            cells += [Text.assemble(shown(self.labels[i]), " ", (f"{p:6.1%}", "dim"))
                      for i, p in zip(row_i[1:], row_p[1:])]
            if self.prefix and name.startswith(self.prefix):
                name = name[len(self.prefix):]
            table.add_row(shown(name), *cells)
        console.print(table)
        self.printed_header = True

    def finish(self, summary: Summary) -> None:
        console.print(summary.line(), highlight=False, soft_wrap=True)


def printable(text: str) -> str:
    """File names that are not valid UTF-8 (surrogate-escaped by Python) as \\xNN in CSV and JSON, never a crash."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return text.encode("utf-8", "backslashreplace").decode("utf-8")


def printable_names(names: list[str]) -> list[str]:
    try:
        "".join(names).encode("utf-8")  # the usual case, checked for a whole batch at once
        return names
    except UnicodeEncodeError:
        return [printable(n) for n in names]


def encode_json_string(text: str) -> str:
    """A JSON string literal as json.dumps(text, ensure_ascii=False) writes it, invisible characters as \\u escapes."""
    return _JSON_INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.encoder.encode_basestring(text))


JSON_SPECIAL = re.compile(r'["\\\x00-\x1f\x7f-\x9f\u061c\u200b\u200e\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]')


def json_strings(texts: list[str]) -> list[str]:
    """JSON string literals of a batch of names: quoted as they are when none needs escaping."""
    if not JSON_SPECIAL.search("".join(texts)):
        return ['"' + t + '"' for t in texts]
    return [encode_json_string(t) for t in texts]


CSV_SPECIAL = re.compile(r'[,"\r\n]')
# RFC 4180's CRLF: with it csv.writer also quotes a bare "\r" inside a field (with "\n" it would not,
# and a label or file name holding one would split its row)
CSV_LINE_END = "\r\n"


def csv_field(text: str) -> str:
    """One CSV field exactly as csv.writer writes it (quoted only when it has to be)."""
    if not CSV_SPECIAL.search(text):
        return text
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=CSV_LINE_END).writerow([text, ""])
    return buffer.getvalue()[:-3]  # without the empty second field's "," and the line end


def csv_fields(texts: list[str]) -> list[str]:
    if not CSV_SPECIAL.search("".join(texts)):
        return texts
    return [csv_field(t) for t in texts]


def _ordinal(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


# C1 controls, bidi controls, line separators: valid in JSON strings, but a terminal may act on them.
_JSON_INVISIBLE = re.compile("[\x7f-\x9f\u061c\u200b\u200e\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


def json_line(record: dict) -> str:
    """One strict JSON object (no NaN) on one line, exact: invisible characters as \\u escapes."""
    text = json.dumps(record, ensure_ascii=False, allow_nan=False)
    return _JSON_INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def make_writer(fmt: str, labels: list[str], top: int, base: str | None = None, open_set: bool = False) -> Writer:
    """`base`: a folder the table shows names relative to (machine formats keep full paths);
    `open_set`: whether rows will come with the unknown answer."""
    if fmt == "table":
        return TableWriter(labels, top, base, open_set)
    return {"json": JsonLinesWriter, "csv": CsvWriter}[fmt](labels, top, open_set)
