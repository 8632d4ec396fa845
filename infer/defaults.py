"""qd-infer's defaults, plain constants (its --help reads them): declared here once, used by the
command, run_inference, qd.Classifier and OnnxClassifier."""

DEFAULT_TOP = 3            # labels shown per drawing
DEFAULT_BATCH_SIZE = 512   # drawings per onnxruntime run
MAX_LANES = 4              # batches onnxruntime runs side by side on .npy/.ndjson input (run.model_lanes)
