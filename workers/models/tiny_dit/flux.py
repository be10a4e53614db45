"""`tiny-flux`: a random FLUX.1-dev-shaped pipeline (guidance-distilled: `guidance_embeds=True`).

Like FLUX.1: a 16-channel VAE without quant convs and with FLUX's scaling and shift factors, latents packed
2x2 into the transformer's 64 input channels, CLIP (pooled) + T5 (sequence) text encoders, and the dynamic-shift
flow-matching scheduler of FLUX.1-dev. Its VAE has 2 blocks (downsampling 2x, not 8x) to stay tiny.
"""

from __future__ import annotations

from pathlib import Path

from workers.models.tiny import TEXT_DIM
from workers.models.tiny_dit.components import T5_DIM, clip_text_encoder, flow_match_scheduler, kl_vae, t5_text_encoder

LATENT_CHANNELS = 16


def save_tiny_flux(folder: Path) -> None:
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,  # the pipeline packs 2x2 latent patches into channels
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=T5_DIM,
        pooled_projection_dim=TEXT_DIM,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
    )
    text_encoder, tokenizer = clip_text_encoder(seed=1)
    text_encoder_2, tokenizer_2 = t5_text_encoder(seed=2)
    pipeline = FluxPipeline(
        # FLUX.1-dev's scheduler_config.json: the shift grows with the image's token count.
        scheduler=flow_match_scheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        # FLUX.1's VAE latent normalisation (ae.safetensors config).
        vae=kl_vae(seed=3, scaling_factor=0.3611, shift_factor=0.1159, latent_channels=LATENT_CHANNELS),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
