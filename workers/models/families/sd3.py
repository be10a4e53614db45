"""Stable Diffusion 3 / 3.5: an MMDiT transformer on flow matching, CLIP-L + CLIP-G + T5 text encoders, and
classifier-free guidance with negative prompts (the batch doubles under CFG, as for Stable Diffusion)."""

from __future__ import annotations

from workers.models.families.base import CompilePayback, ConfigReader, Defaults, Family
from workers.models.schedulers import FLOW_MATCH_SCHEDULERS


def _defaults(read: ConfigReader) -> Defaults:
    """SD3.5 (its transformer normalises queries and keys): 28 steps, CFG 3.5, as Stability's examples for
    3.5 Large; SD3 Medium (no qk_norm): 28 steps, CFG 7.0, diffusers' default for it."""
    transformer = read("transformer/config.json") or {}
    return Defaults(steps=28, guidance_scale=7.0 if transformer.get("qk_norm") is None and transformer else 3.5)


SD3 = Family(
    name="sd3",
    title="Stable Diffusion 3",
    class_names=("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"),
    text_to_image="StableDiffusion3Pipeline",
    image_to_image="StableDiffusion3Img2ImgPipeline",
    denoiser="transformer",
    channels_last=False,
    # The pipeline passes no sigmas of its own (and a shift only with dynamic shifting): Heun applies too.
    schedulers=tuple(FLOW_MATCH_SCHEDULERS),
    guidance="cfg",
    negative_prompt="cfg",
    max_sequence_length=256,
    sequence_length_limit=512,  # T5's; StableDiffusion3Pipeline refuses more
    defaults=_defaults,
    # No published compiled/eager pair for SD3.5 was found; FLUX.1-dev's (a DiT of similar size) stands in.
    # No step cache, no regional compile: its transformer has no CacheMixin, no _repeated_blocks in diffusers 0.42.
    payback=CompilePayback(90.0, 1 / 6.71, 1 / 4.30, "estimate: FLUX.1-dev's published figures stand in"),
    config_files=("transformer/config.json",),
    builtins={"tiny-sd3": {"transformer/config.json": {"qk_norm": "rms_norm"}}},
    lora=True,  # SD3LoraLoaderMixin
)
