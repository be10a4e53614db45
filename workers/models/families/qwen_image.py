"""Qwen-Image: an MMDiT transformer on flow matching with a Qwen2.5-VL text encoder; real classifier-free
guidance is `true_cfg_scale` with a negative prompt (the transformer runs twice per step), and
`guidance_scale` only matters for guidance-distilled variants (`guidance_embeds`)."""

from __future__ import annotations

from workers.models.families.base import CompilePayback, ConfigReader, Defaults, Family
from workers.models.families.latents import PER_CHANNEL
from workers.models.schedulers import FLOW_MATCH_SCHEDULERS


def _defaults(read: ConfigReader) -> Defaults:
    # The model card's: 50 steps, true CFG 4.0 (with an empty negative prompt where a row has none).
    return Defaults(steps=50, guidance_scale=1.0, true_cfg_scale=4.0)


QWEN_IMAGE = Family(
    name="qwen-image",
    title="Qwen-Image",
    class_names=("QwenImagePipeline", "QwenImageImg2ImgPipeline"),
    text_to_image="QwenImagePipeline",
    image_to_image="QwenImageImg2ImgPipeline",
    denoiser="transformer",
    channels_last=False,
    # The pipeline passes its own sigmas and shift (mu): the Euler variants only.
    schedulers=tuple(name for name in FLOW_MATCH_SCHEDULERS if name.startswith("flow_match_euler")),
    guidance="distilled",
    negative_prompt="true_cfg",
    max_sequence_length=512,
    defaults=_defaults,
    payback=CompilePayback(
        120.0,
        1 / 6.71,
        1 / 4.30,
        "estimate: FLUX.1-dev's published figures stand in; regional compile time: diffusers' 8-10x less",
        regional_compile_seconds=120.0 / 9,
    ),
    step_caches=("first_block", "taylorseer"),  # diffusers publishes no MagCache ratios for it
    regional_compile=True,
    builtins={"tiny-qwen-image": {}},
    sequence_length_limit=1024,  # QwenImagePipeline refuses more
    latents=PER_CHANNEL,  # its video VAE normalises each latent channel by the config's latents_mean/std
    lora=True,  # QwenImageLoraLoaderMixin
)
