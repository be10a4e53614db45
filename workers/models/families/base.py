"""What genbatch needs to know about a model family, in one frozen description (see workers.models.families).

Only plain data and small functions live here: the driver reads a family (its schedulers, its defaults,
whether it takes negative prompts) to check a config before any actor starts, without importing torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from workers.models.families.latents import SCALE_SHIFT, LatentCodec

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
    source: str  # where the figures come from, in words (and which are estimated)
    # `performance.compile: regional` (compile_repeated_blocks): seconds compiling only the repeated blocks, at the
    # same images per second; None: the family has no regional compile.
    regional_compile_seconds: float | None = None

    @property
    def pays_back_after(self) -> int:
        """Images one worker must make before the compile time is won back."""
        saved = 1 / self.uncompiled_images_per_s - 1 / self.compiled_images_per_s
        return math.ceil(self.compile_seconds / saved)

    def regional(self) -> CompilePayback:
        """The figures of a regional compile: its compile seconds, the same speed."""
        assert self.regional_compile_seconds is not None, "the family has no regional compile"
        return replace(self, compile_seconds=self.regional_compile_seconds)


@dataclass(frozen=True)
class Family:
    """One model family: its pipelines, denoiser, call arguments, schedulers and defaults.

    `negative_prompt` says when the family's pipelines take a negative prompt: `cfg` with classifier-free
    guidance (Stable Diffusion: `negative_prompt` + `guidance_scale` > 1), `true_cfg` only with
    `generation.true_cfg_scale` > 1 (FLUX.1, whose `guidance_scale` is the distilled guidance embedded in
    the transformer, not CFG), `never` for models without one. With `guidance` "cfg", guidance is on above
    `cfg_above` (1 for most; Z-Image guides from any guidance_scale > 0)."""

    name: str  # short key: sd, sdxl, flux
    title: str  # as users know it: "Stable Diffusion 1/2", "FLUX.1"
    class_names: tuple[str, ...]  # model_index.json `_class_name`s that are this family
    text_to_image: str  # diffusers pipeline class
    image_to_image: str | None  # its image-to-image pipeline (from_pipe shares the weights); None: none
    denoiser: Literal["unet", "transformer"]  # what compile, quantize and channels_last act on
    channels_last: bool  # convolutional denoiser and VAE: channels_last helps on GPUs
    schedulers: tuple[str, ...]  # workers.models.schedulers names that apply; the first is the default kind
    guidance: Literal["cfg", "distilled"]  # what `guidance_scale` is
    negative_prompt: Literal["cfg", "true_cfg", "never"]
    max_sequence_length: int | None  # T5/LLM text encoder's token limit default; None: CLIP only (77)
    defaults: Callable[[ConfigReader], Defaults]  # from the model's own config files where it has them
    payback: CompilePayback
    builtins: Mapping[str, Mapping[str, dict]] = field(default_factory=dict)  # tiny id -> its config files' facts
    call_arguments_fixed: Mapping[str, object] = field(default_factory=dict)  # passed to every pipeline call
    config_files: tuple[str, ...] = ()  # the model's files `defaults` reads (fetched before loading a hub model)
    load_arguments: Mapping[str, object] = field(default_factory=dict)  # extra from_pretrained keywords
    cfg_above: float = 1.0  # guidance "cfg": the guidance_scale above which the denoiser runs twice
    sequence_length_limit: int | None = None  # the most tokens the text encoder takes; None: max_sequence_length
    latents: LatentCodec = SCALE_SHIFT  # how the VAE's latents are normalised for the denoiser (reconstruct mode)
    # Other text-to-image classes of the family, loaded as themselves (FLUX.2 dev next to FLUX.2 klein).
    other_text_to_image: tuple[str, ...] = ()

    def text_to_image_for(self, class_name: str | None) -> str:
        """The pipeline class to load a model whose model_index.json names `class_name`."""
        return class_name if class_name in self.other_text_to_image else self.text_to_image

    @property
    def token_limit(self) -> int | None:
        return self.sequence_length_limit or self.max_sequence_length
    # performance.cache options (workers.pipeline.step_cache) diffusers' hooks support on this family's denoiser and
    # pipelines: the denoiser must have diffusers' CacheMixin and its blocks be in diffusers' block registry.
    step_caches: tuple[str, ...] = ()
    mag_ratios: str | None = None  # MagCache's per-step ratios, a name in diffusers.hooks.mag_cache (model-dependent)
    # performance.compile: regional (diffusers' compile_repeated_blocks): the denoiser lists its repeated blocks;
    # `auto` then compiles regionally where the denoiser is a transformer.
    regional_compile: bool = False

    @property
    def auto_compiles_regionally(self) -> bool:
        return self.regional_compile and self.denoiser == "transformer"

    def auto_payback(self) -> CompilePayback:
        """The compile figures `performance.compile: auto` decides with: the regional ones where it compiles so."""
        return self.payback.regional() if self.auto_compiles_regionally else self.payback
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
            return 2 if guidance_scale > self.cfg_above else 1
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

    def cache_problem(self, name: str) -> str | None:
        """Why performance.cache `name` cannot run on this family's models, in one line; None when it can."""
        if name == "none" or name in self.step_caches:
            return None
        supported = f"it supports: {', '.join(self.step_caches)}" if self.step_caches else "it supports none"
        return f"{name!r} is not available for {self.title} models in diffusers' cache hooks; {supported}"

    def compile_problem(self, setting: bool | str) -> str | None:
        """Why performance.compile `setting` cannot apply to this family, in one line; None when it can."""
        if setting != "regional" or self.regional_compile:
            return None
        return (
            f"'regional' compiles a model's repeated blocks, and genbatch has none listed for {self.title} models; "
            "use true or auto"
        )

    def scheduler_problem(self, name: str | None) -> str | None:
        """Why the scheduler `name` cannot run this family's models, in one line; None when it can."""
        if name is None or name in self.schedulers:
            return None
        return f"scheduler {name!r} does not apply to {self.title} models; choose one of: {', '.join(self.schedulers)}"
