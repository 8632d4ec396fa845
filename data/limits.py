"""Every size bound on untrusted input, in one place.

Files, headers, checkpoints and model metadata come from people we do not know.
Each size they declare (pixels in an image header, the shape in a `.npy` header,
the architecture in a checkpoint, the bytes its tensors unpack to) is checked
against these bounds *before* anything is allocated, decoded or built; the readers
import them from here. docs/reliability.md lists which test proves each bound.
"""

from __future__ import annotations

# ----------------------------------------------------------------------------- images
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

# ----------------------------------------------------------------------------- .npy
MAX_NPY_HEADER_BYTES = 64 * 1024
MAX_NPY_ROWS = 2**31  # drawings in one file (Google's largest category has ~0.3 M)

# ----------------------------------------------------------------------------- .ndjson
MAX_NDJSON_LINE_BYTES = 1 << 20  # one drawing per line; real ones are a few KiB
MAX_STROKE_POINTS = 100_000  # points in one drawing
MAX_COORDINATE = 1_000.0  # simplified drawings use 0..255; anything far outside is not one
MAX_RAW_COORDINATE = 1_000_000.0  # raw drawings are in canvas pixels (a few thousand at most)

# ----------------------------------------------------------------------------- checkpoints
# What a checkpoint's tensors may unpack to in total (the zip directory says, before any
# byte is read), and how many entries it may hold. The default network's last.pt is 3.5 MB.
MAX_CHECKPOINT_BYTES = 1 << 30
MAX_CHECKPOINT_ENTRIES = 10_000
MAX_PARAMETERS = 20_000_000  # of the network a checkpoint describes, counted before it is built
# Architecture keyword arguments a checkpoint may carry: name -> (smallest, largest).
ARCH_KWARG_BOUNDS: dict[str, tuple[float, float]] = {
    "width": (1, 256),
    "stage3": (1, 8),
    "dropout": (0.0, 0.95),
}

# ----------------------------------------------------------------------------- models and labels
MAX_LABELS = 100_000
MAX_LABEL_CHARS = 256
MAX_MODEL_BYTES = 512 << 20  # an ONNX model qd-infer opens (the default network's is 1.2 MB)
MAX_CARD_BYTES = 16 << 20  # model.json
# Preprocessing numbers (scale, mean, std) must be finite and at most this large in magnitude;
# scale and std (divided by) at least MIN_PREPROCESSING_DIVISOR, so float32 inputs stay finite.
MAX_PREPROCESSING_MAGNITUDE = 1e6
MIN_PREPROCESSING_DIVISOR = 1e-6

# ----------------------------------------------------------------------------- options
MAX_BATCH_SIZE = 4096  # drawings per onnxruntime run (~1 GB of activations for the default network)
MAX_WORKERS = 64  # decoding threads or loader processes
MAX_THREADS = 256  # onnxruntime intra-op threads
