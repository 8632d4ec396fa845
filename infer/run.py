"""The qd-infer pipeline: inputs -> fixed-size batches -> one onnxruntime run per batch -> writer."""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from qd.command import ProgressBar, QDError, describe_unexpected
from qd.data.contract import MAX_BATCH_SIZE, MAX_WORKERS, PIXELS, bitmaps_to_input
from qd.data.decode import ImageDecoder
from qd.machine import usable_cpus

from .defaults import DEFAULT_BATCH_SIZE, DEFAULT_TOP, MAX_LANES
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
    """Classifies batches and writes their rows in input order; a batch onnxruntime cannot run (its
    allocator at a huge batch, a kernel failing on some input) is split in halves and retried, down
    to single drawings, so one bad drawing is one failure line and the rest of the batch goes on.
    After a split, later batches are cut to the size that last worked.

    With `lanes` > 1, that many batches run at once (threads: onnxruntime releases the GIL), each
    on its own share of the session's threads; results are still taken, checked and written in
    order. Call drain() before reporting anything that must come after the batches given so far."""

    def __init__(self, classifier: OnnxClassifier, top: int, write, report_failure, lanes: int = 1):
        self.classifier, self.top = classifier, top
        self.write, self.report_failure = write, report_failure  # (names, index, probs, unknown) and (message, input)
        self.limit: int | None = None  # batch size known to work, once one has failed
        self.classified = self.failed = self.unknown = 0
        self.lanes = lanes
        self._pool = ThreadPoolExecutor(lanes, thread_name_prefix="qd-run") if lanes > 1 else None
        self._running: deque = deque()  # (names, bitmaps, future of outputs), oldest first

    def run(self, names: list[str], bitmaps: np.ndarray) -> None:
        step = self.limit or len(names)
        for start in range(0, len(names), step):
            part_names, part = names[start:start + step], bitmaps[start:start + step]
            if self._pool is None:
                self._run(part_names, part)
                continue
            self._running.append((part_names, part, self._pool.submit(self._outputs, part)))
            # One batch queued beyond those running keeps every lane busy while this thread reads.
            while len(self._running) > self.lanes:
                self._take_oldest()

    def drain(self) -> None:
        """Write every batch given so far."""
        while self._running:
            self._take_oldest()

    def close(self) -> None:
        if self._pool is not None:
            for _, _, future in self._running:
                future.cancel()
            self._running.clear()
            self._pool.shutdown(wait=True)

    def _take_oldest(self) -> None:
        names, bitmaps, future = self._running.popleft()
        try:
            outputs = future.result()
        except QDError:
            raise  # the model itself is wrong (output shape): every batch would fail alike
        except Exception:
            self._run(names, bitmaps)  # again, in this thread, splitting as it must
            return
        self._check_and_write(names, outputs)

    def _outputs(self, bitmaps: np.ndarray) -> dict[str, np.ndarray]:
        return self.classifier.outputs(bitmaps_to_input(bitmaps, self.classifier.preprocessing))

    def _run(self, names: list[str], bitmaps: np.ndarray) -> None:
        try:
            outputs = self._outputs(bitmaps)
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
        self._check_and_write(names, outputs)

    def _check_and_write(self, names: list[str], outputs: dict[str, np.ndarray]) -> None:
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
            runner = classify_plan(plan, classifier, decoder, writer, bar, top, batch_size, lanes)
    summary = Summary(classified=runner.classified, failed=runner.failed, seconds=time.perf_counter() - started,
                      unknown=runner.unknown if open_set else None)
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
                  top: int, batch_size: int, lanes: int = 1) -> BatchRunner:
    """Every item of `plan` through `classifier` into `writer`, in input order (qd-infer, and each
    Ray worker); `lanes` batches at once (model_lanes)."""
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

    runner = BatchRunner(classifier, top, write, report_failure, lanes)
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
    return runner
