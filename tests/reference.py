"""Independent references: plain diffusers and transformers calls, no genbatch code."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


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
