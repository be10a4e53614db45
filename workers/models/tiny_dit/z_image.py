"""`tiny-z-image`: a random Z-Image-Turbo-shaped pipeline.

Like Z-Image: a single-stream DiT with noise and caption refiner layers, fed the second-to-last hidden states of
a Qwen3 language model over Qwen's chat template, FLUX.1's 16-channel VAE, and Z-Image-Turbo's shift-3
flow-matching scheduler. Guidance: `guidance_scale > 0` turns on real classifier-free guidance (Turbo is
distilled and runs with 0). Its VAE downsamples 2x, not 8x.
"""

from __future__ import annotations

from pathlib import Path

from workers.models.tiny_dit.components import flow_match_scheduler, kl_vae
from workers.models.tiny_dit.tokenizers import build_qwen_tokenizer

TEXT_WIDTH = 32


def qwen3_config(tokenizer, num_hidden_layers: int):
    """A tiny Qwen3 (grouped-query attention with query/key RMS norms) for Qwen's offline tokenizer."""
    from transformers import Qwen3Config

    special = tokenizer.convert_tokens_to_ids
    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=64,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=2048,
        bos_token_id=special("<|endoftext|>"),
        eos_token_id=special("<|im_end|>"),
        pad_token_id=special("<|endoftext|>"),
        tie_word_embeddings=True,
    )


def save_tiny_z_image(folder: Path) -> None:
    import torch
    from diffusers import ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Model

    torch.manual_seed(0)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=TEXT_WIDTH,
        axes_dims=[4, 6, 6],  # sums to the head size, dim / n_heads
        axes_lens=[1024, 512, 512],
    )
    tokenizer = build_qwen_tokenizer()
    torch.manual_seed(1)
    text_encoder = Qwen3Model(qwen3_config(tokenizer, num_hidden_layers=2))
    pipeline = ZImagePipeline(
        scheduler=flow_match_scheduler(shift=3.0),  # Z-Image-Turbo's scheduler_config.json
        vae=kl_vae(seed=2, scaling_factor=0.3611, shift_factor=0.1159),  # FLUX.1's VAE, as Z-Image uses
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
