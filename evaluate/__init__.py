"""qd.evaluate: held-out reports for exported models (qd-eval).

Uses qd.data and qd.infer only; torch (qd.train) is imported lazily, inside the
optional torch backend, so the edge install can evaluate ONNX models.

The model and its backends (backends.py), held-out drawings (heldout.py), metrics and
calibration (metrics.py), the evaluation as an API (evaluation.py), report.json, the terminal
report and the plots (report.py), the command (cli.py).
"""
