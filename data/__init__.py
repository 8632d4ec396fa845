"""qd.data: the ground floor. Quick, Draw! bitmap files, the class list, the split and the
preprocessing that every other stage reads. Never imports torch.

The model contract (names, metadata keys, file names, preprocessing, size limits): contract.py.
Bitmap files, categories, the split and the dataset: bitmaps.py. Getting the files: sources.py
(Google's bucket, a mirror URL or a folder), fetch.py (verified, resumable downloads), cli.py
(`qd-data fetch` / `qd-data list` / `qd-data import`). Real images: images.py; strokes:
strokes.py; both in worker processes: decode.py; your own drawings: importer.py."""
