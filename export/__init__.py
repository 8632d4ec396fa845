"""qd.export: turn a checkpoint into validated edge models (ONNX, int8 ONNX, Core ML).

Where things are:
  formats.py      the one table of formats (file, exporter, validator, needs)
  api.py          export_checkpoint(): temp file -> validate -> rename, per format
  cli.py          `qd-export`, a thin typer layer with the rich results table
  checkpoint_source.py  the checkpoint (weights_only) and the drawings to validate/calibrate with
  context.py      the state one run shares between its formats, and what a check reports
  confidence.py   the temperature and the open-set threshold, fitted on the validation split
  onnx_export.py  fp32 ONNX + metadata;  quantize.py  int8 QDQ;  coreml.py  ML Program
  canvas.py, canvas_export.py, canvas_render.py  the canvas models and their validation canvases
  validate.py     checker, I/O contract, onnxruntime-vs-torch fidelity, side-by-side speed
  card.py         labels.txt and model.json;  folder.py  the export folder replaced as a whole
Files are written with qd.files (write-then-rename for files and folders).
"""
