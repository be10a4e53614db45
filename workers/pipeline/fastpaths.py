"""Speed options applied to a loaded pipeline. Each keeps images within float rounding of the plain call,
except `quantize` (workers.pipeline.quantize), which is part of the job's identity."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from workers.models.families import Family, for_pipeline
from workers.models.families.stable_diffusion import STABLE_DIFFUSION
from workers.pipeline.quantize import quantize_denoiser
from workers.tasks import FastPaths, GenerationDefaults

logger = logging.getLogger(__name__)

# Rough peak memory of an SD-style VAE decode per output pixel (128-channel activations at full
# resolution, a dozen live at once, 2-byte dtype); used only to decide whether to slice a batch.
_DECODE_BYTES_PER_PIXEL = 128 * 12 * 2

# What torch.compile costs and gives, per family (workers.models.families.base.CompilePayback). Stable Diffusion's,
# measured on an H100 (SD1.5, 512 px, 50 steps, batch 16, bf16; README, Performance): start-up 32.1 s
# without, 72.5 s with it (compiling is the difference), then 2.62 images/s without and 4.19 with. Compiling
# saves (1/2.62 - 1/4.19) s per image, so it pays back its ~40 s once a worker makes about 280 images.
_SD_PAYBACK = STABLE_DIFFUSION.payback
COMPILE_SECONDS = _SD_PAYBACK.compile_seconds
UNCOMPILED_IMAGES_PER_S = _SD_PAYBACK.uncompiled_images_per_s
COMPILED_IMAGES_PER_S = _SD_PAYBACK.compiled_images_per_s
COMPILE_PAYS_BACK_AFTER = _SD_PAYBACK.pays_back_after


@dataclass(frozen=True)
class CompileChoice:
    """performance.compile as resolved on one actor, and why (for its log line and job.json)."""

    on: bool
    reason: str
    regional: bool = False  # compile_repeated_blocks on the transformer instead of the whole denoiser

    @property
    def setting(self) -> bool | Literal["regional"]:
        """The choice as a resolved performance.compile value: false, true (the whole denoiser) or regional."""
        return "regional" if self.on and self.regional else self.on


def choose_compile(
    setting: bool | str, device, images_per_worker: int | None, family: Family = STABLE_DIFFUSION
) -> CompileChoice:
    """`true`/`false`/`regional` as set; `auto`: on CUDA only (on the CPU, Inductor's C++ build takes minutes and
    gains little), regionally where the family's denoiser is a transformer with repeated blocks listed, and not for
    a job whose share of images per worker cannot pay back the compile time (the family's figures)."""
    if setting is True:
        return CompileChoice(True, "on: performance.compile is true")
    if setting == "regional":
        return CompileChoice(True, "on: performance.compile is regional (the repeated blocks)", regional=True)
    if setting is False:
        return CompileChoice(False, "off: performance.compile is false")
    if device.type != "cuda":
        return CompileChoice(False, f"off: auto compiles on GPUs only, this actor runs on {device.type}")
    regional = family.auto_compiles_regionally
    payback = family.auto_payback()
    seconds, after = payback.compile_seconds, payback.pays_back_after
    how = ", regionally" if regional else ""
    if images_per_worker is None:
        return CompileChoice(True, f"on: auto, on a GPU, for a job of unknown size{how}", regional)
    if images_per_worker < after:
        return CompileChoice(
            False,
            f"off: {images_per_worker} images per worker cannot pay back ~{seconds:.0f} s of compiling "
            f"(auto compiles from {after}; set performance.compile: true to compile anyway)",
        )
    return CompileChoice(
        True, f"on: auto, {images_per_worker} images per worker pay back ~{seconds:.0f} s{how}", regional
    )


def apply_fast_paths(pipeline, fast: FastPaths, device, batch_size: int, defaults: GenerationDefaults) -> list[str]:
    """Configure `pipeline` in place; returns the names of the options turned on (for the logs); quantizing's
    is `quantize int8: 40 of 50 Linear layers`."""
    import torch

    family = for_pipeline(pipeline)
    denoiser = getattr(pipeline, family.denoiser)  # the UNet or the transformer: nearly all of the work
    on_gpu = device.type == "cuda"
    enabled = []
    # Only convolutional models gain from channels_last: a transformer's activations are (tokens, features).
    if family.channels_last and (fast.channels_last is True or (fast.channels_last == "auto" and on_gpu)):
        denoiser.to(memory_format=torch.channels_last)
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
    if fast.quantize != "none":
        # After channels_last (which only moves convolutions' weights), before compiling the quantized denoiser.
        quantized = quantize_denoiser(denoiser, fast.quantize, fast.quantize_min_features)
        enabled.append(f"quantize {quantized.describe()}")
    choice = choose_compile(fast.compile, device, images_per_worker=None)  # the actor passes its choice resolved
    # Shapes never change mid-job: micro-batches are padded to batch_size (see generation.generate).
    if choice.regional:  # each repeated block compiled in place: one graph per block class, reused down the stack
        denoiser.compile_repeated_blocks(dynamic=False)
        pipeline.vae.decode = torch.compile(pipeline.vae.decode, dynamic=False)
        enabled.append("compile regional")
    elif choice.on:
        setattr(pipeline, family.denoiser, torch.compile(denoiser, dynamic=False))
        pipeline.vae.decode = torch.compile(pipeline.vae.decode, dynamic=False)
        enabled.append("compile")
    return enabled


def _decode_would_not_fit(batch_size: int, defaults: GenerationDefaults) -> bool:
    import torch

    free, _ = torch.cuda.mem_get_info()
    needed = batch_size * defaults.width * defaults.height * _DECODE_BYTES_PER_PIXEL
    return needed > 0.8 * free
