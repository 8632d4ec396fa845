"""The model's input contract, stored in every checkpoint and exported model.

Dataset bitmaps are 28x28 uint8 with ink high (255) on a 0 background. The model
sees float32 (B, 1, 28, 28) = (pixel * scale - mean) / std. Later stages read the
spec from the checkpoint or model metadata, never from this module's defaults.
"""

from __future__ import annotations

import numpy as np

from .bitmaps import SIDE

DEFAULT_PREPROCESSING = {
    "input_size": SIDE,
    "channels": 1,
    "layout": "NCHW",
    "polarity": "ink-high",  # white ink (255) on a black (0) background, like Google's bitmaps
    "scale": 1.0 / 255.0,
    "mean": 0.0,
    "std": 1.0,
    "dtype": "float32",
}


def bitmaps_to_input(bitmaps: np.ndarray, spec: dict = DEFAULT_PREPROCESSING) -> np.ndarray:
    """(B, 784) or (B, 28, 28) uint8 ink-high bitmaps -> float32 (B, 1, 28, 28) model input."""
    side = int(spec["input_size"])
    x = np.asarray(bitmaps).reshape(-1, 1, side, side).astype(np.float32)
    x *= np.float32(spec["scale"])
    if spec.get("mean", 0.0) != 0.0 or spec.get("std", 1.0) != 1.0:
        x -= np.float32(spec["mean"])
        x /= np.float32(spec["std"])
    return x
