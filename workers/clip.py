"""CLIP scoring: cosine of CLIP's projected image and text embeddings, per image."""

from __future__ import annotations

import numpy as np


class ClipScorer:
    """Scores images against prompts. `clip_score` = 100 * max(cosine, 0)."""

    def __init__(self, model, processor, device):
        self.model = model
        self.processor = processor
        self.device = device
        self.max_tokens = model.config.text_config.max_position_embeddings

    def truncated(self, prompts: list[str]) -> np.ndarray:
        """Which prompts are longer than the text encoder takes (counting start and end tokens)."""
        lengths = [len(ids) for ids in self.processor.tokenizer(prompts, truncation=False)["input_ids"]]
        return np.array([n > self.max_tokens for n in lengths], dtype=bool)

    def cosines(self, images: list, prompts: list[str]) -> np.ndarray:
        """Cosine similarity of each image (PIL) with its own prompt, as float32."""
        import torch

        # The tokenizer truncates before adding special tokens, so the end-of-text token that CLIP
        # pools on is kept even for prompts that are cut.
        text = self.processor.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        pixels = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            text_out = self.model.text_model(
                input_ids=text["input_ids"].to(self.device), attention_mask=text["attention_mask"].to(self.device)
            )
            image_out = self.model.vision_model(pixel_values=pixels.to(self.device, self.model.dtype))
            text_embeds = self.model.text_projection(text_out.pooler_output)
            image_embeds = self.model.visual_projection(image_out.pooler_output)
            cosine = torch.nn.functional.cosine_similarity(image_embeds.float(), text_embeds.float(), dim=-1)
        return cosine.cpu().numpy().astype(np.float32)
