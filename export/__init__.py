"""qd.export: turn a checkpoint into validated edge models (ONNX, int8 ONNX, Core ML)."""
