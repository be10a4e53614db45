"""Running the diffusers pipeline on one micro-batch of rows that share their settings."""

from __future__ import annotations

from workers.rows import RowSpec


def generate(pipeline, rows: list[RowSpec], pad_to: int | None = None):
    """Images for `rows` as a float tensor (N, H, W, 3) in [0, 1] on the pipeline's device.

    Each image's noise comes only from its own CPU generator seeded with the row's seed, so an image
    does not depend on the batch it ran in. With `pad_to`, the batch is filled up with copies of its
    last row (dropped from the result), so a compiled model always sees the same batch size.
    Non-finite values are kept for the caller to find.
    """
    import torch

    first = rows[0]
    assert all(row.batch_key == first.batch_key for row in rows), "a micro-batch must share its settings"
    padded = rows + [rows[-1]] * (pad_to - len(rows)) if pad_to and len(rows) < pad_to else rows
    result = pipeline(
        prompt=[row.prompt for row in padded],
        negative_prompt=[row.negative_prompt for row in padded],
        num_inference_steps=first.steps,
        guidance_scale=first.guidance_scale,
        width=first.width,
        height=first.height,
        generator=[torch.Generator("cpu").manual_seed(row.seed) for row in padded],
        output_type="pt",
    )
    return result.images[: len(rows)].permute(0, 2, 3, 1).float()


def to_uint8(images):
    """The same float32 rounding diffusers uses when it returns PIL images, done on the device."""
    import torch

    return (images * 255).round().clamp(0, 255).to(torch.uint8)


def finite_rows(images) -> list[bool]:
    return images.isfinite().flatten(1).all(dim=1).tolist()
