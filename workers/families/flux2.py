"""FLUX.2 [klein]: a flow-matching transformer with a Qwen3 text encoder. Classifier-free guidance runs against
an empty prompt for `guidance_scale` > 1 (the base models; the step-distilled ones ignore it): the pipeline
takes no negative prompt."""

from __future__ import annotations

from workers.families.base import CompilePayback, ConfigReader, Defaults, Family
from workers.schedulers import FLOW_MATCH_SCHEDULERS


def _defaults(read: ConfigReader) -> Defaults:
    """Step-distilled klein (`is_distilled` in model_index.json): 4 steps, guidance 1; base klein: 50 steps,
    guidance 4 (diffusers' defaults and the model cards')."""
    if (read("model_index.json") or {}).get("is_distilled"):
        return Defaults(steps=4, guidance_scale=1.0)
    return Defaults(steps=50, guidance_scale=4.0)


FLUX2 = Family(
    name="flux2",
    title="FLUX.2",
    class_names=("Flux2KleinPipeline",),
    text_to_image="Flux2KleinPipeline",
    image_to_image=None,
    denoiser="transformer",
    channels_last=False,
    # The pipeline passes its own sigmas and shift (mu): the Euler variants only.
    schedulers=tuple(name for name in FLOW_MATCH_SCHEDULERS if name.startswith("flow_match_euler")),
    guidance="cfg",
    negative_prompt="never",
    max_sequence_length=512,
    defaults=_defaults,
    payback=CompilePayback(60.0, 1 / 2.0, 1 / 1.4, "estimate: a 4B DiT, not measured"),
    builtins={"tiny-flux2": {"model_index.json": {"is_distilled": False}}},
    lora=True,  # Flux2LoraLoaderMixin
)
