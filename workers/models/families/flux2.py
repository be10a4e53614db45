"""FLUX.2 (klein, dev): a flow-matching transformer on a 32-channel VAE, one LLM text encoder, no negative prompt.

FLUX.2 klein base (Flux2KleinPipeline, `is_distilled: false`) guides with classifier-free guidance above
guidance_scale 1, against an empty negative prompt it makes itself: the pipeline takes no `negative_prompt`.
Klein distilled ignores guidance (4 steps). FLUX.2 dev (Flux2Pipeline) embeds its guidance in the transformer.
The first positional argument of both pipelines is a reference image (editing), so prompts go by keyword.
There is no image-to-image pipeline: `image=` conditions on a reference, it has no strength.
"""

from __future__ import annotations

from workers.models.families.base import CompilePayback, ConfigReader, Defaults, Family
from workers.models.families.latents import BATCH_NORM
from workers.models.schedulers import FLOW_MATCH_SCHEDULERS


def _defaults(read: ConfigReader) -> Defaults:
    """Klein distilled: 4 steps, guidance 1 (off); klein base and dev: diffusers' 50 steps, guidance 4."""
    index = read("model_index.json") or {}
    if index.get("is_distilled") is True:
        return Defaults(steps=4, guidance_scale=1.0)
    return Defaults(steps=50, guidance_scale=4.0)


FLUX2 = Family(
    name="flux2",
    title="FLUX.2",
    class_names=("Flux2KleinPipeline", "Flux2Pipeline"),
    text_to_image="Flux2KleinPipeline",
    other_text_to_image=("Flux2Pipeline",),
    image_to_image=None,
    denoiser="transformer",
    channels_last=False,
    # As FluxPipeline, the pipelines hand the scheduler their own sigmas and a resolution-dependent shift (mu).
    schedulers=tuple(name for name in FLOW_MATCH_SCHEDULERS if name.startswith("flow_match_euler")),
    # Klein base's CFG is a second transformer call; dev's guidance is embedded (it counts once too many here,
    # which only makes a compiled dev model's cache key say "guided").
    guidance="cfg",
    negative_prompt="never",
    max_sequence_length=512,
    defaults=_defaults,
    payback=CompilePayback(
        60.0,
        1 / 2.0,
        1 / 1.4,
        "estimate: a 4B DiT, not measured; regional compile time: diffusers' 8-10x less",
        regional_compile_seconds=60.0 / 9,
    ),
    # diffusers 0.42's First Block Cache fails on its single-stream blocks (a TypeError mid-call), and there are
    # no published MagCache ratios for it.
    step_caches=("taylorseer",),
    regional_compile=True,
    builtins={"tiny-flux2": {"model_index.json": {"is_distilled": False}}},
    latents=BATCH_NORM,
    lora=True,  # Flux2LoraLoaderMixin
)
