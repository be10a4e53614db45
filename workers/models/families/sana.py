"""Sana: a linear-attention DiT on flow matching with a Gemma-2 text encoder and a 32x deep-compression VAE
(DC-AE), classifier-free guidance with negative prompts (the batch doubles above guidance_scale 1).

Its own scheduler is DPM-Solver++ on flow sigmas (`flow_dpmpp_2m`); the pipeline passes no sigmas of its
own, so the flow-matching Euler and Heun schedulers run too (with the model's `flow_shift`). Sana snaps
sizes to its training aspect-ratio bins by default and resizes back: genbatch turns that off, so a job's
width and height are what the transformer sees, as for every other family.

PixArt-Sigma (PixArtSigmaPipeline) is not this family: its DiT predicts noise (the UNet schedulers apply),
its T5 encoder and SD-style VAE differ (workers.models.families.pixart).
"""

from __future__ import annotations

from workers.models.families.base import CompilePayback, ConfigReader, Defaults, Family
from workers.models.families.latents import DC_AE
from workers.models.schedulers import FLOW_MATCH_SCHEDULERS, FLOW_SOLVER_SCHEDULERS


def _defaults(read: ConfigReader) -> Defaults:
    # SanaPipeline's (and the Sana 1.0 model cards'): 20 steps, CFG 4.5.
    return Defaults(steps=20, guidance_scale=4.5)


SANA = Family(
    name="sana",
    title="Sana",
    class_names=("SanaPipeline",),
    text_to_image="SanaPipeline",
    image_to_image=None,  # diffusers links no image-to-image pipeline to SanaPipeline
    denoiser="transformer",
    channels_last=False,
    schedulers=(*FLOW_SOLVER_SCHEDULERS, *FLOW_MATCH_SCHEDULERS),
    guidance="cfg",
    negative_prompt="cfg",
    max_sequence_length=300,
    defaults=_defaults,
    # No step cache, no regional compile: its transformer has no CacheMixin, no _repeated_blocks in diffusers 0.42.
    payback=CompilePayback(60.0, 1 / 1.0, 1 / 0.8, "estimate: a 1.6B DiT at 20 steps, not measured"),
    builtins={"tiny-sana": {}},
    call_arguments_fixed={"use_resolution_binning": False},
    latents=DC_AE,
    lora=True,  # SanaLoraLoaderMixin
)
