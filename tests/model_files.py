"""Copies of exported models with edited metadata, for tests of how readers treat them."""

from pathlib import Path
from typing import Callable


def model_with_metadata(src: Path, dst: Path, change: Callable[[dict], object]) -> Path:
    """Copy the ONNX model `src` to `dst` after `change(props)` edits its metadata_props as a dict."""
    import onnx

    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    change(props)
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(dst))
    return dst
