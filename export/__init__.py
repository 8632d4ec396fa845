"""qd.export: turn a checkpoint into validated edge models (ONNX, int8 ONNX, Core ML).

Where things are:
  formats.py      the one table of formats (file, exporter, validator, needs, qd-eval backend) and
                  qd-export's options; torch-free, read by --help and qd-eval
  cli.py          `qd-export`, a thin typer layer with the rich results table
  run.py          export_checkpoint(): temp file -> validate -> rename, per format, in a staging
                  folder swapped in as a whole; labels.txt and the model.json card
  checkpoint_source.py  the checkpoint (weights_only), the drawings to validate/calibrate with, the
                  temperature and open-set threshold fitted on them, the state a run's formats share
  onnx_export.py  fp32 ONNX + metadata, and the ONNX checks (checker, I/O contract, fidelity)
  quantize.py     int8 QDQ;  coreml.py  ML Program;  canvas.py  the canvas models
  validate.py     the onnxruntime sessions the validators run
Files are written with qd.files (write-then-rename for files and folders).
"""
