"""Independent references: plain diffusers and transformers calls, no genbatch code."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPProcessor


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def plain_diffusers_image(pipeline, prompt, negative_prompt, seed, steps, guidance, width, height) -> np.ndarray:
    """What a user gets from a plain StableDiffusionPipeline call, as uint8 pixels."""
    image = pipeline(
        prompt,
        negative_prompt=negative_prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        width=width,
        height=height,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    return np.asarray(image)


def reference_cosine(model, processor, image: np.ndarray, prompt: str) -> float:
    inputs = processor(
        text=[prompt], images=[Image.fromarray(image)], return_tensors="pt", padding=True, truncation=True
    )
    with torch.no_grad():
        out = model(**inputs)
    return float(torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).item())


def reference_pickscore(folder, image: np.ndarray, prompt: str) -> float:
    """PickScore as its model card computes it: CLIPModel's own forward, one image and its prompt."""
    model, processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)
    inputs = processor(
        text=[prompt], images=[Image.fromarray(image)], return_tensors="pt", padding=True, truncation=True,
        max_length=77,
    )  # fmt: skip
    with torch.no_grad():
        out = model(**inputs)
    # logits_per_image = logit_scale.exp() * normalised image embeds @ normalised text embeds
    return float(out.logits_per_image[0, 0])


def plain_aesthetic_mlp(path) -> torch.nn.Sequential:
    """The LAION predictor's layers, written out as its source does, loaded from the same safetensors file."""
    dim = load_file(path)["layers.0.weight"].shape[1]
    mlp = torch.nn.Sequential(
        torch.nn.Linear(dim, 1024),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(1024, 128),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(128, 64),
        torch.nn.Dropout(0.1),
        torch.nn.Linear(64, 16),
        torch.nn.Linear(16, 1),
    )
    mlp.load_state_dict({name.removeprefix("layers."): value for name, value in load_file(path).items()})
    return mlp.eval()


def reference_aesthetic(clip_folder, head_path, image: np.ndarray) -> float:
    model, processor = CLIPModel.from_pretrained(clip_folder).eval(), CLIPProcessor.from_pretrained(clip_folder)
    inputs = processor(text=["x"], images=[Image.fromarray(image)], return_tensors="pt")
    with torch.no_grad():
        embeds = model(**inputs).image_embeds
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        return float(plain_aesthetic_mlp(head_path)(embeds)[0, 0])
