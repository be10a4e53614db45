"""Sana: a linear-attention DiT with a Gemma-2 text encoder and a deep-compression autoencoder (DC-AE),
classifier-free guidance with negative prompts, and a flow-prediction DPM-Solver++ scheduler."""

from __future__ import annotations

from workers.families.base import CompilePayback, ConfigReader, Defaults, Family


def _defaults(read: ConfigReader) -> Defaults:
    # Sana's model cards (1600M 1024px): 20 steps, CFG 4.5 (also diffusers' defaults).
    return Defaults(steps=20, guidance_scale=4.5)


SANA = Family(
    name="sana",
    title="Sana",
    class_names=("SanaPipeline",),
    text_to_image="SanaPipeline",
    image_to_image=None,
    denoiser="transformer",
    channels_last=False,
    # Its own scheduler is DPM-Solver++ (2M) in flow-prediction mode; `dpmpp_2m` rebuilds it from that config.
    schedulers=("dpmpp_2m",),
    guidance="cfg",
    negative_prompt="cfg",
    max_sequence_length=300,
    defaults=_defaults,
    payback=CompilePayback(60.0, 1 / 1.0, 1 / 0.8, "estimate: a 1.6B DiT at 20 steps, not measured"),
    builtins={"tiny-sana": {}},
    # Generate at the size asked for, not snapped to Sana's aspect-ratio bins and resized back.
    call_arguments_fixed={"use_resolution_binning": False},
    lora=True,  # SanaLoraLoaderMixin
)
