"""The model contract: the names and metadata every exported model carries (docs/contracts.md).

Written here once, torch-free, and imported by qd-export (which writes it), qd-infer, qd-eval and
qd-demo (which read it). The browser page reads the same keys; tests check it against this module.
"""

from __future__ import annotations

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

LICENSE_NOTE = "Quick, Draw! data by Google, CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)"

# The canvas models (onnx-canvas, coreml-canvas; docs/canvas.md): an app's canvas in.
CANVAS_INPUT = "canvas"            # float32 (1, 1, H, W) grey levels 0-255 (Core ML: a grayscale image)
BITMAP = "bitmap"                  # (1, 1, 28, 28) 0-255 ink high: what the network saw
CANVAS_OUTPUTS = (PROBABILITIES, LOGITS, BITMAP)
META_CANVAS = "qd.canvas"          # JSON: the input's name, size limits and the blank answer
BLANK_LOGIT = -1e4                 # every logit of a blank canvas (probabilities all 0)

