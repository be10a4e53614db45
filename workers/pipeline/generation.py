"""Running the diffusers pipeline on one micro-batch of rows that share their settings."""

from __future__ import annotations

import contextlib

from workers.io import columns as C
from workers.io.rows import RowSpec
from workers.models import families
from workers.models.families.latents import SCALE_SHIFT, LatentCodec
from workers.models.schedulers import seed_noise_sampler


def generate(
    pipeline, rows: list[RowSpec], pad_to: int | None = None, init_images: list | None = None, step_cache=None
):
    """Images for `rows` as a float tensor (N, H, W, 3) in [0, 1] on the pipeline's device.

    Each image's noise comes only from its own CPU generator seeded with the row's seed, so an image
    does not depend on the batch it ran in. With `pad_to`, the batch is filled up with copies of its
    last row (dropped from the result), so a compiled model always sees the same batch size.
    With `step_cache` (workers.pipeline.step_cache.StepCache), its hook runs fresh for this call, and then its
    `skipped` holds how many denoiser passes the call skipped (one count for the whole micro-batch).
    With `init_images` (PIL images, one per row), `pipeline` is an image-to-image pipeline and the rows'
    `strength` applies. Non-finite values are kept for the caller to find.
    """
    import torch

    first = rows[0]
    assert all(row.batch_key == first.batch_key for row in rows), "a micro-batch must share its settings"
    padding = pad_to - len(rows) if pad_to and len(rows) < pad_to else 0
    padded = rows + [rows[-1]] * padding
    seed_noise_sampler(pipeline.scheduler, [row.seed for row in padded])
    size: dict[str, object]
    if init_images is None:
        size = {"width": first.width, "height": first.height}
    else:  # image-to-image takes its size from the init images (already width x height)
        size = {"image": init_images + [init_images[-1]] * padding, "strength": first.strength}
    # The family says which guidance arguments its pipelines take (negative prompts, true CFG, token limit).
    guidance = families.for_pipeline(pipeline).call_arguments(
        [row.negative_prompt for row in padded], first.guidance_scale, first.true_cfg_scale, first.max_sequence_length
    )
    caching = contextlib.nullcontext() if step_cache is None else step_cache.run(first.steps)
    # inference_mode, not just the pipeline's own no_grad: no version counters or view tracking per op.
    with torch.inference_mode(), caching as counter:
        if counter is not None:
            guidance["callback_on_step_end"] = counter.on_step_end
        result = pipeline(
            prompt=[row.prompt for row in padded],
            num_inference_steps=first.steps,
            generator=[torch.Generator("cpu").manual_seed(row.seed) for row in padded],
            output_type="pt",
            **guidance,
            **size,
        )
    return result.images[: len(rows)].permute(0, 2, 3, 1).float()


def reconstruct(vae, init_images: list, codec: LatentCodec = SCALE_SHIFT):
    """Encode each image with the VAE and decode it back: (images N,H,W,3 in [0, 1], latent means, stds).

    The latent is the posterior's mode (deterministic), normalised as the denoiser sees it by the family's
    `codec` (Stable Diffusion: scaling_factor, 0.18215 for SD 1.x); its mean and std are per image.
    """
    import numpy as np
    import torch

    pixels = torch.from_numpy(np.stack([np.asarray(image) for image in init_images]))
    with torch.inference_mode():
        x = pixels.to(vae.device, vae.dtype).permute(0, 3, 1, 2) / 127.5 - 1
        latents = codec.encode(vae, x)
        decoded = codec.decode(vae, latents)
        flat = latents.float().flatten(1)
        means, stds = flat.mean(dim=1).tolist(), flat.std(dim=1).tolist()
    images = (decoded.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    return images, means, stds


def reconstruction_errors(original, written) -> list[tuple[float, float]]:
    """(MSE, PSNR in dB) per image between two uint8 (N, H, W, 3) tensors, pixels scaled to [0, 1]."""
    import math

    diff = (written.double() - original.double()) / 255.0
    errors = []
    for mse in diff.pow(2).flatten(1).mean(dim=1).tolist():
        errors.append((mse, math.inf if mse == 0 else 10 * math.log10(1.0 / mse)))
    return errors


def reconstruction_metrics(init_images: list, pixels, means: list[float], stds: list[float]) -> list[dict]:
    """Each image's round-trip columns: MSE and PSNR between its init image (PIL) and its written uint8
    pixels (N, H, W, 3), and its latent's mean and std (from `reconstruct`)."""
    import numpy as np
    import torch

    original = torch.from_numpy(np.stack([np.asarray(image) for image in init_images])).to(pixels.device)
    return [
        {C.RECON_MSE: mse, C.RECON_PSNR: psnr, C.LATENT_MEAN: mean, C.LATENT_STD: std}
        for (mse, psnr), mean, std in zip(reconstruction_errors(original, pixels), means, stds)
    ]


def to_uint8(images):
    """The same float32 rounding diffusers uses when it returns PIL images, done on the device."""
    import torch

    return (images * 255).round().clamp(0, 255).to(torch.uint8)


def finite_rows(images) -> list[bool]:
    return images.isfinite().flatten(1).all(dim=1).tolist()
