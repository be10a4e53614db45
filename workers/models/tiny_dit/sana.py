"""`tiny-sana`: a random Sana-shaped pipeline.

Like Sana 1.0: a linear-attention DiT with cross-attention to Gemma-2 hidden states (the pipeline prefixes
its "complex human instruction" to every prompt), a deep-compression autoencoder (DC-AE) with 32 latent
channels, and the flow-prediction DPM-Solver++ of Sana's scheduler_config.json. Its DC-AE downsamples 2x,
not 32x. Real classifier-free guidance: `guidance_scale > 1` with `negative_prompt` (default "").
The transformer's `sample_size` 16 picks Sana's 512 px aspect-ratio bins: call it with
`use_resolution_binning=False` to generate at the asked size.
"""

from __future__ import annotations

from pathlib import Path

from workers.models.tiny_dit.tokenizers import build_gemma_tokenizer

TEXT_WIDTH = 32
LATENT_CHANNELS = 32


def gemma2_text_encoder(seed: int, tokenizer):
    """A tiny Gemma-2 (alternating sliding/full attention, logit soft-capping) for the offline Gemma tokenizer."""
    import torch
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=64,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    return Gemma2Model(config)


def save_tiny_sana(folder: Path) -> None:
    import torch
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=2,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=TEXT_WIDTH,
        mlp_ratio=2.5,
        sample_size=16,
        patch_size=1,
    )
    torch.manual_seed(1)
    vae = AutoencoderDC(
        in_channels=3,
        latent_channels=LATENT_CHANNELS,
        attention_head_dim=4,
        encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"),
        # The encoder's and decoder's shortcuts need the last width a multiple of the latent channels.
        encoder_block_out_channels=(8, LATENT_CHANNELS),
        decoder_block_out_channels=(8, LATENT_CHANNELS),
        encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1),
        encoder_qkv_multiscales=((), (5,)),
        decoder_qkv_multiscales=((), (5,)),
        scaling_factor=0.41407,  # Sana's DC-AE f32c32
    )
    tokenizer = build_gemma_tokenizer()
    pipeline = SanaPipeline(
        tokenizer=tokenizer,
        text_encoder=gemma2_text_encoder(seed=2, tokenizer=tokenizer),
        vae=vae,
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
