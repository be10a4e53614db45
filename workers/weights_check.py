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

# Weights files as transformers and diffusers save them: NAME.safetensors, NAME.VARIANT.safetensors, and sharded,
# NAME.safetensors.index.json or NAME.safetensors.index.VARIANT.json listing the shards.
_SINGLE = re.compile(r"^[^.]+(?:\.(?P<variant>[^.]+))?\.safetensors$")
_INDEX = re.compile(r"^[^.]+\.safetensors\.index(?:\.(?P<variant>[^.]+))?\.json$")


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
    folder or hub id; each model is named by its subfolder (`WHERE/unet`).

    diffusers keeps a missing tensor on the `meta` device (it has no values at all) and ignores a tensor its model
    has no place for, so those are found from the model and its safetensors headers. transformers marks each
    parameter it filled from the checkpoint (tied ones included) with `_is_hf_initialized`; one it made up has none."""
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
        missing = {key for key, tensor in component.state_dict().items() if tensor.device.type == "meta"}
        return missing, _diffusers_unexpected(component, variant)
    return _transformers_missing(component), set()


def _diffusers_unexpected(model, variant: str | None) -> set[str]:
    folder = getattr(model.config, "_name_or_path", None)
    stored = weight_file_keys(folder, variant) if isinstance(folder, str) and os.path.isdir(folder) else None
    if stored is None:
        return set()
    renamed = dict.fromkeys(stored)
    rename = getattr(model, "_fix_state_dict_keys_on_load", None)  # diffusers' renaming of old attention-block names
    if rename is not None:
        rename(renamed)
    unexpected = set(renamed) - set(model.state_dict())
    for pattern in model._keys_to_ignore_on_load_unexpected or ():
        unexpected = {key for key in unexpected if re.search(pattern, key) is None}
    return unexpected


def _transformers_missing(model) -> set[str]:
    parameters = dict(model.named_parameters(remove_duplicate=False))
    marked = {key for key, parameter in parameters.items() if getattr(parameter, "_is_hf_initialized", False)}
    if not marked:
        return set()  # not a transformers model, or one whose loader does not mark what it filled: nothing to tell
    ignored = getattr(model, "_keys_to_ignore_on_load_missing", None) or ()
    return {key for key in set(parameters) - marked if not any(re.search(pattern, key) for pattern in ignored)}


def safetensors_keys(path: str) -> set[str]:
    """The tensor names in a safetensors file's header, without reading the tensors."""
    with open(path, "rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    return {name for name in header if name != "__metadata__"}


def weight_file_keys(folder: str, variant: str | None = None) -> set[str] | None:
    """The tensor names a model folder's safetensors weights hold (the `variant`'s where it has them, as the
    loaders choose), from headers or the shard index only; None where the folder has no safetensors weights."""
    files = os.listdir(folder)
    found = [m for pattern in (_SINGLE, _INDEX) for m in map(pattern.match, files) if m]
    variants = {m["variant"] for m in found}
    chosen = variant if variant in variants else None
    indexes = [name for name in files if (m := _INDEX.match(name)) and m["variant"] == chosen]
    if indexes:
        keys: set[str] = set()
        for name in indexes:
            with open(os.path.join(folder, name), encoding="utf-8") as handle:
                keys |= set(json.load(handle)["weight_map"])
        return keys
    singles = [name for name in files if (m := _SINGLE.match(name)) and m["variant"] == chosen]
    if not singles:
        return None
    return set().union(*(safetensors_keys(os.path.join(folder, name)) for name in singles))


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
