"""FLUX.1 (dev, schnell): a flow-matching transformer, CLIP + T5 text encoders, guidance distilled into the model.

`guidance_scale` is the distilled guidance the transformer embeds (dev; schnell ignores it), not CFG: the
transformer sees each image once. Real classifier-free guidance with a negative prompt is diffusers'
`true_cfg_scale` (> 1), which runs the transformer twice per step.
"""

from __future__ import annotations

from workers.models.families.base import CompilePayback, ConfigReader, Defaults, Family
from workers.models.schedulers import FLOW_MATCH_SCHEDULERS


def _defaults(read: ConfigReader) -> Defaults:
    """schnell (no guidance embedding, timestep-distilled): 4 steps, guidance 0; dev: 28 steps, guidance 3.5,
    as their model cards and diffusers' examples use them. A transformer config that cannot be read counts as dev."""
    transformer = read("transformer/config.json") or {}
    if transformer.get("guidance_embeds") is False:
        return Defaults(steps=4, guidance_scale=0.0, true_cfg_scale=1.0)
    return Defaults(steps=28, guidance_scale=3.5, true_cfg_scale=1.0)


FLUX = Family(
    name="flux",
    title="FLUX.1",
    class_names=("FluxPipeline", "FluxImg2ImgPipeline"),
    text_to_image="FluxPipeline",
    image_to_image="FluxImg2ImgPipeline",
    denoiser="transformer",
    channels_last=False,
    # FluxPipeline hands the scheduler its own sigmas and a resolution-dependent shift (mu): only the
    # flow-matching Euler scheduler takes both; FlowMatchHeunDiscreteScheduler takes neither.
    schedulers=tuple(name for name in FLOW_MATCH_SCHEDULERS if name.startswith("flow_match_euler")),
    guidance="distilled",
    negative_prompt="true_cfg",
    max_sequence_length=512,
    defaults=_defaults,
    # xDiT's published FLUX.1-dev figures (1024 px, 28 steps, one H100): 6.71 s eager, 4.30 s compiled per
    # image; the compile time is an estimate, not measured.
    # The regional compile time is an estimate too: diffusers reports 8-10x less compile time, the same speed.
    payback=CompilePayback(
        90.0,
        1 / 6.71,
        1 / 4.30,
        "published: xDiT FLUX.1-dev 1024 px H100; compile times (full and regional) estimated",
        regional_compile_seconds=10.0,
    ),
    step_caches=("first_block", "taylorseer", "magcache"),
    mag_ratios="FLUX_MAG_RATIOS",  # MagCache's published ratios for FLUX.1 dev and schnell
    regional_compile=True,
    config_files=("transformer/config.json",),
    builtins={"tiny-flux": {"transformer/config.json": {"guidance_embeds": True}}},
    lora=True,  # FluxLoraLoaderMixin
)
