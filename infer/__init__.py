"""qd.infer: classify drawings with an exported ONNX model and onnxruntime. Never imports torch."""
