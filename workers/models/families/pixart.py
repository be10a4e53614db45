"""PixArt-Sigma: a DiT (adaLN-single, cross-attention to T5) that predicts noise, like Stable Diffusion's UNet,
on an SD-style 4-channel VAE; classifier-free guidance with negative prompts (the batch doubles above
guidance_scale 1).

Its own scheduler is DPM-Solver++ (`dpmpp_2m`); the pipeline passes no timesteps or sigmas of its own, so every
noise-prediction scheduler of Stable Diffusion runs (PNDM, as everywhere, needs 4 steps or more). PixArtSigmaPipeline
snaps sizes to its training aspect-ratio bins by default and resizes back: genbatch turns that off, as for Sana.
It also turns off caption cleaning, which needs beautifulsoup4 and ftfy and is skipped with a warning where they
are missing: the prompt the T5 encoder reads is the prompt written, whatever is installed.
"""

from __future__ import annotations

from workers.models.families.base import CompilePayback, ConfigReader, Defaults, Family
from workers.models.schedulers import UNET_SCHEDULERS

OWN_SCHEDULER = "dpmpp_2m"


def _defaults(read: ConfigReader) -> Defaults:
    # PixArtSigmaPipeline's: 20 steps, CFG 4.5.
    return Defaults(steps=20, guidance_scale=4.5)


PIXART_SIGMA = Family(
    name="pixart-sigma",
    title="PixArt-Sigma",
    class_names=("PixArtSigmaPipeline",),
    text_to_image="PixArtSigmaPipeline",
    image_to_image=None,  # diffusers has no image-to-image PixArt pipeline
    denoiser="transformer",
    channels_last=False,
    schedulers=(OWN_SCHEDULER, *(name for name in UNET_SCHEDULERS if name != OWN_SCHEDULER)),
    guidance="cfg",
    negative_prompt="cfg",
    max_sequence_length=300,
    defaults=_defaults,
    # No step cache, no regional compile: PixArtTransformer2DModel has no CacheMixin, no _repeated_blocks in
    # diffusers 0.42.
    payback=CompilePayback(60.0, 1 / 1.0, 1 / 0.8, "estimate: a 0.6B DiT at 20 steps, not measured"),
    builtins={"tiny-pixart": {}},
    call_arguments_fixed={"use_resolution_binning": False, "clean_caption": False},
    lora=False,  # PixArtSigmaPipeline has no LoRA loader mixin in diffusers 0.42
)
