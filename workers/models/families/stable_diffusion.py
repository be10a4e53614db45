"""Stable Diffusion 1.x/2.x and SDXL: a UNet, CLIP text encoders, classifier-free guidance with negative prompts."""

from __future__ import annotations

from workers.models.families.base import CompilePayback, ConfigReader, Defaults, Family
from workers.models.schedulers import UNET_SCHEDULERS


def _defaults(read: ConfigReader) -> Defaults:
    # genbatch's defaults since before families: jobs that set none keep their identity (and resume).
    return Defaults(steps=30, guidance_scale=7.5)


# Batch evaluation needs the real image behind every score, not a blacked-out one.
_NO_SAFETY_CHECKER = {"safety_checker": None, "requires_safety_checker": False}

STABLE_DIFFUSION = Family(
    name="sd",
    title="Stable Diffusion 1/2",
    class_names=("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
    text_to_image="StableDiffusionPipeline",
    image_to_image="StableDiffusionImg2ImgPipeline",
    denoiser="unet",
    channels_last=True,
    schedulers=tuple(UNET_SCHEDULERS),
    guidance="cfg",
    negative_prompt="cfg",
    max_sequence_length=None,
    defaults=_defaults,
    # Measured on an H100 (SD1.5, 512 px, 50 steps, batch 16, bf16; README, Performance): start-up 32.1 s
    # without compile, 72.5 s with it, then 2.62 images/s without and 4.19 with.
    payback=CompilePayback(72.5 - 32.1, 2.62, 4.19, "measured: SD1.5 512 px, 50 steps, batch 16, bf16, H100"),
    builtins={"tiny": {}},
    load_arguments=_NO_SAFETY_CHECKER,
    lora=True,  # StableDiffusionLoraLoaderMixin / StableDiffusionXLLoraLoaderMixin
)

STABLE_DIFFUSION_XL = Family(
    name="sdxl",
    title="SDXL",
    class_names=("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"),
    text_to_image="StableDiffusionXLPipeline",
    image_to_image="StableDiffusionXLImg2ImgPipeline",
    denoiser="unet",
    channels_last=True,
    schedulers=tuple(UNET_SCHEDULERS),
    guidance="cfg",
    negative_prompt="cfg",
    max_sequence_length=None,
    defaults=_defaults,
    # pytorch-labs/diffusion-fast (SDXL 1024 px, 30 steps, batch 1, bf16, H100): 3.31 s per image with SDPA,
    # 2.54 s compiled; the compile time is an estimate, not measured.
    payback=CompilePayback(
        60.0, 1 / 3.31, 1 / 2.54, "published: diffusion-fast SDXL 1024 px H100; compile time estimated"
    ),
    builtins={"tiny-sdxl": {}},
    load_arguments=_NO_SAFETY_CHECKER,
    lora=True,  # StableDiffusionLoraLoaderMixin / StableDiffusionXLLoraLoaderMixin
)
