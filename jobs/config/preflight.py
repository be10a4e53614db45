"""Checking once, in the driver and before any actor starts, that the job's hub models can be had.

Without it every actor would find out on its own, each after minutes of retries, each with its own log lines."""

from __future__ import annotations

import os
import re

from jobs.config.fit import Estimate, estimate_job
from jobs.config.model_family import fetch_family_files
from jobs.config.schema import JobConfig
from jobs.config.weights import WeightsError
from jobs.errors import ConfigError, one_line
from workers.errors import ModelNotFoundError
from workers.models.loading import (
    check_hub_model,
    explain_load_error,
    is_builtin,
    is_cached,
    is_hub_model,
    looks_like_path,
    quiet_hub,
)

# One request with no retries: a model that cannot be had fails the job in seconds.
HUB_TIMEOUT_S = 10
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def check_before_start(config: JobConfig) -> Estimate | None:
    """Everything a job's actors would otherwise find out one by one: its models, scorers and quantization.
    Returns what one actor needs in GPU memory (None for CPU actors), for jobs.config.fit.check_fit to set against
    the cluster's GPUs once Ray is connected."""
    check_models(config)
    check_quantize(config)
    return estimate_memory(config)


def estimate_memory(config: JobConfig) -> Estimate | None:
    """jobs.config.fit's estimate from the models' safetensors headers; None where the actors run on the CPU."""
    if config.resources.gpus_per_worker == 0:
        return None
    try:
        return estimate_job(config)
    except WeightsError as error:
        raise ConfigError(str(error)) from None


def check_models(config: JobConfig) -> None:
    """Raise ConfigError, one line naming the key and what to do, for a hub model the job could not load."""
    check_model("model.id", config.model.id, config.model.revision, "model_index.json")
    check_clip("clip.model", config.clip.model)
    check_score_models(config)


def check_score_models(config: JobConfig) -> None:
    """The `scores` section's models and head (genbatch rescore checks only these)."""
    scores = config.scores
    if scores.pickscore is not None:
        check_clip("scores.pickscore.model", scores.pickscore.model)
    if scores.aesthetic is not None:
        check_clip("scores.aesthetic.model", scores.aesthetic.model)
        check_aesthetic_head(scores.aesthetic.head, scores.aesthetic.model)


def check_clip(key: str, ref: str | None) -> None:
    """A CLIP reference: the hub can give it (`check_model`), and its weights, where they are at hand, are a
    whole CLIPModel's (`clip_weights_problem`)."""
    check_model(key, ref, None, "config.json")
    problem = clip_weights_problem(ref)
    if problem:
        raise ConfigError(f"{key}: {problem}")


def clip_weights_problem(ref: str | None) -> str | None:
    """`WHERE: not a complete CLIPModel: ...` for a local folder, or a hub model already in the cache, whose
    safetensors headers lack a part of a CLIPModel (a text encoder alone would load with a random vision tower);
    None otherwise, or where the weights are not at hand (the actor checks them once it has loaded them)."""
    from workers.models.weights_check import clip_folder_problem

    if ref is None or is_builtin(ref):
        return None
    if looks_like_path(ref):
        folder: str | None = os.path.expanduser(ref)
    elif is_hub_model(ref):
        quiet_hub()
        from huggingface_hub import try_to_load_from_cache

        config_file = try_to_load_from_cache(ref, "config.json")
        folder = os.path.dirname(config_file) if isinstance(config_file, str) else None
    else:
        folder = None
    if folder is None or not os.path.isdir(folder):
        return None
    problem = clip_folder_problem(folder)
    return f"{folder if looks_like_path(ref) else ref}: {problem}" if problem else None


