"""The qd-infer pipeline: inputs -> fixed-size batches -> one onnxruntime run per batch -> writer."""

from __future__ import annotations

import os
import time

import numpy as np

from qd.data.bitmaps import PIXELS
from qd.data.preprocess import bitmaps_to_input

from .inputs import Drawings, Failure, read_inputs
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
    classifier = OnnxClassifier(resolve_model_path(model), threads=threads)
    top = min(top, classifier.num_classes)
    inputs = [str(i) for i in inputs]
    base = inputs[0] if len(inputs) == 1 and os.path.isdir(inputs[0]) else None
    writer = writer or make_writer(fmt, classifier.labels, top, base=base)
    started = time.perf_counter()
    classified = failed = 0
    batcher = Batcher(batch_size)

    def run(names, bitmaps):
        probs = classifier.probabilities(bitmaps_to_input(bitmaps, classifier.preprocessing))
        index, values = top_k(probs, top)
        writer.rows(names, index, values)
        return len(names)

    for event in read_inputs(inputs, recursive=recursive, workers=workers, chunk_rows=batch_size):
        if isinstance(event, Failure):
            writer.failure(event.message)
            failed += 1
            continue
        for names, bitmaps in batcher.add(event):
            classified += run(names, bitmaps)
    if batcher.count:
        classified += run(*batcher.flush())
    summary = Summary(classified=classified, failed=failed, seconds=time.perf_counter() - started)
    writer.finish(summary)
    return summary
