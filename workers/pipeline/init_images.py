"""Reading a row's init image (image-to-image and reconstruct modes): bytes, a path or a URI."""

from __future__ import annotations

import io

from workers.errors import InitImageError, one_line
from workers.io import storage


def load_init_image(value: bytes | str, width: int, height: int, policy: str):
    """The init image as an RGB PIL image of exactly width x height.

    `policy` says what to do with another size: "resize" (Lanczos) or "error" (the row fails).
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, str):
        try:
            data = storage.read_bytes(value)
        except OSError as error:
            raise InitImageError(f"init_image: cannot read {value}: {one_line(error)}") from None
    else:
        data = value
    image: Image.Image
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
        raise InitImageError(f"init_image: not a decodable image ({type(error).__name__}: {error})") from None
    image = image.convert("RGB")
    if image.size != (width, height):
        if policy == "error":
            raise InitImageError(
                f"init_image is {image.width}x{image.height} px, the row asks for {width}x{height} "
                "(generation.init_image_policy: error)"
            )
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image
