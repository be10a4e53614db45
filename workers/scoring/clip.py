"""CLIP scoring: cosine of CLIP's projected image and text embeddings, per image."""

from __future__ import annotations

import numpy as np


class ClipScorer:
    """Scores images against prompts. `clip_score` = 100 * max(cosine, 0).

    Images are preprocessed either by the model's CLIPProcessor (on the CPU, from PIL images: exact) or
    on the device from the pixel tensor (`on_device`): the same resize, crop and normalisation, without
    a round trip through PIL, matching the processor within 1e-3 in cosine.
    """

    def __init__(self, model, processor, device, on_device: bool = False):
        self.model = model
        self.processor = processor
        self.device = device
        self.on_device = on_device
        self.max_tokens = model.config.text_config.max_position_embeddings

    def truncated(self, prompts: list[str]) -> np.ndarray:
        """Which prompts are longer than the text encoder takes (counting start and end tokens)."""
        lengths = [len(ids) for ids in self.processor.tokenizer(prompts, truncation=False)["input_ids"]]
        return np.array([n > self.max_tokens for n in lengths], dtype=bool)

    def cosines(self, pixels, prompts: list[str]) -> np.ndarray:
        """Cosine similarity of each image (uint8 tensor N,H,W,3) with its own prompt, as float32."""
        import torch

        # The tokenizer truncates before adding special tokens, so the end-of-text token that CLIP
        # pools on is kept even for prompts that are cut.
        text = self.processor.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        if self.on_device:
            pixel_values = preprocess_on_device(pixels.to(self.device), self.processor.image_processor)
        else:
            from PIL import Image

            images = [Image.fromarray(image) for image in pixels.cpu().numpy()]
            pixel_values = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            text_out = self.model.text_model(
                input_ids=text["input_ids"].to(self.device), attention_mask=text["attention_mask"].to(self.device)
            )
            image_out = self.model.vision_model(pixel_values=pixel_values.to(self.device, self.model.dtype))
            text_embeds = self.model.text_projection(text_out.pooler_output)
            image_embeds = self.model.visual_projection(image_out.pooler_output)
            cosine = torch.nn.functional.cosine_similarity(image_embeds.float(), text_embeds.float(), dim=-1)
        return cosine.cpu().numpy().astype(np.float32)


def preprocess_on_device(pixels, image_processor):
    """CLIPImageProcessor's steps on a uint8 (N, H, W, 3) tensor: resize the shortest edge (bicubic,
    antialiased like PIL), round to uint8 as PIL does, center-crop, rescale, normalize."""
    import torch
    import torch.nn.functional as F

    images = pixels.permute(0, 3, 1, 2).float()
    height, width = images.shape[-2:]
    if getattr(image_processor, "do_resize", True):
        short = image_processor.size["shortest_edge"]
        scale = short / min(height, width)
        size = (short, int(width * scale)) if height <= width else (int(height * scale), short)
        images = F.interpolate(images, size=size, mode="bicubic", antialias=True, align_corners=False)
        images = images.round().clamp(0, 255)
    if getattr(image_processor, "do_center_crop", True):
        crop_h, crop_w = image_processor.crop_size["height"], image_processor.crop_size["width"]
        top, left = (images.shape[-2] - crop_h) // 2, (images.shape[-1] - crop_w) // 2
        images = images[..., top : top + crop_h, left : left + crop_w]
    if getattr(image_processor, "do_rescale", True):
        images = images * image_processor.rescale_factor
    if getattr(image_processor, "do_normalize", True):
        mean = torch.tensor(image_processor.image_mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(image_processor.image_std, device=images.device).view(1, -1, 1, 1)
        images = (images - mean) / std
    return images
