"""Per-image scores besides the CLIP score: PickScore and the LAION aesthetic predictor (columns.SCORES).

Each scorer has one call, `score(pixels, prompts)`, on the exact uint8 pixels that are written, and gives
one float32 per image. A scorer whose CLIP is the job's `clip.model` uses the CLIP already loaded for the
CLIP score: one copy of the weights on the device.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from typing import Protocol

import numpy as np

from workers.errors import ScorerLoadError, one_line
from workers.io import columns as C
from workers.models import loading, tiny
from workers.models.aesthetic_mlp import AESTHETIC_LINEARS, aesthetic_mlp, head_shapes
from workers.scoring.clip import preprocess_on_device
from workers.tasks import ScoreModels

logger = logging.getLogger(__name__)


class Scorer(Protocol):
    column: str  # the output column it fills
    needs_prompt: bool  # rows without a prompt get null

    def score(self, pixels, prompts: list[str]) -> np.ndarray:
        """One float32 per image (uint8 tensor N, H, W, 3); `prompts` are the images' own."""


def score_columns(models: ScoreModels) -> tuple[str, ...]:
    """The score columns a job with these scorers writes, in columns.SCORES' order."""
    wanted = {C.PICKSCORE: models.pickscore is not None, C.AESTHETIC: models.aesthetic is not None}
    return tuple(name for name in C.SCORES if wanted[name])


class PickScorer:
    """`pickscore` = logit_scale.exp() * cosine(image_embeds, text_embeds) of a CLIPModel (PickScore's formula,
    per image: no softmax across images). Text is cut to the model's 77 tokens, keeping the end token."""

    column = C.PICKSCORE
    needs_prompt = True

    def __init__(self, model, processor, device, on_device: bool = False):
        self.model, self.processor, self.device, self.on_device = model, processor, device, on_device

    def score(self, pixels, prompts: list[str]) -> np.ndarray:
        import torch

        max_tokens = self.model.config.text_config.max_position_embeddings
        # The tokenizer truncates before it adds the special tokens: the end token CLIP pools on is kept.
        text = self.processor.tokenizer(
            prompts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt"
        )
        with torch.inference_mode():
            text_out = self.model.text_model(
                input_ids=text["input_ids"].to(self.device), attention_mask=text["attention_mask"].to(self.device)
            )
            text_embeds = _unit(self.model.text_projection(text_out.pooler_output).float())
            image_embeds = _unit(image_embeddings(self.model, self.processor, pixels, self.device, self.on_device))
            scores = self.model.logit_scale.exp().float() * (image_embeds * text_embeds).sum(dim=-1)
        return scores.cpu().numpy().astype(np.float32)


