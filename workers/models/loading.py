"""Finding and loading models: the built-in `tiny`, a local folder, or a Hugging Face hub id.

Every load goes through `from_pretrained` with safetensors only; remote code is never trusted.
"""

from __future__ import annotations

import json
import logging
import os
import re

from workers.errors import ModelNotFoundError, UnknownFamilyError
from workers.models import families, tiny, tiny_dit
from workers.models.weights_check import check_loading_info, check_pipeline

logger = logging.getLogger(__name__)

# What the hub accepts as `org/name`: ASCII letters, digits, `-`, `_`, `.`, each part 1-96 long and starting and
# ending with a letter, digit or `_`.
_HUB_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(f"{_HUB_PART}/{_HUB_PART}")


def looks_like_path(ref: str) -> bool:
    """True when a model reference names a local folder rather than a hub id like `org/name`."""
    return (
        os.path.isdir(ref)
        or ref.startswith(("/", "./", "../", "~"))
        or ref.endswith("/")
        or ref.count("/") > 1
        or (os.sep != "/" and os.sep in ref)
    )


def missing_model_folder(ref: str | None) -> str | None:
    """The expanded path when `ref` names a local folder that does not exist, else None."""
    if ref is None or is_builtin(ref) or not looks_like_path(ref):
        return None
    path = os.path.expanduser(ref)
    return None if os.path.isdir(path) else path


def is_builtin(ref: str) -> bool:
    return ref in (tiny.TINY, tiny.TINY_SDXL, tiny.TINY_PICKSCORE) or tiny_dit.is_tiny_dit(ref)


def is_hub_id(ref: str) -> bool:
    """True for a well-formed Hugging Face id `org/name` (the hub also forbids `--` and `..`)."""
    return bool(_HUB_ID.fullmatch(ref)) and "--" not in ref and ".." not in ref


def is_hub_model(ref: str | None) -> bool:
    """True when `ref` is loaded from the hub (or its cache), not built in or from a local folder."""
    return ref is not None and not is_builtin(ref) and not looks_like_path(ref) and is_hub_id(ref)


def unknown_model_ref(ref: str | None) -> bool:
    """True when `ref` is neither built in, nor a folder, nor a hub id: nothing could load it."""
    return ref is not None and not is_builtin(ref) and not looks_like_path(ref) and not is_hub_id(ref)


def pipeline_source(ref: str) -> str:
    """What to hand to `from_pretrained` for a pipeline reference."""
    if ref == tiny.TINY_SDXL:
        return str(tiny.tiny_sdxl_dir())
    if tiny_dit.is_tiny_dit(ref):
        return str(tiny_dit.tiny_dit_dir(ref))
    return _source(ref, tiny.tiny_pipeline_dir)


def clip_source(ref: str) -> str:
    """What to hand to `from_pretrained` for a CLIP reference."""
    if ref == tiny.TINY_PICKSCORE:
        return str(tiny.tiny_pickscore_dir())
    return _source(ref, tiny.tiny_clip_dir)


def _source(ref: str, tiny_dir) -> str:
    if ref == tiny.TINY:
        return str(tiny_dir())
    return os.path.expanduser(ref) if looks_like_path(ref) else ref


def quiet_hub() -> None:
    """No deprecation advice or retry chatter from huggingface_hub: each process would print its own copy.

    Call before huggingface_hub is first imported (it warns about deprecated settings on import)."""
    import warnings

    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module="huggingface_hub")
    warnings.filterwarnings("ignore", message=".*(deprecated|is ignored)", module="huggingface_hub")
    from huggingface_hub.utils import disable_progress_bars
    from huggingface_hub.utils import logging as hub_logging

    hub_logging.set_verbosity_error()
    disable_progress_bars()


def quiet_libraries(diffusers: bool = True) -> None:
    """Only errors from the model libraries: their progress bars and advice, one copy per process, would bury
    the log (an actor's in the driver's, a report's or a benchmark's own). No notes from torchao either (which
    diffusers and transformers import where it is installed) about CUDA extensions a build lacks, nor torch's
    about the enums torchao registers. `diffusers` False: a process that never uses it does not import it."""
    quiet_hub()
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if diffusers:
        import diffusers as diffusers_library

        diffusers_library.utils.logging.set_verbosity_error()
        diffusers_library.utils.logging.disable_progress_bar()


def check_hub_model(ref: str, revision: str | None, index_file: str) -> None:
    """Fail early, with instructions, for a hub id that offline mode cannot find in the cache.

    `index_file` is a file every snapshot of such a model has (model_index.json, config.json)."""
    if not is_hub_model(ref):
        return
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        return
    if not is_cached(ref, revision, index_file):
        raise ModelNotFoundError(
            f"model {ref!r}{_at(revision)} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and "
            f"HF_HUB_OFFLINE=1 forbids downloading it; fetch it first with `hf download {ref}"
            f"{' --revision ' + revision if revision else ''}` on every node (same HF_HOME), or unset HF_HUB_OFFLINE"
        )


