"""Running the diffusers pipeline on one micro-batch of rows that share their settings."""

from __future__ import annotations

import numpy as np

from workers.rows import RowSpec


def generate(pipeline, rows: list[RowSpec]) -> np.ndarray:
    """Images for `rows` as float32 (N, H, W, 3) in [0, 1]; non-finite values are kept for the caller.

    Each image's noise comes only from its own CPU generator seeded with the row's seed, so an image
    does not depend on the batch it ran in.
    """
    import torch

    first = rows[0]
    assert all(row.batch_key == first.batch_key for row in rows), "a micro-batch must share its settings"
    result = pipeline(
        prompt=[row.prompt for row in rows],
        negative_prompt=[row.negative_prompt for row in rows],
        num_inference_steps=first.steps,
        guidance_scale=first.guidance_scale,
        width=first.width,
        height=first.height,
        generator=[torch.Generator("cpu").manual_seed(row.seed) for row in rows],
        output_type="np",
    )
    return np.asarray(result.images, dtype=np.float32)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """The same rounding diffusers uses when it returns PIL images."""
    return (image * 255).round().astype(np.uint8)
