"""The model's input contract, stored in every checkpoint and exported model.

Dataset bitmaps are 28x28 uint8 with ink high (255) on a 0 background. The model
sees float32 (B, 1, 28, 28) = (pixel * scale - mean) / std. Later stages read the
spec from the checkpoint or model metadata, never from this module's defaults.
"""

from __future__ import annotations

import math

import numpy as np

from .bitmaps import SIDE
from .limits import MAX_PREPROCESSING_MAGNITUDE, MIN_PREPROCESSING_DIVISOR

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


REQUIRED_KEYS = ("input_size", "scale")
NUMBERS = ("scale", "mean", "std")


def check_preprocessing(spec: object) -> dict:
    """A preprocessing spec read from a checkpoint or a model's metadata, checked: a copy with
    scale, mean and std as finite floats (all within +-1e6; scale and std at least 1e-6) and
    input_size 28. ValueError with a one-line reason (the caller names the file)."""
    if not isinstance(spec, dict) or any(key not in spec for key in REQUIRED_KEYS):
        raise ValueError(f"preprocessing must be an object with {', '.join(REQUIRED_KEYS)}")
    checked = dict(spec)
    for key in ("input_size", *NUMBERS):
        if key in spec:
            checked[key] = _bounded_number(key, spec[key])
    if checked["input_size"] != SIDE:
        raise ValueError(f"preprocessing input_size is {checked['input_size']:g}, expected {SIDE}")
    checked["input_size"] = SIDE
    for key in ("scale", "std"):
        if key in checked and not checked[key] >= MIN_PREPROCESSING_DIVISOR:
            raise ValueError(f"preprocessing {key} is {checked[key]:g}, expected at least {MIN_PREPROCESSING_DIVISOR:g}")
    if "polarity" in spec and not isinstance(spec["polarity"], str):
        raise ValueError("preprocessing polarity is not a string")
    return checked


def _bounded_number(key: str, value: object) -> float:
    # Compared as Python numbers first: a 400-digit integer is exact there, but overflows float().
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"preprocessing {key} is not a number")
    if not -MAX_PREPROCESSING_MAGNITUDE <= value <= MAX_PREPROCESSING_MAGNITUDE or not math.isfinite(value):
        raise ValueError(f"preprocessing {key} is not a finite number within "
                         f"+-{MAX_PREPROCESSING_MAGNITUDE:g}")
    return float(value)


def bitmaps_to_input(bitmaps: np.ndarray, spec: dict = DEFAULT_PREPROCESSING) -> np.ndarray:
    """(B, 784) or (B, 28, 28) uint8 ink-high bitmaps -> float32 (B, 1, 28, 28) model input."""
    side = int(spec["input_size"])
    x = np.asarray(bitmaps).reshape(-1, 1, side, side).astype(np.float32)
    x *= np.float32(spec["scale"])
    if spec.get("mean", 0.0) != 0.0 or spec.get("std", 1.0) != 1.0:
        x -= np.float32(spec["mean"])
        x /= np.float32(spec["std"])
    return x
