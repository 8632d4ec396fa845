"""qd.export: turn a checkpoint into validated edge models (ONNX, int8 ONNX, Core ML).

Where things are:
  formats.py      the one table of formats (file, exporter, validator, needs)
  api.py          export_checkpoint(): temp file -> validate -> rename, per format
  cli.py          `qd-export`, a thin typer layer with the rich results table
  source.py       the checkpoint (weights_only) and the drawings to validate/calibrate with
  onnx_export.py  fp32 ONNX + metadata;  quantize.py  int8 QDQ;  coreml.py  ML Program
  validate.py     checker, I/O contract, onnxruntime-vs-torch fidelity, side-by-side speed
  card.py         labels.txt and model.json;  atomic.py  write-then-rename for files and folders
"""
