"""What genbatch needs to know about a model family, in one frozen description (see workers.families).

Only plain data and small functions live here: the driver reads a family (its schedulers, its defaults,
whether it takes negative prompts) to check a config before any actor starts, without importing torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

# Reads a JSON file of the model folder (`transformer/config.json`); None when it cannot be read.
ConfigReader = Callable[[str], "dict | None"]


@dataclass(frozen=True)
class Defaults:
    """Generation settings a family's models use where the user sets none."""

    steps: int
    guidance_scale: float
    true_cfg_scale: float | None = None  # families with true CFG (Family.negative_prompt `true_cfg`) only


@dataclass(frozen=True)
class CompilePayback:
    """What torch.compile costs and gives for a model of the family (GPU, its default size and steps):
    seconds spent compiling, images per second without and with it. Decides `performance.compile: auto`."""

    compile_seconds: float
    uncompiled_images_per_s: float
    compiled_images_per_s: float
    source: str  # where the figures come from, in words

    @property
    def pays_back_after(self) -> int:
        """Images one worker must make before the compile time is won back."""
        saved = 1 / self.uncompiled_images_per_s - 1 / self.compiled_images_per_s
        return math.ceil(self.compile_seconds / saved)


@dataclass(frozen=True)
class Family:
    """One model family: its pipelines, denoiser, call arguments, schedulers and defaults.

    `negative_prompt` says when the family's pipelines take a negative prompt: `cfg` with classifier-free
    guidance (Stable Diffusion: `negative_prompt` + `guidance_scale` > 1), `true_cfg` only with
    `generation.true_cfg_scale` > 1 (FLUX.1, whose `guidance_scale` is the distilled guidance embedded in
    the transformer, not CFG), `never` for models without one."""

    name: str  # short key: sd, sdxl, flux
    title: str  # as users know it: "Stable Diffusion 1/2", "FLUX.1"
    class_names: tuple[str, ...]  # model_index.json `_class_name`s that are this family
    text_to_image: str  # diffusers pipeline class
    image_to_image: str | None  # its image-to-image pipeline (from_pipe shares the weights); None: none
    denoiser: Literal["unet", "transformer"]  # what compile, quantize and channels_last act on
    channels_last: bool  # convolutional denoiser and VAE: channels_last helps on GPUs
    schedulers: tuple[str, ...]  # workers.schedulers names that apply; the first is the default kind
    guidance: Literal["cfg", "distilled"]  # what `guidance_scale` is
    negative_prompt: Literal["cfg", "true_cfg", "never"]
    max_sequence_length: int | None  # T5/LLM text encoder's token limit default; None: CLIP only (77)
    defaults: Callable[[ConfigReader], Defaults]  # from the model's own config files where it has them
    payback: CompilePayback
    builtins: Mapping[str, Mapping[str, dict]] = field(default_factory=dict)  # tiny id -> its config files' facts
    # How the VAE's latents are normalised for the denoiser (`reconstruct` mode): `scale_shift`: (z - shift_factor)
    # * scaling_factor (SD, SDXL, FLUX.1, SD3); `per_channel`: (z - latents_mean[c]) / latents_std[c] of a video
    # VAE that takes a frame axis (Qwen-Image).
    latents: Literal["scale_shift", "per_channel"] = "scale_shift"
    call_arguments_fixed: Mapping[str, object] = field(default_factory=dict)  # passed to every pipeline call
    config_files: tuple[str, ...] = ()  # the model's files `defaults` reads (fetched before loading a hub model)
    load_arguments: Mapping[str, object] = field(default_factory=dict)  # extra from_pretrained keywords
    # Whether the text-to-image pipeline class has diffusers' LoRA loader mixin (`load_lora_weights`): model.loras
    # and model.adapters need it. Stated here, not looked up, so the driver decides without importing diffusers.
    lora: bool = False

    def lora_problem(self, key: str) -> str | None:
        """Why LoRAs (config `key`) cannot apply to this family's models, in one line; None when they can."""
        if self.lora:
            return None
        return f"{key}: {self.title} pipelines ({self.text_to_image}) have no LoRA loader in diffusers; remove the key"

    def takes_negative_prompt(self, true_cfg_scale: float | None) -> bool:
        if self.negative_prompt == "cfg":
            return True
        return self.negative_prompt == "true_cfg" and (true_cfg_scale or 1.0) > 1

    def negative_prompt_rule(self) -> str:
        """Why a negative prompt is refused, in words, for error messages."""
        if self.negative_prompt == "true_cfg":
            return f"{self.title} takes a negative prompt only with generation.true_cfg_scale > 1"
        return f"{self.title} takes no negative prompt"

    def batch_multiplier(self, guidance_scale: float, true_cfg_scale: float | None) -> int:
        """How many times the denoiser sees each image per step: CFG runs it on the prompt and the negative
        prompt (diffusers batches both for Stable Diffusion, and calls it twice for true CFG)."""
        if self.guidance == "cfg":
            return 2 if guidance_scale > 1 else 1
        return 2 if self.takes_negative_prompt(true_cfg_scale) else 1

    def call_arguments(
        self,
        negative_prompts: list[str],
        guidance_scale: float,
        true_cfg_scale: float | None,
        max_sequence_length: int | None,
    ) -> dict:
        """The keyword arguments of the pipeline call that carry genbatch's guidance settings."""
        arguments: dict[str, object] = {"guidance_scale": guidance_scale}
        if self.negative_prompt == "cfg":
            arguments["negative_prompt"] = negative_prompts
        elif self.takes_negative_prompt(true_cfg_scale):
            arguments.update(negative_prompt=negative_prompts, true_cfg_scale=true_cfg_scale)
        if self.max_sequence_length is not None:
            arguments["max_sequence_length"] = max_sequence_length or self.max_sequence_length
        return {**arguments, **self.call_arguments_fixed}

    def scheduler_problem(self, name: str | None) -> str | None:
        """Why the scheduler `name` cannot run this family's models, in one line; None when it can."""
        if name is None or name in self.schedulers:
            return None
        return f"scheduler {name!r} does not apply to {self.title} models; choose one of: {', '.join(self.schedulers)}"