def is_cached(ref: str, revision: str | None, index_file: str) -> bool:
    """True when the Hugging Face cache holds `index_file` of `ref` at `revision` (default: main)."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(ref, index_file, revision=revision), str)


def explain_load_error(ref: str, revision: str | None, error: Exception) -> Exception:
    """A hub error as one actionable line; other errors are returned unchanged."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(error, RevisionNotFoundError):
        return ModelNotFoundError(
            f"model {ref!r} has no revision {revision or 'main'!r} on the Hugging Face hub: check the revision"
        )
    if isinstance(error, GatedRepoError):
        return ModelNotFoundError(
            f"model {ref!r} is gated: accept its terms on huggingface.co, then `hf auth login` (or set HF_TOKEN)"
        )
    if isinstance(error, RepositoryNotFoundError):
        return ModelNotFoundError(
            f"model {ref!r}{_at(revision)} was not found on the Hugging Face hub: check the id "
            "(private models need `hf auth login` or HF_TOKEN)"
        )
    if isinstance(error, LocalEntryNotFoundError):
        return ModelNotFoundError(
            f"model {ref!r}{_at(revision)} could not be fetched (no network?) and is not in the Hugging Face cache; "
            f"fetch it first with `hf download {ref}` on every node, or point model.id at a local folder"
        )
    return error


def _at(revision: str | None) -> str:
    return f" at revision {revision!r}" if revision else ""


def pick_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(name: str, device):
    """`auto` is bf16 (or fp16 where bf16 is unsupported) on a GPU and fp32 on the CPU."""
    import torch

    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


def weights_device_map(device) -> str | None:
    """Where `from_pretrained` puts the weights as it reads them. On a GPU: straight there, each tensor read
    from the (memory-mapped) safetensors file, cast to the target dtype and moved on its own, so no copy of
    the whole model is ever built in host memory; diffusers and transformers take the device's name for
    one-device loading (no offload hooks). On the CPU: None, the plain load, where the weights already are."""
    return "cuda" if device.type == "cuda" else None


def text_to_image_class(source: str, revision: str | None):
    """The text-to-image pipeline class of `source`'s family (workers.models.families), from its model_index.json
    `_class_name`; a hub model's index is fetched first where it is not in the cache. Importing the one class
    (not AutoPipelineForText2Image, which imports every pipeline diffusers has) saves each actor a second."""
    import diffusers

    family, class_name = model_family_of(source, revision)
    return getattr(diffusers, family.text_to_image_for(class_name))


def model_family_of(source: str, revision: str | None):
    """The family (workers.models.families.Family) of the pipeline at `source` (a folder or a hub id), and the
    `_class_name` its model_index.json names."""
    index = _cached_file(source, revision, "model_index.json")
    if index is None and is_hub_id(source):
        from huggingface_hub import hf_hub_download

        index = hf_hub_download(source, "model_index.json", revision=revision)
    if index is None:
        raise OSError(f"no file named model_index.json in {source}: not a diffusers pipeline folder")
    with open(index, encoding="utf-8") as file:
        class_name = json.load(file).get("_class_name")
    family = families.for_class_name(class_name)
    if family is None:
        raise UnknownFamilyError(families.unknown_class_message(class_name))
    return family, class_name


def _cached_file(source: str, revision: str | None, name: str) -> str | None:
    """`name` of a local model folder, or of a hub model already in the cache; None when neither has it."""
    if os.path.isdir(source):
        path = os.path.join(source, name)
        return path if os.path.isfile(path) else None
    if not is_hub_id(source):
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source, name, revision=revision)
    return found if isinstance(found, str) else None


def load_pipeline(ref: str, revision: str | None, device, dtype, variant: str | None = None):
    """The text-to-image pipeline named by `ref`, on `device` in `dtype` (the actor sets its scheduler)."""
    import diffusers

    source = pipeline_source(ref)
    logger.info("loading pipeline %s (%s)", ref, source)
    check_hub_model(ref, revision, "model_index.json")
    try:
        family, class_name = model_family_of(source, revision)
        pipeline = getattr(diffusers, family.text_to_image_for(class_name)).from_pretrained(
            source,
            revision=revision,
            variant=variant,
            dtype=dtype,
            device_map=weights_device_map(device),
            use_safetensors=True,
            **family.load_arguments,  # Stable Diffusion's: no safety checker (scores need the real image)
        )
    except OSError as error:
        raise explain_load_error(ref, revision, error) from error
    check_pipeline(source, pipeline, variant)  # before `.to`: a tensor diffusers left out has no values to move
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def load_clip(ref: str, device):
    """CLIP model and processor named by `ref`. CLIP stays in fp32: it is cheap and scores stay exact."""
    from transformers import CLIPModel, CLIPProcessor

    source = clip_source(ref)
    logger.info("loading CLIP %s (%s)", ref, source)
    check_hub_model(ref, None, "config.json")
    try:
        model, info = CLIPModel.from_pretrained(
            source, use_safetensors=True, device_map=weights_device_map(device), output_loading_info=True
        )
        processor = CLIPProcessor.from_pretrained(source)
    except OSError as error:
        raise explain_load_error(ref, None, error) from error
    check_loading_info(source, model, info)
    return model.to(device).eval(), processor
