"""Helpers for the real-image tests: real Quick, Draw! drawings as the images people make."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def correlation(a, b) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-12))


def bitmap_as_paper(bitmap: np.ndarray, size: int) -> Image.Image:
    """A 28x28 ink-high bitmap as a black-on-white drawing of `size` px (smooth upscale)."""
    return Image.fromarray(255 - np.asarray(bitmap, np.uint8).reshape(28, 28)).resize((size, size), Image.BILINEAR)


def off_centre(image: Image.Image, canvas=(1600, 1200), at=(150, 700), scale=0.5) -> Image.Image:
    small = image.resize((int(image.width * scale), int(image.height * scale)), Image.BILINEAR)
    out = Image.new("L", canvas, 255)
    out.paste(small, at)
    return out


def photo_of_paper(ink_on_white: Image.Image, seed: int = 0, quality: int = 60) -> Image.Image:
    """Grey paper with a lighting gradient, faint ink, sensor noise and JPEG compression, RGB."""
    rng = np.random.default_rng(seed)
    a = np.asarray(ink_on_white.convert("L"), dtype=np.float64) / 255.0
    h, w = a.shape
    yy, xx = np.mgrid[0:h, 0:w]
    paper = 170 + 40 * (xx / w) - 20 * (yy / h)
    photo = paper * a + (paper - 60) * (1 - a) + rng.normal(0, 5, a.shape)
    tint = np.stack([photo + 6, photo, photo - 10], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(np.clip(tint, 0, 255).astype(np.uint8), "RGB").save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (8-bit grey) with almost no data: a bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))
