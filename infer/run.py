"""The qd-infer pipeline: inputs -> fixed-size batches -> one onnxruntime run per batch -> writer."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from qd.data.bitmaps import PIXELS
from qd.data.console import describe_unexpected
from qd.data.decode import ImageDecoder
from qd.data.errors import QDError
from qd.data.limits import MAX_BATCH_SIZE, MAX_WORKERS
from qd.data.preprocess import bitmaps_to_input
from qd.data.progress import ProgressBar

from .inputs import Drawings, Failure, Plan, read_inputs
from .model import OnnxClassifier, resolve_model_path, top_k
from .openset import PROBABILITIES
from .output import Summary, Writer, make_writer, notice


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


class BatchRunner:
    """Classifies batches and writes their rows; a batch onnxruntime cannot run (its allocator at
    a huge batch, a kernel failing on some input) is split in halves and retried, down to single
    drawings, so one bad drawing is one failure line and the rest of the batch goes on. After a
    split, later batches are cut to the size that last worked."""

    def __init__(self, classifier: OnnxClassifier, top: int, write, report_failure):
        self.classifier, self.top = classifier, top
        self.write, self.report_failure = write, report_failure  # (names, index, probs, unknown) and (message, input)
        self.limit: int | None = None  # batch size known to work, once one has failed
        self.classified = self.failed = self.unknown = 0

    def run(self, names: list[str], bitmaps: np.ndarray) -> None:
        step = self.limit or len(names)
        for start in range(0, len(names), step):
            self._run(names[start:start + step], bitmaps[start:start + step])

    def _run(self, names: list[str], bitmaps: np.ndarray) -> None:
        try:
            outputs = self.classifier.outputs(bitmaps_to_input(bitmaps, self.classifier.preprocessing))
        except QDError:
            raise  # the model itself is wrong (output shape): every batch would fail alike
        except Exception as exc:
            if len(names) == 1:
                self.fail(f"{names[0]}: not classified (onnxruntime: {describe_unexpected(exc)})", names[0])
                return
            half = len(names) // 2
            self.limit = half if self.limit is None else min(self.limit, half)
            self._run(names[:half], bitmaps[:half])
            self._run(names[half:], bitmaps[half:])
            return
        finite = np.all([np.isfinite(v).all(axis=1) for v in outputs.values()], axis=0)
        if finite.all():
            self._write(names, outputs)
            return
        # Runs of finite rows and of failures, in order: records stay in input order.
        edges = [0, *(np.flatnonzero(np.diff(finite.astype(np.int8))) + 1).tolist(), len(names)]
        for lo, hi in zip(edges[:-1], edges[1:]):
            if finite[lo]:
                self._write(names[lo:hi], {name: value[lo:hi] for name, value in outputs.items()})
                continue
            for i in range(lo, hi):
                self.fail(f"{names[i]}: not classified (the model gave NaN or infinite probabilities)", names[i])

    def _write(self, names: list[str], outputs: dict[str, np.ndarray]) -> None:
        if names:
            unknown = self.classifier.unknown(outputs)
            index, values = top_k(outputs[PROBABILITIES], self.top)
            self.write(names, index, values, unknown)
            self.classified += len(names)
            self.unknown += 0 if unknown is None else int(unknown.sum())

    def fail(self, message: str, input: str) -> None:
        self.report_failure(message, input)
        self.failed += 1


def run_inference(inputs, model=None, top: int = 3, batch_size: int = 512, fmt: str = "table",
                  recursive: bool = True, workers: int = 1, threads: int | None = None,
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
        # While worker processes decode, the model gets one core's share: a thread pool of
        # its own on every core would only fight the decoders (onnxruntime threads spin).
        classifier = OnnxClassifier(model_path, threads=threads or (1 if decoder.parallel else None),
                                    unknown_threshold=unknown_threshold, flag_unknown=flag_unknown)
        top = min(top, classifier.num_classes)
        base = inputs[0] if len(inputs) == 1 and os.path.isdir(inputs[0]) else None
        open_set = classifier.open_set is not None
        writer = writer or make_writer(fmt, classifier.labels, top, base=base, open_set=open_set)
        if flag_unknown and not open_set:
            notice(f"{classifier.path}: exported without an open-set rule, so drawings of other categories "
                          "cannot be flagged unknown (export the checkpoint again with qd-export)")
        started = time.perf_counter()
        bar = ProgressBar("classifying", unit="drawings")
        if bar.active:  # counting what there is to do reads .npy headers and .ndjson files: only for the bar
            bar.step("classifying", total=plan.drawings())
        with bar:
            writer.emit = bar.write_stdout
            runner = _classify(plan, classifier, decoder, writer, bar, top, batch_size)
    summary = Summary(classified=runner.classified, failed=runner.failed, seconds=time.perf_counter() - started,
                      unknown=runner.unknown if open_set else None)
    writer.finish(summary)
    return summary


def _classify(plan: Plan, classifier: OnnxClassifier, decoder: ImageDecoder, writer: Writer, bar: ProgressBar,
              top: int, batch_size: int) -> BatchRunner:
    batcher = Batcher(batch_size)
    # Machine formats are written by a second thread while onnxruntime (which releases the
    # GIL) runs the next batch: with a small model, writing is a large share of the work.
    # One batch in flight keeps memory bounded and the output in order.
    writing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qd-write") if getattr(writer, "threaded", False) else None
    written = None

    def write_now(names, index, values, unknown):
        writer.rows(names, index, values, unknown)
        bar.advance(len(names))

    def write(names, index, values, unknown):
        nonlocal written
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

    runner = BatchRunner(classifier, top, write, report_failure)
    try:
        for event in read_inputs(plan, chunk_rows=batch_size, decoder=decoder):
            if isinstance(event, Failure):
                if batcher.count:  # the drawings before it first: records stay in input order
                    runner.run(*batcher.flush())
                runner.fail(event.message, event.input)
                continue
            for names, bitmaps in batcher.add(event):
                runner.run(names, bitmaps)
        if batcher.count:
            runner.run(*batcher.flush())
        if written is not None:
            written.result()
    finally:
        if writing is not None:
            writing.shutdown(wait=True)
    return runner
