"""The qd-infer pipeline: inputs -> fixed-size batches -> one onnxruntime run per batch -> writer."""

from __future__ import annotations

import os
import time

import numpy as np

from qd.data.bitmaps import PIXELS
from qd.data.preprocess import bitmaps_to_input

from .inputs import Drawings, Failure, read_inputs
from .model import OnnxClassifier, resolve_model_path, top_k
from .openset import PROBABILITIES
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
                  writer: Writer | None = None, unknown_threshold: float | None = None,
                  flag_unknown: bool = True) -> Summary:
    """`unknown_threshold` replaces the model's open-set threshold; `flag_unknown=False` turns the rule off."""
    classifier = OnnxClassifier(resolve_model_path(model), threads=threads, unknown_threshold=unknown_threshold,
                                flag_unknown=flag_unknown)
    top = min(top, classifier.num_classes)
    inputs = [str(i) for i in inputs]
    base = inputs[0] if len(inputs) == 1 and os.path.isdir(inputs[0]) else None
    open_set = classifier.open_set is not None
    writer = writer or make_writer(fmt, classifier.labels, top, base=base, open_set=open_set)
    if flag_unknown and not open_set:
        writer.notice(f"{classifier.path}: exported without an open-set rule, so drawings of other categories "
                      "cannot be flagged unknown (export the checkpoint again with qd-export)")
    started = time.perf_counter()
    classified = failed = flagged = 0
    batcher = Batcher(batch_size)

    def run(names, bitmaps):
        nonlocal flagged
        outputs = classifier.outputs(bitmaps_to_input(bitmaps, classifier.preprocessing))
        unknown = classifier.unknown(outputs)
        index, values = top_k(outputs[PROBABILITIES], top)
        writer.rows(names, index, values, unknown)
        flagged += 0 if unknown is None else int(unknown.sum())
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
    summary = Summary(classified=classified, failed=failed, seconds=time.perf_counter() - started,
                      unknown=flagged if open_set else None)
    writer.finish(summary)
    return summary
