"""Small random PNGs, and folders of them."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

PICTURE_SIZE = 16


def png(seed: int, size: int = 16) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def picture(seed: int, bright: int = 0) -> bytes:
    """A random PNG; `bright` shifts the reference set's distribution away from the run's."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 200, (PICTURE_SIZE, PICTURE_SIZE, 3)) + bright + rng.integers(0, 40)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_image_folder(folder, pngs) -> str:
    (folder / "sub").mkdir(parents=True)
    for i, data in enumerate(pngs):  # some in a subfolder: folders are read recursively
        (folder / ("sub" if i % 2 else "") / f"{i:03d}.png").write_bytes(data)
    return str(folder)
