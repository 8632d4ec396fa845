"""`qd.Classifier`: the one Python entry point. An exported model in, typed predictions out.

    from qd import Classifier
    clf = Classifier("artifacts/exports/demo")
    print(clf.predict("my-drawings/cat.png")[0].label)

It is a thin layer over what qd-infer runs: OnnxClassifier (labels, preprocessing,
calibration and the open-set rule from the model's metadata) run by the same BatchRunner
(a drawing the model cannot classify is a Prediction with `error` set), read_inputs (files
and folders) and qd.data.images (photos and scans). No torch.

`predict` returns one Prediction per drawing, in order, whatever it is given: a path, a
list of paths, a folder, a PIL image (or a list of them), an array of one or more
drawings, or Quick, Draw! strokes. A shape it cannot read as drawings is refused, never
guessed at: a (28, 28) array is one drawing, not 28.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qd.command import QDError
from qd.data.contract import PIXELS, PROBABILITIES, SIDE

from . import DEFAULT_BATCH_SIZE, DEFAULT_TOP
from .inputs import Drawings, check_float_range, floats_to_uint8, read_inputs
from .model import BatchRunner, OnnxClassifier, resolve_model_path, top_k

ARRAY_SHAPES = "(28, 28), (N, 28, 28), (N, 1, 28, 28), (784,) or (N, 784)"


@dataclass(frozen=True)
class Guess:
    """One class and its (calibrated) probability."""

    label: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    """The answer for one drawing: `label` and `probability` are the top guess, `top` the k best
    (most likely first); `unknown` is the open-set rule's answer (None when the model has no rule or
    it was turned off). For an input that could not be read, `error` says why and the rest is empty."""

    input: str
    label: str | None
    probability: float | None
    top: tuple[Guess, ...]
    unknown: bool | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Classifier:
    """An exported quickdraw-edge model: `Classifier(path)` with a model.onnx or an export folder
    (None: the newest ARTIFACTS/exports/*/model.onnx).

    `unknown_threshold` replaces the model's open-set threshold; `flag_unknown=False` turns the
    rule off (every `unknown` is then None)."""

    def __init__(self, path: str | os.PathLike | None = None, threads: int | None = None,
                 unknown_threshold: float | None = None, flag_unknown: bool = True):
        self.model = OnnxClassifier(resolve_model_path(path), threads=threads,
                                    unknown_threshold=unknown_threshold, flag_unknown=flag_unknown)

    @property
    def labels(self) -> list[str]:
        return self.model.labels

    @property
    def path(self) -> Path:
        return self.model.path

    def predict(self, x: Any, top: int = DEFAULT_TOP, batch_size: int = DEFAULT_BATCH_SIZE,
                workers: int = 1) -> list[Prediction]:
        """One Prediction per drawing in `x`, in order.

        `x`: a path (image, .npy, .ndjson, or a folder of them), a list of paths, a PIL image or a
        list of them, a uint8 (0..255) or float (0..1) array shaped (28, 28), (N, 28, 28),
        (N, 1, 28, 28), (784,) or (N, 784), ink-high like Quick, Draw!'s bitmaps, or strokes
        (`[[xs], [ys]], ...` as in Quick, Draw!'s simplified .ndjson) or a list of such drawings.
        An unreadable file becomes a Prediction with `error` set; the others are still classified.
        `workers`: processes decoding image files.

        >>> clf = Classifier(export_folder)
        >>> [one] = clf.predict(np.zeros((28, 28), dtype=np.uint8))  # one drawing in, one answer out
        >>> one.label in clf.labels, len(one.top), one.top[0].label == one.label
        (True, 3, True)
        >>> len(clf.predict(np.zeros((5, 784), dtype=np.float32), top=1))
        5
        >>> square = [[[10, 240, 240, 10, 10], [10, 10, 240, 240, 10]]]  # one stroke: [xs], [ys]
        >>> len(clf.predict(square)), len(clf.predict([square, square]))
        (1, 2)
        >>> [bad] = clf.predict(["no/such/file.png"])
        >>> bad.ok, bad.error
        (False, 'no/such/file.png: no such file or directory')
        """
        if not 1 <= top:
            raise QDError(f"top must be at least 1, got {top}")
        if _is_path(x) or (_is_sequence(x) and x and all(_is_path(item) for item in x)):
            paths = [x] if _is_path(x) else list(x)
            return self._predict_paths(paths, top, batch_size, workers)
        bitmaps = as_bitmaps(x)
        names = [f"drawing[{i}]" for i in range(len(bitmaps))]
        return self._predict_bitmaps(names, bitmaps, top, batch_size)

    def _predict_paths(self, paths, top, batch_size, workers) -> list[Prediction]:
        results: list[Prediction] = []
        for event in read_inputs(paths, workers=workers, chunk_rows=batch_size):
            if isinstance(event, Drawings):
                results += self._predict_bitmaps(event.names, event.bitmaps, top, batch_size)
            else:
                where = event.message.split(": ", 1)[0]
                results.append(Prediction(where, None, None, (), None, error=event.message))
        return results

    def _predict_bitmaps(self, names: list[str], bitmaps: np.ndarray, top: int, batch_size: int) -> list[Prediction]:
        labels = self.model.labels
        results: list[Prediction] = []

        def write(batch_names: list[str], outputs: dict[str, np.ndarray]) -> None:
            unknown = self.model.unknown(outputs)
            flags = [None] * len(batch_names) if unknown is None else unknown.tolist()
            index, values = top_k(outputs[PROBABILITIES], top)
            for name, row_i, row_p, flagged in zip(batch_names, index.tolist(), values.tolist(), flags):
                guesses = tuple(Guess(labels[i], p) for i, p in zip(row_i, row_p))
                results.append(Prediction(name, guesses[0].label, guesses[0].probability, guesses, flagged))

        def report_failure(message: str, name: str) -> None:
            results.append(Prediction(name, None, None, (), None, error=message))

        runner = BatchRunner(self.model.bitmap_outputs, write, report_failure, batch_size)
        try:
            runner.run(names, np.asarray(bitmaps))
        finally:
            runner.close()
        return results


# ----------------------------------------------------------------------------- what predict() accepts

def as_bitmaps(x: Any) -> np.ndarray:
    """Anything predict() accepts but paths -> uint8 (N, 784) ink-high bitmaps, or a QDError."""
    from PIL import Image

    if isinstance(x, Image.Image):
        return _image_bitmaps([x])
    if _is_sequence(x) and x and all(isinstance(item, Image.Image) for item in x):
        return _image_bitmaps(list(x))
    if isinstance(x, dict) and "drawing" in x:  # one record of Quick, Draw!'s .ndjson
        return _stroke_bitmaps([x["drawing"]])
    if isinstance(x, list) and x and _looks_like_strokes(x):
        return _stroke_bitmaps([x])
    if isinstance(x, list) and x and all(isinstance(d, list) and d and _looks_like_strokes(d) for d in x):
        return _stroke_bitmaps(x)
    if isinstance(x, np.ndarray) or (_is_sequence(x) and x):
        return _array_bitmaps(np.asarray(x))
    raise QDError(f"cannot classify a {type(x).__name__}: give a path, a list of paths, a PIL image, "
                  f"an array shaped {ARRAY_SHAPES}, or Quick, Draw! strokes")


def _array_bitmaps(array: np.ndarray) -> np.ndarray:
    shape = array.shape
    if shape in ((SIDE, SIDE), (PIXELS,)):
        array = array.reshape(1, PIXELS)
    elif len(shape) == 3 and shape[1:] == (SIDE, SIDE) or len(shape) == 4 and shape[1:] == (1, SIDE, SIDE):
        array = array.reshape(shape[0], PIXELS)
    elif not (len(shape) == 2 and shape[1] == PIXELS):
        raise QDError(f"array of shape {shape}: expected {ARRAY_SHAPES}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype.kind not in "fiu" or array.dtype == np.bool_:
        raise QDError(f"array of dtype {array.dtype}: expected uint8 (0-255) or float (0-1)")
    if array.dtype.kind in "iu":
        if array.size and (array.min() < 0 or array.max() > 255):
            raise QDError(f"integer array with values {array.min()}..{array.max()}: expected 0..255")
        return array.astype(np.uint8)
    check_float_range("array", array)
    return floats_to_uint8(array)


def _image_bitmaps(images: list) -> np.ndarray:
    from qd.data.images import image_to_bitmap

    return np.stack([image_to_bitmap(image).reshape(PIXELS) for image in images])


def _stroke_bitmaps(drawings: list) -> np.ndarray:
    from qd.data.strokes import render_strokes

    bitmaps = []
    for i, strokes in enumerate(drawings):
        try:
            bitmaps.append(render_strokes(strokes).reshape(PIXELS))
        except ValueError as exc:
            raise QDError(f"drawing {i}: {exc}") from None
    return np.stack(bitmaps)


def _looks_like_strokes(drawing: list) -> bool:
    """[[xs], [ys]] or [[xs], [ys], [ts]] per stroke, as Quick, Draw! writes them."""
    return all(isinstance(s, list) and len(s) in (2, 3) and all(isinstance(c, list) for c in s) for s in drawing)


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _is_sequence(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and not isinstance(x, str)


__all__ = ["Classifier", "Guess", "Prediction"]
