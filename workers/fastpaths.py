"""Speed options applied to a loaded pipeline. Each keeps images within float rounding of the plain call."""

from __future__ import annotations

import logging

from workers.tasks import FastPaths, GenerationDefaults

logger = logging.getLogger(__name__)

# Rough peak memory of an SD-style VAE decode per output pixel (128-channel activations at full
# resolution, a dozen live at once, 2-byte dtype); used only to decide whether to slice a batch.
_DECODE_BYTES_PER_PIXEL = 128 * 12 * 2


def apply_fast_paths(pipeline, fast: FastPaths, device, batch_size: int, defaults: GenerationDefaults) -> list[str]:
    """Configure `pipeline` in place; returns the names of the options turned on (for the logs)."""
    import torch

    on_gpu = device.type == "cuda"
    enabled = []
    if fast.channels_last is True or (fast.channels_last == "auto" and on_gpu):
        pipeline.unet.to(memory_format=torch.channels_last)
        pipeline.vae.to(memory_format=torch.channels_last)
        enabled.append("channels_last")
    if fast.vae_tiling:
        pipeline.vae.enable_tiling()
        enabled.append("vae_tiling")
    if fast.vae_slicing is True or (
        fast.vae_slicing == "auto" and on_gpu and _decode_would_not_fit(batch_size, defaults)
    ):
        pipeline.vae.enable_slicing()
        enabled.append("vae_slicing")
    if fast.compile:
        # Shapes never change mid-job: micro-batches are padded to batch_size (see generation.generate).
        pipeline.unet = torch.compile(pipeline.unet, dynamic=False)
        pipeline.vae.decode = torch.compile(pipeline.vae.decode, dynamic=False)
        enabled.append("compile")
    return enabled


def _decode_would_not_fit(batch_size: int, defaults: GenerationDefaults) -> bool:
    import torch

    free, _ = torch.cuda.mem_get_info()
    needed = batch_size * defaults.width * defaults.height * _DECODE_BYTES_PER_PIXEL
    return needed > 0.8 * free
