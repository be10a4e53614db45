"""Z-Image (Turbo): a single-stream DiT on flow matching with a Qwen3 text encoder, classifier-free guidance
with negative prompts (Turbo is distilled to run without: guidance 0)."""

from __future__ import annotations

from workers.models.families.base import CompilePayback, ConfigReader, Defaults, Family
from workers.models.schedulers import FLOW_MATCH_SCHEDULERS


def _defaults(read: ConfigReader) -> Defaults:
    # Z-Image-Turbo's model card: 9 steps (8 transformer passes), guidance 0.
    return Defaults(steps=9, guidance_scale=0.0)


Z_IMAGE = Family(
    name="z-image",
    title="Z-Image",
    class_names=("ZImagePipeline", "ZImageImg2ImgPipeline"),
    text_to_image="ZImagePipeline",
    image_to_image="ZImageImg2ImgPipeline",
    denoiser="transformer",
    channels_last=False,
    # The pipeline passes its own sigmas and shift (mu): the Euler variants only.
    schedulers=tuple(name for name in FLOW_MATCH_SCHEDULERS if name.startswith("flow_match_euler")),
    guidance="cfg",
    cfg_above=0.0,  # ZImagePipeline guides from any guidance_scale > 0 (not > 1 as most)
    negative_prompt="cfg",
    max_sequence_length=512,
    defaults=_defaults,
    # No step cache: its transformer has no diffusers CacheMixin (enable_cache) in diffusers 0.42.
    payback=CompilePayback(
        60.0,
        1 / 3.0,
        1 / 2.0,
        "estimate: a 6B DiT at 9 steps, not measured; regional compile time: diffusers' 8-10x less",
        regional_compile_seconds=60.0 / 9,
    ),
    regional_compile=True,
    builtins={"tiny-z-image": {}},
    lora=True,  # ZImageLoraLoaderMixin
)
