"""The qd-infer pipeline: inputs -> fixed-size batches -> the model (qd.infer.model.BatchRunner) -> a writer.

How qd-infer shows results: a rich table (streamed batch by batch), JSON lines or CSV.

Machine formats (--json, --csv) own stdout; failures and the closing summary go to
stderr, so `qd-infer ... --csv > out.csv` stays a clean file. The table and every
failure line show names and labels through qd.command.shown (escape codes made
visible); CSV carries them exactly but for a leading "'" on a text cell a spreadsheet would
run as a formula (csv_field), JSON exactly (strict JSON, with invisible characters written
as \\u escapes).

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
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from rich.text import Text

from qd.command import TERMINAL_UNSAFE, ProgressBar, QDError, console, err_console, fail, shown
from qd.data.contract import MAX_BATCH_SIZE, MAX_WORKERS, PIXELS, PROBABILITIES
from qd.data.decode import ImageDecoder
from qd.machine import usable_cpus

from . import DEFAULT_BATCH_SIZE, DEFAULT_TOP, MAX_LANES
from .inputs import Drawings, Failure, Plan, read_inputs
from .model import BatchRunner, OnnxClassifier, resolve_model_path, top_k

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


JSON_SPECIAL = re.compile(f'["\\\\\x00-\x1f{TERMINAL_UNSAFE}]')


def json_strings(texts: list[str]) -> list[str]:
    """JSON string literals of a batch of names: quoted as they are when none needs escaping."""
    if not JSON_SPECIAL.search("".join(texts)):
        return ['"' + t + '"' for t in texts]
    return [encode_json_string(t) for t in texts]


CSV_SPECIAL = re.compile(r'[,"\r\n]')
# RFC 4180's CRLF: with it csv.writer also quotes a bare "\r" inside a field (with "\n" it would not,
# and a label or file name holding one would split its row)
CSV_LINE_END = "\r\n"
# What a spreadsheet runs as a formula when a cell starts with it (OWASP, "CSV Injection"): a text cell
# starting with one of these is written with "'" before it, which spreadsheets read as "this is text".
CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# A batch of names needs csv_field when any of them has to be quoted or starts like a formula; the
# names are joined with NUL for one search (a NUL inside a name only sends its batch the slow way).
_CSV_WORK = re.compile(f"{CSV_SPECIAL.pattern}|(?:\\A|\\x00)[{re.escape(''.join(CSV_FORMULA_START))}]")


def csv_field(text: str) -> str:
    """One CSV text cell (a name, a label, an error): neutralised for spreadsheets (a leading "'" when
    it starts with one of CSV_FORMULA_START), then quoted as csv.writer quotes, only when it has to be.
    Every text cell of every CSV qd writes goes through here; numbers never do."""
    if text.startswith(CSV_FORMULA_START):
        text = "'" + text
    if not CSV_SPECIAL.search(text):
        return text
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator=CSV_LINE_END).writerow([text, ""])
    return buffer.getvalue()[:-3]  # without the empty second field's "," and the line end


def csv_fields(texts: list[str]) -> list[str]:
    if not _CSV_WORK.search("\x00".join(texts)):
        return texts
    return [csv_field(t) for t in texts]


def _ordinal(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


# Valid in JSON strings, but a terminal may act on them.
_JSON_INVISIBLE = re.compile(f"[{TERMINAL_UNSAFE}]")


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


# ----------------------------------------------------------------------------- the pipeline

class Batcher:
    """Collects Drawings of any size into batches of exactly `size` (the last may be shorter)."""

    def __init__(self, size: int):
        self.size = size
        self.names: list[str] = []
        self.parts: list[np.ndarray] = []
        self.count = 0

    def add(self, drawings: Drawings):
        names, bitmaps = drawings.names, drawings.bitmaps
        start = 0
        while start < len(names):
            take = min(self.size - self.count, len(names) - start)
            self.names += names[start:start + take]
            self.parts.append(bitmaps[start:start + take])
            self.count += take
            start += take
            if self.count == self.size:
                yield self.flush()

    def flush(self) -> tuple[list[str], np.ndarray]:
        bitmaps = self.parts[0] if len(self.parts) == 1 else np.concatenate(self.parts)
        out = (self.names, bitmaps.reshape(-1, PIXELS))
        self.names, self.parts, self.count = [], [], 0
        return out


def run_inference(inputs, model=None, top: int = DEFAULT_TOP, batch_size: int = DEFAULT_BATCH_SIZE,
                  fmt: str = "table", recursive: bool = True, workers: int = 1, threads: int | None = None,
                  writer: Writer | None = None, unknown_threshold: float | None = None,
                  flag_unknown: bool = True) -> Summary:
    """`unknown_threshold` replaces the model's open-set threshold; `flag_unknown=False` turns the rule off."""
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise QDError(f"--batch-size must be 1 to {MAX_BATCH_SIZE}, got {batch_size}")
    if not 1 <= workers <= MAX_WORKERS:
        raise QDError(f"--workers must be 1 to {MAX_WORKERS}, got {workers}")
    model_path = resolve_model_path(model)
    inputs = [str(i) for i in inputs]
    plan = Plan.of(inputs, recursive)
    with ImageDecoder(workers, expected=plan.images) as decoder:
        lanes, model_threads = model_lanes(threads, decoder.parallel)
        classifier = OnnxClassifier(model_path, threads=model_threads,
                                    unknown_threshold=unknown_threshold, flag_unknown=flag_unknown)
        top = min(top, classifier.num_classes)
        base = inputs[0] if len(inputs) == 1 and os.path.isdir(inputs[0]) else None
        open_set = classifier.open_set is not None
        writer = writer or make_writer(fmt, classifier.labels, top, base=base, open_set=open_set)
        note_missing_open_set(classifier, flag_unknown)
        started = time.perf_counter()
        bar = ProgressBar("classifying", unit="drawings")
        if bar.active:  # counting what there is to do reads .npy headers and .ndjson files: only for the bar
            bar.step("classifying", total=plan.drawings())
        with bar:
            writer.emit = bar.write_stdout
            classified, failed, unknown = classify_plan(plan, classifier, decoder, writer, bar, top, batch_size, lanes)
    summary = Summary(classified=classified, failed=failed, seconds=time.perf_counter() - started,
                      unknown=unknown if open_set else None)
    writer.finish(summary)
    return summary


