"""qd.evaluate: held-out reports for exported models (qd-eval).

Uses qd.data and qd.infer only; torch (qd.train) is imported lazily, inside the
optional torch backend, so the edge install can evaluate ONNX models.
"""
