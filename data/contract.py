"""The model contract: names, metadata keys, file names, preprocessing and size limits
(docs/contracts.md), each written here once.

- the drawing: 28 x 28 pixels (SIDE), Google's bitmap layout;
- the model: graph inputs and outputs, metadata keys (ONNX metadata_props, Core ML user-defined
  metadata), format tags. qd-export writes them; qd-infer, qd-eval and qd-demo read them; the
  browser page reads the same keys (tests check it against this module);
- the preprocessing: the input spec stored in every checkpoint and exported model, its check,
  and bitmaps -> model input;
- the artifact layout: where data comes from, where every command writes by default, and the
  file names inside run and export folders;
- the size bounds on untrusted input.

Plain constants and small functions, torch-free and numpy-free at import: every command's --help
reads this module.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

SIDE = 28
PIXELS = SIDE * SIDE  # 784


# ----------------------------------------------------------------------------- the model

MODEL_FORMAT = "qd-onnx-v1"        # the value of META_FORMAT in every model this version writes or reads
CHECKPOINT_FORMAT = "qd-checkpoint-v1"
CARD_FORMAT = "qd-export-card-v1"  # model.json
EVAL_REPORT_FORMAT = "qd-eval-report-v1"

# Graph I/O (ONNX): float32 (batch, 1, 28, 28) in; (batch, classes) out.
INPUT = "image"
PROBABILITIES = "probabilities"    # softmax(logits / temperature)
LOGITS = "logits"                  # raw, what the open-set rule reads
OUTPUTS = (PROBABILITIES, LOGITS)

# Metadata keys (ONNX metadata_props, Core ML user-defined metadata); every value is a string.
META_FORMAT = "qd.format"
META_LABELS = "qd.labels"                # JSON list of class names, in output order
META_PREPROCESSING = "qd.preprocessing"  # JSON object: input_size, scale, mean, std, ...
META_ARCH = "qd.arch"                    # JSON {"name", "kwargs"}
META_SPLIT = "qd.split"                  # JSON: how train/val/test were assigned
META_DATA = "qd.data"                    # JSON: the data folder, categories, counts
META_SOURCE_SHA256 = "qd.source_sha256"  # sha256 of the checkpoint it was exported from
META_SOURCE_CHECKPOINT = "qd.source_checkpoint"  # its file name (Core ML)
META_VERSION = "qd.version"
META_LICENSE = "qd.license"
META_PRECISION = "qd.precision"          # "fp32" or "int8"
META_TEMPERATURE = "qd.temperature"      # JSON number T > 0
META_OPEN_SET = "qd.open_set"            # JSON {"rule", "threshold", "kept", "validation"}

# The share of the known validation drawings the fitted open-set threshold keeps, when an export names none.
DEFAULT_KEPT = 0.93


def check_kept(kept: float) -> None:
    """`--kept` is a share strictly between 0 and 1 (NaN is refused too)."""
    from qd.command import QDError

    if not 0 < kept < 1:
        raise QDError(f"--kept must be a share between 0 and 1 (e.g. 0.95), got {kept}")


def fit_threshold(scores: np.ndarray, kept: float) -> float:
    """The largest threshold that keeps at least `kept` of `scores` (unknown = score < threshold): the
    open-set threshold qd-export fits on the known validation drawings, and the one qd-train measures
    its validation negatives against after every epoch."""
    import numpy as np  # here, not above: every command's --help reads this module, and needs no numpy

    from qd.command import QDError

    check_kept(kept)
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    if len(scores) == 0:
        raise QDError("no validation drawings to fit the open-set threshold on")
    flagged = int(math.floor((1.0 - kept) * len(scores) + 1e-9))
    return float(scores[flagged])

LICENSE_NOTE = "Quick, Draw! data by Google, CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)"

# The canvas models (onnx-canvas, coreml-canvas; docs/canvas.md): an app's canvas in.
CANVAS_INPUT = "canvas"            # float32 (1, 1, H, W) grey levels 0-255 (Core ML: a grayscale image)
BITMAP = "bitmap"                  # (1, 1, 28, 28) 0-255 ink high: what the network saw
CANVAS_OUTPUTS = (PROBABILITIES, LOGITS, BITMAP)
META_CANVAS = "qd.canvas"          # JSON: the input's name, size limits and the blank answer
BLANK_LOGIT = -1e4                 # every logit of a blank canvas (probabilities all 0)


# ----------------------------------------------------------------------------- preprocessing
# The model's input contract, stored in every checkpoint and exported model. Dataset bitmaps
# are 28x28 uint8 with ink high (255) on a 0 background. The model sees float32 (B, 1, 28, 28)
# = (pixel * scale - mean) / std. Later stages read the spec from the checkpoint or model
# metadata, never from these defaults.

DEFAULT_PREPROCESSING = {
    "input_size": SIDE,
    "channels": 1,
    "layout": "NCHW",
    "polarity": "ink-high",  # white ink (255) on a black (0) background, like Google's bitmaps
    "scale": 1.0 / 255.0,
    "mean": 0.0,
    "std": 1.0,
    "dtype": "float32",
}


REQUIRED_KEYS = ("input_size", "scale")
NUMBERS = ("scale", "mean", "std")


def check_preprocessing(spec: object) -> dict:
    """A preprocessing spec read from a checkpoint or a model's metadata, checked: a copy with
    scale, mean and std as finite floats (all within +-1e6; scale and std at least 1e-6) and
    input_size 28. ValueError with a one-line reason (the caller names the file)."""
    if not isinstance(spec, dict) or any(key not in spec for key in REQUIRED_KEYS):
        raise ValueError(f"preprocessing must be an object with {', '.join(REQUIRED_KEYS)}")
    checked = dict(spec)
    for key in ("input_size", *NUMBERS):
        if key in spec:
            checked[key] = _bounded_number(key, spec[key])
    if checked["input_size"] != SIDE:
        raise ValueError(f"preprocessing input_size is {checked['input_size']:g}, expected {SIDE}")
    checked["input_size"] = SIDE
    for key in ("scale", "std"):
        if key in checked and not checked[key] >= MIN_PREPROCESSING_DIVISOR:
            raise ValueError(f"preprocessing {key} is {checked[key]:g}, expected at least {MIN_PREPROCESSING_DIVISOR:g}")
    if "polarity" in spec and not isinstance(spec["polarity"], str):
        raise ValueError("preprocessing polarity is not a string")
    return checked


def _bounded_number(key: str, value: object) -> float:
    # Compared as Python numbers first: a 400-digit integer is exact there, but overflows float().
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"preprocessing {key} is not a number")
    if not -MAX_PREPROCESSING_MAGNITUDE <= value <= MAX_PREPROCESSING_MAGNITUDE or not math.isfinite(value):
        raise ValueError(f"preprocessing {key} is not a finite number within "
                         f"+-{MAX_PREPROCESSING_MAGNITUDE:g}")
    return float(value)


def bitmaps_to_input(bitmaps: np.ndarray, spec: dict = DEFAULT_PREPROCESSING) -> np.ndarray:
    """(B, 784) or (B, 28, 28) uint8 ink-high bitmaps -> float32 (B, 1, 28, 28) model input."""
    import numpy as np  # here, not above: every command's --help reads this module, and needs no numpy

    side = int(spec["input_size"])
    x = np.asarray(bitmaps).reshape(-1, 1, side, side).astype(np.float32)
    x *= np.float32(spec["scale"])
    if spec.get("mean", 0.0) != 0.0 or spec.get("std", 1.0) != 1.0:
        x -= np.float32(spec["mean"])
        x /= np.float32(spec["std"])
    return x


# ----------------------------------------------------------------------------- artifact layout
# Where data comes from and every command writes by default, and the file names.

# Environment variables that change a default (shown as [env var: ...] in each command's help).
ARTIFACTS_ENV = "QD_ARTIFACTS"     # root of the default data, runs, exports and eval folders
SOURCE_ENV = "QD_DATA_SOURCE"      # where qd-data fetch gets bitmap files
ORT_WEB_DIST_ENV = "QD_ORT_WEB_DIST"  # onnxruntime-web's dist/ folder for qd-demo

DEFAULT_SOURCE = "https://storage.googleapis.com/quickdraw_dataset/full/numpy_bitmap"
DEFAULT_TIMEOUT = 30.0  # seconds to wait on the network
# The pace a download must keep: this many bytes in every window of --timeout seconds (or be done).
# 64 KiB per 30 s (the default --timeout) is about 2 kB/s: no real link is slower, a dripping server is.
MIN_FETCH_BYTES_PER_WINDOW = 64 * 1024
DEFAULT_RETRIES = 3     # further attempts per file after a network failure (each one resumes)


def artifacts_root() -> Path:
    """$QD_ARTIFACTS, else ./artifacts relative to the current directory."""
    return Path(os.environ.get(ARTIFACTS_ENV) or "artifacts")


def default_data_dir() -> Path:
    """Where `qd-data fetch` puts bitmap files and training reads them: <artifacts>/data."""
    return artifacts_root() / "data"


# File names inside a run folder (qd-train) and an export folder (qd-export).
BEST_CHECKPOINT, LAST_CHECKPOINT = "best.pt", "last.pt"
MODEL_ONNX = "model.onnx"
MODEL_INT8_ONNX = "model.int8.onnx"
MODEL_COREML = "model.mlpackage"
MODEL_CANVAS_ONNX = "model.canvas.onnx"
MODEL_CANVAS_COREML = "model.canvas.mlpackage"
MODEL_CARD = "model.json"
LABELS_FILE = "labels.txt"
INT8_PREPARED = "model.prep.onnx"  # int8's intermediate file, never left behind


def runs_dir() -> Path:
    """Where `qd-train` puts run folders: <artifacts>/runs."""
    return artifacts_root() / "runs"


def exports_dir() -> Path:
    """Where `qd-export` puts export folders: <artifacts>/exports."""
    return artifacts_root() / "exports"


def eval_dir() -> Path:
    """Where `qd-eval` puts reports: <artifacts>/eval."""
    return artifacts_root() / "eval"


# ----------------------------------------------------------------------------- size bounds
# Every size bound on untrusted input, in one place.
#
# Files, headers, checkpoints and model metadata come from people we do not know.
# Each size they declare (pixels in an image header, the shape in a `.npy` header,
# the architecture in a checkpoint, the bytes its tensors unpack to) is checked
# against these bounds *before* anything is allocated, decoded or built; the readers
# import them from here. docs/reliability.md lists which test proves each bound.

# -- images
# The gate: each accepted file suffix and the only decoder (Pillow format) that may read it
# (the formats docs/inference.md lists). A file is decoded only if its content is what its
# name says (qd.data.images).
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".gif": "GIF", ".webp": "WEBP"}
IMAGE_SUFFIXES = tuple(IMAGE_FORMATS)
# An image whose header promises more pixels is refused before any pixel is decoded
# (decompression bombs). 50 M pixels (~7000 x 7000) decode to at most 200 MB (RGBA).
MAX_PIXELS = 50_000_000
# Decoded images with more pixels are box-averaged by an integer factor down to at most
# this many before the preprocessing runs, which costs about 25 bytes a pixel: one worker
# then peaks near 250 MB on the largest image allowed, instead of 1.2 GB.
WORK_PIXELS = 2048 * 2048

# The canvas models (qd-export's onnx-canvas, coreml-canvas) take a canvas of at least this many
# and at most this many pixels a side: at most WORK_PIXELS, so no reduction step is needed.
MIN_CANVAS_SIDE = 28
MAX_CANVAS_SIDE = 2048

# -- .npy
MAX_NPY_HEADER_BYTES = 64 * 1024
MAX_NPY_ROWS = 2**31  # drawings in one file (Google's largest category has ~0.3 M)

# -- .ndjson
MAX_NDJSON_LINE_BYTES = 1 << 20  # one drawing per line; real ones are a few KiB
MAX_STROKE_POINTS = 100_000  # points in one drawing
MAX_COORDINATE = 1_000.0  # simplified drawings use 0..255; anything far outside is not one
MAX_RAW_COORDINATE = 1_000_000.0  # raw drawings are in canvas pixels (a few thousand at most)

# -- checkpoints
# What a checkpoint's tensors may unpack to in total (the zip directory says, before any
# byte is read), and how many entries it may hold. The default network's last.pt is 3.5 MB.
MAX_CHECKPOINT_BYTES = 1 << 30
MAX_CHECKPOINT_ENTRIES = 10_000
MAX_PARAMETERS = 20_000_000  # of the network a checkpoint describes, counted before it is built

# -- models and labels
MAX_LABELS = 100_000
MAX_LABEL_CHARS = 256
# A category's file, `<name>.npy`, and the hidden files beside it (`.<name>.npy.<random>.tmp`,
# `.<name>.npy.part.json`) must each fit in a file name (255 bytes on Linux and macOS).
MAX_CATEGORY_NAME_BYTES = 200
MAX_MODEL_BYTES = 512 << 20  # an ONNX model qd-infer opens (the default network's is 1.2 MB)
MAX_MODEL_NODES = 10_000  # in its graph (a canvas model has ~400, the default network ~20)
MAX_RUN_BYTES = 1 << 30  # onnxruntime's memory in one process (the default network at MAX_BATCH_SIZE: ~800 MiB)
MAX_CARD_BYTES = 16 << 20  # model.json
# Preprocessing numbers (scale, mean, std) must be finite and at most this large in magnitude;
# scale and std (divided by) at least MIN_PREPROCESSING_DIVISOR, so float32 inputs stay finite.
MAX_PREPROCESSING_MAGNITUDE = 1e6
MIN_PREPROCESSING_DIVISOR = 1e-6

# -- options
MAX_BATCH_SIZE = 4096  # drawings per onnxruntime run (~1 GB of activations for the default network)
MAX_WORKERS = 64  # decoding threads or loader processes
MAX_THREADS = 256  # onnxruntime intra-op threads