def note_missing_open_set(classifier: OnnxClassifier, flag_unknown: bool) -> None:
    if flag_unknown and classifier.open_set is None:
        notice(f"{classifier.path}: exported without an open-set rule, so drawings of other categories "
               "cannot be flagged unknown (export the checkpoint again with qd-export)")


def model_lanes(threads: int | None, decoding_in_workers: bool) -> tuple[int, int | None]:
    """(batches run at once, onnxruntime intra-op threads) for qd-infer.

    A small network's batch spreads badly over threads (the seed network runs 1.7x faster on
    2 threads than on 1, but two 1-thread batches side by side run 2x): so batches run side by
    side, one lane per core up to MAX_LANES, the cores shared out among the lanes. While worker
    processes decode, the model gets one core's share: more would only fight the decoders
    (onnxruntime threads spin). `--threads N` runs one batch at a time on N threads."""
    if threads:
        return 1, threads
    if decoding_in_workers:
        return 1, 1
    cpus = usable_cpus()
    lanes = min(cpus, MAX_LANES)
    return lanes, cpus // lanes


def classify_plan(plan: Plan, classifier: OnnxClassifier, decoder: ImageDecoder, writer: Writer, bar: ProgressBar,
                  top: int, batch_size: int, lanes: int = 1) -> tuple[int, int, int]:
    """Every item of `plan` through `classifier` into `writer`, in input order (qd-infer, and each
    Ray worker); `lanes` batches at once (model_lanes). (drawings classified, failures, unknown ones)."""
    batcher = Batcher(batch_size)
    # Machine formats are written by a second thread while onnxruntime (which releases the
    # GIL) runs the next batch: with a small model, writing is a large share of the work.
    # One batch in flight keeps memory bounded and the output in order.
    writing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qd-write") if getattr(writer, "threaded", False) else None
    written = None
    flagged = 0

    def write_now(names, index, values, unknown):
        writer.rows(names, index, values, unknown)
        bar.advance(len(names))

    def write(names, outputs):
        nonlocal written, flagged
        unknown = classifier.unknown(outputs)
        index, values = top_k(outputs[PROBABILITIES], top)
        flagged += 0 if unknown is None else int(unknown.sum())
        if writing is None:
            return write_now(names, index, values, unknown)
        if written is not None:
            written.result()  # raises here if writing failed (a closed pipe, a full disk)
        written = writing.submit(write_now, names, index, values, unknown)

    def report_failure(message, input):
        if written is not None:
            written.result()  # the rows before it are out first: records stay in input order
        writer.failure(message, input)
        bar.advance(1)

    runner = BatchRunner(classifier.bitmap_outputs, write, report_failure, lanes=lanes)
    try:
        for event in read_inputs(plan, chunk_rows=batch_size, decoder=decoder):
            if isinstance(event, Failure):
                if batcher.count:  # the drawings before it first: records stay in input order
                    runner.run(*batcher.flush())
                runner.drain()
                runner.fail(event.message, event.input)
                continue
            for names, bitmaps in batcher.add(event):
                runner.run(names, bitmaps)
        if batcher.count:
            runner.run(*batcher.flush())
        runner.drain()
        if written is not None:
            written.result()
    finally:
        runner.close()
        if writing is not None:
            writing.shutdown(wait=True)
    return runner.classified, runner.failed, flagged
