"""The qd-infer pipeline: inputs -> fixed-size batches -> one onnxruntime run per batch -> writer."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from qd.data.bitmaps import PIXELS
from qd.data.decode import ImageDecoder
from qd.data.preprocess import bitmaps_to_input
from qd.data.progress import ProgressBar

from .inputs import Drawings, Failure, Plan, read_inputs
from .model import OnnxClassifier, resolve_model_path, top_k
from .output import Summary, Writer, make_writer


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


def run_inference(inputs, model=None, top: int = 3, batch_size: int = 512, fmt: str = "table",
                  recursive: bool = True, workers: int = 1, threads: int | None = None,
                  writer: Writer | None = None) -> Summary:
    model_path = resolve_model_path(model)
    inputs = [str(i) for i in inputs]
    plan = Plan.of(inputs, recursive)
    with ImageDecoder(workers, expected=plan.images) as decoder:
        # While worker processes decode, the model gets one core's share: a thread pool of
        # its own on every core would only fight the decoders (onnxruntime threads spin).
        classifier = OnnxClassifier(model_path, threads=threads or (1 if decoder.parallel else None))
        top = min(top, classifier.num_classes)
        base = inputs[0] if len(inputs) == 1 and os.path.isdir(inputs[0]) else None
        writer = writer or make_writer(fmt, classifier.labels, top, base=base)
        started = time.perf_counter()
        bar = ProgressBar("classifying", unit="drawings")
        if bar.active:  # counting what there is to do reads .npy headers and .ndjson files: only for the bar
            bar.step("classifying", total=plan.drawings())
        with bar:
            writer.emit = bar.write_stdout
            classified, failed = _classify(plan, classifier, decoder, writer, bar, top, batch_size)
    summary = Summary(classified=classified, failed=failed, seconds=time.perf_counter() - started)
    writer.finish(summary)
    return summary


def _classify(plan: Plan, classifier: OnnxClassifier, decoder: ImageDecoder, writer: Writer, bar: ProgressBar,
              top: int, batch_size: int) -> tuple[int, int]:
    classified = failed = 0
    batcher = Batcher(batch_size)
    # Machine formats are written by a second thread while onnxruntime (which releases the
    # GIL) runs the next batch: with a small model, writing is a large share of the work.
    # One batch in flight keeps memory bounded and the output in order.
    writing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qd-write") if writer.threaded else None
    written = None

    def write(names, index, values):
        writer.rows(names, index, values)
        bar.advance(len(names))

    def run(names, bitmaps):
        nonlocal written
        probs = classifier.probabilities(bitmaps_to_input(bitmaps, classifier.preprocessing))
        index, values = top_k(probs, top)
        if writing is None:
            write(names, index, values)
            return len(names)
        if written is not None:
            written.result()  # raises here if writing failed (a closed pipe, a full disk)
        written = writing.submit(write, names, index, values)
        return len(names)

    try:
        for event in read_inputs(plan, chunk_rows=batch_size, decoder=decoder):
            if isinstance(event, Failure):
                writer.failure(event.message)
                failed += 1
                bar.advance(1)
                continue
            for names, bitmaps in batcher.add(event):
                classified += run(names, bitmaps)
        if batcher.count:
            classified += run(*batcher.flush())
        if written is not None:
            written.result()
    finally:
        if writing is not None:
            writing.shutdown(wait=True)
    return classified, failed