def check_aesthetic_head(head: str, clip_ref: str) -> None:
    """The head's tensor names and shapes, from its file's header, against the LAION MLP and the CLIP's
    projection_dim: a wrong file fails here, before any actor loads anything."""
    from workers.errors import ScorerLoadError
    from workers.models.tiny import TEXT_DIM, TINY_HEAD
    from workers.scoring.scorers import clip_projection_dim, head_problem, head_shapes, tensor_shapes

    try:
        shapes = head_shapes(TEXT_DIM) if head == TINY_HEAD else tensor_shapes(head)
    except ScorerLoadError as error:
        raise ConfigError(f"scores.aesthetic.head: {error}") from None
    problem = head_problem(shapes, clip_projection_dim(clip_ref))
    if problem:
        raise ConfigError(f"scores.aesthetic.head: {head}: not an aesthetic head for CLIP {clip_ref!r}: {problem}")


def check_quantize(config: JobConfig) -> None:
    """Refuse fp8 where the config alone shows that no actor could run it. The driver cannot see the GPUs
    its actors will get: each actor checks its own (workers.pipeline.quantize.check_device) before it loads."""
    if config.performance.quantize != "fp8":
        return
    if config.resources.gpus_per_worker == 0:
        raise ConfigError(
            "performance.quantize: fp8 needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper, Blackwell), "
            "and resources.gpus_per_worker is 0 (the workers run on the CPU): use quantize: int8 (portable) or none"
        )
    if config.model.dtype in ("fp16", "fp32"):
        raise ConfigError(
            f"performance.quantize: fp8 needs model.dtype bf16 or auto (torchao's per-row fp8 scales are made from "
            f"bf16 weights), got {config.model.dtype}"
        )


def check_model(key: str, ref: str | None, revision: str | None, index_file: str) -> None:
    """`index_file` is a file every snapshot of such a model has; asking for it asks for the model."""
    if ref is None or not is_hub_model(ref):
        return
    quiet_hub()
    from huggingface_hub import constants

    try:
        check_hub_model(ref, revision, index_file)  # with HF_HUB_OFFLINE=1: in the cache, or an error
        if not constants.HF_HUB_OFFLINE:
            _ask_hub(key, ref, revision, index_file)
            if index_file == "model_index.json":  # a pipeline: know its family before any actor starts
                fetch_family_files(ref, revision, HUB_TIMEOUT_S)
    except ModelNotFoundError as error:
        raise ConfigError(f"{key}: {plain(error)}") from None


def _ask_hub(key: str, ref: str, revision: str | None, index_file: str) -> None:
    import httpx2
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError

    at = f" at revision {revision!r}" if revision else ""
    try:
        get_hf_file_metadata(hf_hub_url(ref, index_file, revision=revision), timeout=HUB_TIMEOUT_S)
    except RemoteEntryNotFoundError:
        kind = "a diffusers pipeline" if index_file == "model_index.json" else "a transformers model"
        raise ModelNotFoundError(
            f"model {ref!r}{at} has no {index_file} on the Hugging Face hub: it is not {kind}; check the id"
        ) from None
    except HfHubHTTPError as error:
        explained = explain_load_error(ref, revision, error)
        if explained is not error:
            raise explained from None
        status = error.response.status_code  # type: ignore[attr-defined]  # HfHubHTTPError has one
        advice = "check HF_TOKEN (or `hf auth login`)" if status in (401, 403) else "try again later"
        message = f"the Hugging Face hub answered HTTP {status} for model {ref!r}{at}; {advice}"
        raise ModelNotFoundError(message) from None
    except (httpx2.RequestError, OSError) as error:
        if is_cached(ref, revision, index_file):
            return  # the actors load it from the cache
        raise ModelNotFoundError(
            f"could not reach the Hugging Face hub ({constants.ENDPOINT}) for model {ref!r}{at} "
            f"({type(error).__name__}: {plain(error)}): check the network (or HF_ENDPOINT); to run without the hub, "
            f"fetch the model once with `hf download {ref}{' --revision ' + revision if revision else ''}` "
            "on every node and set HF_HUB_OFFLINE=1, "
            f"or point {key} at a local folder"
        ) from None


def plain(error: Exception) -> str:
    """An error's message on one line, without the terminal colour codes some libraries put in."""
    return one_line(_ANSI.sub("", str(error)) or type(error).__name__)