class AestheticScorer:
    """`aesthetic` = the LAION aesthetic MLP on the L2-normalised CLIP image embedding."""

    column = C.AESTHETIC
    needs_prompt = False

    def __init__(self, model, processor, head, device, on_device: bool = False):
        self.model, self.processor, self.head, self.device, self.on_device = model, processor, head, device, on_device

    def score(self, pixels, prompts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            embeds = _unit(image_embeddings(self.model, self.processor, pixels, self.device, self.on_device))
            scores = self.head(embeds).squeeze(-1)
        return scores.cpu().numpy().astype(np.float32)


def image_embeddings(model, processor, pixels, device, on_device: bool):
    """CLIP's projected image embeddings (float32) of uint8 pixels (N, H, W, 3), preprocessed as ClipScorer does."""
    import torch

    if on_device:
        pixel_values = preprocess_on_device(pixels.to(device), processor.image_processor)
    else:
        from PIL import Image

        images = [Image.fromarray(image) for image in pixels.cpu().numpy()]
        pixel_values = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        out = model.vision_model(pixel_values=pixel_values.to(device, model.dtype))
        return model.visual_projection(out.pooler_output).float()


def _unit(embeds):
    return embeds / embeds.norm(dim=-1, keepdim=True)


def build_scorers(models: ScoreModels, device, clip=None, on_device: bool = False, load=None) -> list[Scorer]:
    """The scorers `models` asks for, in columns.SCORES' order. `clip` is (ref, model, processor) of the CLIP
    already loaded for the CLIP score: a scorer naming the same ref shares it; each other ref loads once.
    `load(ref, device)` loads a CLIP (default: workers.models.loading.load_clip)."""
    if load is None:
        load = loading.load_clip
    loaded: dict[str, tuple] = {} if clip is None else {clip[0]: (clip[1], clip[2])}

    def clip_for(ref: str) -> tuple:
        if ref not in loaded:
            loaded[ref] = load(ref, device)
        return loaded[ref]

    scorers: list[Scorer] = []
    if models.pickscore is not None:
        model, processor = clip_for(models.pickscore)
        scorers.append(PickScorer(model, processor, device, on_device))
    if models.aesthetic is not None:
        assert models.aesthetic_head is not None  # the config asks for both
        model, processor = clip_for(models.aesthetic)
        head = load_aesthetic_head(models.aesthetic_head, model.config.projection_dim, models.aesthetic, device)
        scorers.append(AestheticScorer(model, processor, head, device, on_device))
    return scorers


def head_problem(found: dict[str, tuple[int, ...]], input_dim: int | None) -> str | None:
    """What is wrong with a head holding tensors of these shapes, for a CLIP of `input_dim` (None: not known,
    the first layer's input is then not checked); None when it is right. Names the first wrong tensor."""
    first = f"layers.{AESTHETIC_LINEARS[0]}.weight"
    expected = head_shapes(input_dim if input_dim is not None else found.get(first, (0, 0))[-1])
    for name, shape in expected.items():
        if name not in found:
            return f"no tensor {name}"
        if tuple(found[name]) != shape:
            problem = f"{name} has shape {list(found[name])}, expected {list(shape)}"
            if name == first and input_dim is not None and tuple(found[name])[:1] == shape[:1]:
                problem += f" (the head's input must be the CLIP's projection_dim, {input_dim})"
            return problem
    extra = sorted(set(found) - set(expected))
    return f"unexpected tensor {extra[0]}" if extra else None


def head_file(head: str) -> str:
    """The safetensors file behind `scores.aesthetic.head` (the tiny head is built on first use)."""
    return str(tiny.tiny_aesthetic_head()) if head == tiny.TINY_HEAD else head


def tensor_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape from a safetensors file's header, without reading the tensors (nor importing torch)."""
    try:
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        return {name: tuple(entry["shape"]) for name, entry in header.items() if name != "__metadata__"}
    except (OSError, struct.error, ValueError, TypeError, KeyError, MemoryError) as error:
        raise ScorerLoadError(f"{path}: not a readable safetensors file ({one_line(error)})") from None


def load_aesthetic_head(head: str, input_dim: int, clip_ref: str, device):
    """The aesthetic MLP from its safetensors file, checked against the LAION names and shapes and the
    CLIP's projection_dim first, so a wrong file is one line naming its first wrong tensor."""
    from safetensors.torch import load_file

    path = head_file(head)
    problem = head_problem(tensor_shapes(path), input_dim)
    if problem:
        raise ScorerLoadError(f"{path}: not an aesthetic head for CLIP {clip_ref!r}: {problem}")
    state = load_file(path)
    mlp = aesthetic_mlp(input_dim)
    mlp.load_state_dict({name.removeprefix("layers."): tensor for name, tensor in state.items()}, strict=True)
    logger.info("loaded aesthetic head %s", path)
    return mlp.to(device).eval()


def clip_projection_dim(ref: str) -> int | None:
    """A CLIP's projection_dim read from its config.json without loading it; None where that file is not at
    hand (a hub model not yet in the cache: the actor checks once it has the model)."""
    if loading.is_builtin(ref):
        return tiny.TEXT_DIM
    config_file: str | None = None
    if loading.looks_like_path(ref):
        config_file = os.path.join(os.path.expanduser(ref), "config.json")
    elif loading.is_hub_model(ref):
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(ref, "config.json")
        config_file = cached if isinstance(cached, str) else None
    if config_file is None or not os.path.isfile(config_file):
        return None
    with open(config_file, encoding="utf-8") as handle:
        value = json.load(handle).get("projection_dim")
    return value if isinstance(value, int) else None
