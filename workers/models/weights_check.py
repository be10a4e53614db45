"""Refusing a model whose weights files do not fill it.

transformers and diffusers load a folder that lacks some of a model's tensors with a warning and random values in
their place (diffusers: empty ones), and ignore tensors the model has no place for; a job would then write images
and scores from a half-random model and exit 0. Every load is checked here instead, and such a folder is one line
naming it and its first missing tensors (`IncompleteWeightsError`).

The driver's check (`clip_folder_problem`) reads only the safetensors headers: no torch, no tensor data.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterable

from workers.errors import IncompleteWeightsError

SHOWN = 3  # tensor names a message lists; the rest are counted
RANDOM = "the folder would load with random weights"
FOREIGN = "the folder holds weights this model has no place for"

# What a whole CLIPModel's weights hold: both towers, both projections and the logit scale.
CLIP_PARTS = ("text_model.*", "vision_model.*", "text_projection.weight", "visual_projection.weight", "logit_scale")


def names(keys: Iterable[str]) -> str:
    """`a, b, c and 7 more`: the first few names, sorted, and how many more there are."""
    ordered = sorted(keys)
    more = len(ordered) - SHOWN
    return ", ".join(ordered[:SHOWN]) + (f" and {more} more" if more > 0 else "")


def incomplete_message(where: str, model: str, missing: Iterable[str], unexpected: Iterable[str] = ()) -> str | None:
    """`WHERE: not a complete MODEL: 41 weights missing (a, b, c and 38 more); the folder would load with random
    weights`, with the unexpected tensors counted the same way; None when nothing is missing or unexpected."""
    missing, unexpected = set(missing), set(unexpected)
    parts = []
    if missing:
        parts.append(f"{len(missing)} weight{'s' if len(missing) != 1 else ''} missing ({names(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected weight{'s' if len(unexpected) != 1 else ''} ({names(unexpected)})")
    if not parts:
        return None
    return f"{where}: not a complete {model}: {', '.join(parts)}; {RANDOM if missing else FOREIGN}"


def check_loading_info(where: str, model, info: dict) -> None:
    """Raise for a transformers load whose `output_loading_info` found tensors missing or unexpected. transformers
    has already left out what its model class declares absent on purpose (tied weights, ignored buffers)."""
    message = incomplete_message(where, type(model).__name__, info["missing_keys"], info["unexpected_keys"])
    if message:
        raise IncompleteWeightsError(message)


def check_pipeline(where: str, pipeline, variant: str | None = None) -> None:
    """Raise for the first of a loaded pipeline's models that its folder did not fill. `where` names the pipeline's
    folder or hub id; each model is named by its subfolder (`WHERE/unet`). A pipeline's loader passes no loading
    info on, so it is found again from each model: diffusers' models by comparing their state dict with the
    safetensors headers as diffusers does; transformers' by the `_is_hf_initialized` mark it puts on each parameter
    it filled from the checkpoint (tied ones included; one it made up has none). The tensors a transformers model
    in a pipeline ignores (unexpected ones) are not seen: they cost nothing, as no weight is random for them."""
    import torch

    for name, component in pipeline.components.items():
        if not isinstance(component, torch.nn.Module):
            continue
        missing, unexpected = _component_problems(component, variant)
        message = incomplete_message(f"{where}/{name}", type(component).__name__, missing, unexpected)
        if message:
            raise IncompleteWeightsError(message)


def _component_problems(component, variant: str | None) -> tuple[set[str], set[str]]:
    from diffusers import ModelMixin

    if isinstance(component, ModelMixin):
        return _diffusers_problems(component, variant)
    return _transformers_missing(component), set()


def _diffusers_problems(model, variant: str | None) -> tuple[set[str], set[str]]:
    """What diffusers itself counts as missing and unexpected (its `_load_pretrained_model`): the model's state dict
    against the file's tensor names, old attention-block names renamed as it renames them. Where the file cannot be
    read back, the tensors it left on the `meta` device (no values at all) are the missing ones."""
    expected = model.state_dict()
    on_meta = {key for key, tensor in expected.items() if tensor.device.type == "meta"}
    folder = getattr(model.config, "_name_or_path", None)
    stored = None
    if isinstance(folder, str) and os.path.isdir(folder):
        stored = weight_file_keys(folder, variant, stem="diffusion_pytorch_model")
    if stored is None:
        return on_meta, set()
    renamed = dict.fromkeys(stored)
    rename = getattr(model, "_fix_state_dict_keys_on_load", None)  # diffusers' renaming of old attention-block names
    if rename is not None:
        rename(renamed)
    unexpected = set(renamed) - set(expected)
    for pattern in model._keys_to_ignore_on_load_unexpected or ():
        unexpected = {key for key in unexpected if re.search(pattern, key) is None}
    return on_meta | (set(expected) - set(renamed)), unexpected


def _transformers_missing(model) -> set[str]:
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        return set()  # another library's model: nothing it marks to read
    parameters = dict(model.named_parameters(remove_duplicate=False))  # a tied parameter under each of its names
    marked = {key for key, parameter in parameters.items() if getattr(parameter, "_is_hf_initialized", False)}
    ignored = getattr(model, "_keys_to_ignore_on_load_missing", None) or ()
    return {key for key in set(parameters) - marked if not any(re.search(pattern, key) for pattern in ignored)}


def safetensors_keys(path: str) -> set[str]:
    """The tensor names in a safetensors file's header, without reading the tensors."""
    with open(path, "rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    return {name for name in header if name != "__metadata__"}


def weight_file_keys(folder: str, variant: str | None = None, stem: str = "model") -> set[str] | None:
    """The tensor names in a model folder's safetensors weights as the loaders name them (transformers: `model`,
    diffusers: `diffusion_pytorch_model`; `STEM.VARIANT.safetensors` first, as they try it, or the shard index
    `STEM.safetensors.index[.VARIANT].json`), from the headers or the index only; None where there are none."""
    for chosen in dict.fromkeys((variant, None)):
        index = os.path.join(folder, _with_variant(f"{stem}.safetensors.index.json", chosen))
        if os.path.isfile(index):
            with open(index, encoding="utf-8") as handle:
                return set(json.load(handle)["weight_map"])
        single = os.path.join(folder, _with_variant(f"{stem}.safetensors", chosen))
        if os.path.isfile(single):
            return safetensors_keys(single)
    return None


def _with_variant(name: str, variant: str | None) -> str:
    """`model.safetensors` as `model.fp16.safetensors`: the variant before the last suffix, as the loaders put it."""
    if variant is None:
        return name
    head, _, suffix = name.rpartition(".")
    return f"{head}.{variant}.{suffix}"


def clip_folder_problem(folder: str) -> str | None:
    """What a CLIP folder's weights lack of a whole CLIPModel, from the safetensors headers: `not a complete
    CLIPModel: weights missing (vision_model.*, ...); ...`. None when it holds every part, or has no safetensors
    weights to read (the load then fails on its own)."""
    try:
        keys = weight_file_keys(folder)
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None  # unreadable: the actor's load says what is wrong with it
    if not keys:
        return None
    absent = [part for part in CLIP_PARTS if not _holds(keys, part)]
    if not absent:
        return None
    return f"not a complete CLIPModel: weights missing ({', '.join(absent)}); {RANDOM}"


def _holds(keys: set[str], part: str) -> bool:
    if part.endswith(".*"):
        prefix = part[:-1]
        return any(key.startswith(prefix) for key in keys)
    return part in keys
