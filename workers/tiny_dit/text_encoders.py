"""Tiny random text encoders shared by the DiT families: CLIP (from `workers.tiny`) and T5.

Sizes are the smallest that keep each encoder's real structure (gated feed-forward, relative attention).
"""

from __future__ import annotations

from workers import tiny
from workers.tiny_dit.tokenizers import build_t5_tokenizer

T5_DIM = 32


def clip_text_encoder(seed: int, with_projection: bool = False):
    """The tiny CLIP text encoder of `workers.tiny` (hidden size and projection TEXT_DIM), with its tokenizer."""
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tiny.build_tokenizer()
    torch.manual_seed(seed)
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return model_class(tiny._text_config(tokenizer)), tokenizer


def t5_text_encoder(seed: int):
    """A tiny T5 v1.1-style encoder (gated GELU, as FLUX.1 and SD3 use), with its tokenizer."""
    import torch
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_t5_tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=T5_DIM,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config), tokenizer
