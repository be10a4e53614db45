"""Tiny random components shared by the DiT families: CLIP (from `workers.models.tiny`), T5, a 16-channel KL VAE
and the flow-matching scheduler.

Sizes are the smallest that keep each component's real structure (gated feed-forward and relative attention
in T5, no quant convs and a shift factor in the VAE).
"""

from __future__ import annotations

from workers.models import tiny
from workers.models.tiny_dit.tokenizers import build_t5_tokenizer

T5_DIM = 32


def clip_text_encoder(seed: int, with_projection: bool = False):
    """The tiny CLIP text encoder of `workers.models.tiny` (hidden size and projection TEXT_DIM), with its tokenizer."""
    import torch
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tiny.build_tokenizer()
    torch.manual_seed(seed)
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return model_class(tiny.text_config(tiny.TINY_TEXT, tokenizer)), tokenizer


def t5_text_encoder(seed: int, d_model: int = T5_DIM):
    """A tiny T5 v1.1-style encoder (gated GELU, as FLUX.1 and SD3 use), with its tokenizer."""
    import torch
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_t5_tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
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


def kl_vae(
    seed: int, scaling_factor: float, shift_factor: float | None, latent_channels: int = 16, quant_convs: bool = False
):
    """A tiny KL VAE: FLUX.1/SD3-style by default (16 latent channels, no quant convs, the family's scaling and
    shift); Stable Diffusion-style with 4 channels, quant convs and no shift.

    Two blocks: it downsamples 2x (the real ones 8x), so the pipelines' `vae_scale_factor` is 2."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=quant_convs,
        use_post_quant_conv=quant_convs,
    )


def flow_match_scheduler(**config):
    """FlowMatchEulerDiscreteScheduler with the family's settings (its real scheduler_config.json)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, **config)
