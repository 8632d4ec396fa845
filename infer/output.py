"""How qd-infer shows results: a rich table (streamed batch by batch), JSON lines or CSV.

Machine formats (--json, --csv) own stdout; failures and the closing summary go to
stderr, so `qd-infer ... --csv > out.csv` stays a clean file.

Each row carries the open-set answer: `unknown` is true or false when the model's rule
was applied, null (JSON) or empty (CSV) when it was not (a model exported without one,
or --no-unknown). The table shows "unknown" before the closest class.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass

import numpy as np

from qd.data.console import console, err_console, fail


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

    def __init__(self, labels: list[str], top: int, open_set: bool = False):
        self.labels = labels
        self.top = top
        self.open_set = open_set  # whether rows come with an unknown answer

    def rows(self, names: list[str], index: np.ndarray, probs: np.ndarray, unknown: np.ndarray | None = None) -> None:
        raise NotImplementedError

    def failure(self, message: str) -> None:
        fail(printable(message))

    def notice(self, message: str) -> None:
        err_console.print(f"[yellow]note:[/] {_escape(printable(message))}", highlight=False, soft_wrap=True)

    def finish(self, summary: Summary) -> None:
        err_console.print(summary.line(), highlight=False, soft_wrap=True)


def _answers(unknown: np.ndarray | None, n: int) -> list:
    return [None] * n if unknown is None else unknown.tolist()


class JsonLinesWriter(Writer):
    def rows(self, names, index, probs, unknown=None):
        labels = self.labels
        lines = []
        for name, row_i, row_p, answer in zip(printable_names(names), index.tolist(), probs.tolist(),
                                              _answers(unknown, len(names))):
            top = [{"label": labels[i], "probability": round(p, 6)} for i, p in zip(row_i, row_p)]
            lines.append(json.dumps({"input": name, "label": top[0]["label"], "probability": top[0]["probability"],
                                     "unknown": answer, "top": top}, ensure_ascii=False))
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()


class CsvWriter(Writer):
    CELLS = {True: "true", False: "false", None: ""}

    def __init__(self, labels, top, open_set=False):
        super().__init__(labels, top, open_set)
        self.out = csv.writer(sys.stdout, lineterminator="\n")
        header = ["input"]
        for rank in range(1, top + 1):
            header += [f"label_{rank}", f"probability_{rank}"]
        self.out.writerow(header + ["unknown"])

    def rows(self, names, index, probs, unknown=None):
        labels = self.labels
        out = []
        for name, row_i, row_p, answer in zip(printable_names(names), index.tolist(), probs.tolist(),
                                              _answers(unknown, len(names))):
            cells = [name]
            for i, p in zip(row_i, row_p):
                cells += [labels[i], f"{p:.6f}"]
            out.append(cells + [self.CELLS[answer]])
        self.out.writerows(out)
        sys.stdout.flush()


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
        heading = f"input (in {_escape(printable(self.prefix))})" if self.prefix else "input"
        table.add_column(heading, width=input_width, overflow="fold", no_wrap=False)
        for rank, width in enumerate(widths, start=1):
            table.add_column(_ordinal(rank), width=width, no_wrap=True, overflow="ellipsis")
        for name, row_i, row_p, answer in zip(printable_names(names), index.tolist(), probs.tolist(),
                                              _answers(unknown, len(names))):
            label, p = _escape(self.labels[row_i[0]]), f"{row_p[0]:6.1%}"
            cells = [f"[bold yellow]unknown[/] · {label} [dim]{p}[/]" if answer else f"[bold]{label}[/] {p}"]
            cells += [f"{_escape(self.labels[i])} [dim]{p:6.1%}[/]" for i, p in zip(row_i[1:], row_p[1:])]
            if self.prefix and name.startswith(self.prefix):
                name = name[len(self.prefix):]
            table.add_row(_escape(name), *cells)
        console.print(table)
        self.printed_header = True

    def finish(self, summary: Summary) -> None:
        console.print(summary.line(), highlight=False, soft_wrap=True)


def printable(text: str) -> str:
    """File names that are not valid UTF-8 (surrogate-escaped by Python) shown as \\xNN, never a crash."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        try:
            return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return text.encode("utf-8", "backslashreplace").decode("utf-8")


def printable_names(names: list[str]) -> list[str]:
    return [printable(n) for n in names]


def _ordinal(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def make_writer(fmt: str, labels: list[str], top: int, base: str | None = None, open_set: bool = False) -> Writer:
    """`base`: a folder the table shows names relative to (machine formats keep full paths);
    `open_set`: whether rows will come with the unknown answer."""
    if fmt == "table":
        return TableWriter(labels, top, base, open_set)
    return {"json": JsonLinesWriter, "csv": CsvWriter}[fmt](labels, top, open_set)
