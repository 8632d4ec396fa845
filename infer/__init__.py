"""qd.infer: classify drawings with an exported ONNX model and onnxruntime. Never imports torch.

The model and everything that runs it (model.py), qd.Classifier (classifier.py), qd-infer's
pipeline and output (run.py), its inputs (inputs.py), its command (cli.py) and Ray driver and
workers (ray.py), qd-demo (demo.py, web/) and the demo's sample drawings (samples.py).

qd-infer's defaults are plain constants here, declared once: the command's --help reads them
without loading numpy, and the library uses the same ones.
"""

DEFAULT_TOP = 3            # labels shown per drawing
DEFAULT_BATCH_SIZE = 512   # drawings per onnxruntime run
MAX_LANES = 4              # batches onnxruntime runs side by side on .npy/.ndjson input (run.model_lanes)
