"""qd-export's defaults and format names, torch-free so `qd-export --help` prints without loading torch.

The modules that use them (context.py, formats.py, checkpoint_source.py) import them from here;
formats.py checks that its table names exactly FORMAT_NAMES."""

DEFAULT_OPSET = 18
DEFAULT_INT8_TOLERANCE = 0.01  # share of test drawings whose top-1 int8 may change (qd.export.validate.allowed_changes)
DEFAULT_INT8_MAX_PROB_DIFF = 0.25  # largest change of any probability of any test drawing
DEFAULT_MAX_DRAWINGS = 10_000  # test-split drawings the exported models are checked on
FORMAT_NAMES = ("onnx", "onnx-int8", "coreml", "onnx-canvas", "coreml-canvas")  # in table order
DEFAULT_FORMATS = "onnx"
ALL = "all"
