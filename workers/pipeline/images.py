"""Encoding generated images for the output: PNG (lossless), WebP or JPEG, with their sha256."""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
from PIL import Image

from workers.tasks import ImageEncoding

_PIL_FORMATS = {"png": "PNG", "webp": "WEBP", "jpeg": "JPEG"}


def encode_image(pixels: np.ndarray, encoding: ImageEncoding) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    if encoding.image_format == "png":
        image.save(buffer, format="PNG", compress_level=encoding.png_compress_level)
    else:
        image.save(buffer, format=_PIL_FORMATS[encoding.image_format], quality=encoding.quality)
    return buffer.getvalue()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encode_and_hash(pixels: np.ndarray, encoding: ImageEncoding) -> tuple[bytes, str]:
    data = encode_image(pixels, encoding)
    return data, sha256_hex(data)


class ImageEncoder:
    """Encodes on CPU threads so the accelerator can generate the next batch meanwhile.

    PIL's encoders release the GIL, so threads run in parallel with the pipeline. With no threads,
    encoding happens inline (futures come back already done)."""

    def __init__(self, encoding: ImageEncoding, threads: int):
        self.encoding = encoding
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="encode") if threads > 0 else None

    def submit(self, pixels: np.ndarray) -> Future:
        if self.pool is not None:
            return self.pool.submit(encode_and_hash, pixels, self.encoding)
        future: Future = Future()
        try:
            future.set_result(encode_and_hash(pixels, self.encoding))
        except Exception as error:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(error)
        return future
