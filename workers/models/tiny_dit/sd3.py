"""`tiny-sd3`: a random Stable Diffusion 3.5-medium-shaped pipeline.

Like SD3.5 medium: an MMDiT with RMS-normed query/key and a dual-attention (MMDiT-X) first layer, two CLIP text
encoders with projection (their pooled outputs concatenated) and a T5 whose width the CLIP states are padded
to, SD3's 16-channel VAE scaling and shift, and the shift-3 flow-matching scheduler. Real classifier-free
guidance: the batch doubles under `guidance_scale > 1`.
"""

from __future__ import annotations

from pathlib import Path

from workers.models.tiny import TEXT_DIM
from workers.models.tiny_dit.components import clip_text_encoder, flow_match_scheduler, kl_vae, t5_text_encoder

# The pipeline pads the two CLIPs' concatenated states (2 x TEXT_DIM wide) up to T5's width: it must be wider.
T5_WIDTH = 2 * TEXT_DIM


def save_tiny_sd3(folder: Path) -> None:
    import torch
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=16,  # latent pixels: the pipeline's default image is 16 x vae_scale_factor (2) = 32 px
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=T5_WIDTH,
        caption_projection_dim=32,
        pooled_projection_dim=2 * TEXT_DIM,
        pos_embed_max_size=64,  # up to 64 x 64 patches: images up to 256 px
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )
    text_encoder, tokenizer = clip_text_encoder(seed=1, with_projection=True)
    text_encoder_2, tokenizer_2 = clip_text_encoder(seed=2, with_projection=True)
    text_encoder_3, tokenizer_3 = t5_text_encoder(seed=3, d_model=T5_WIDTH)
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=flow_match_scheduler(shift=3.0),  # SD3.5's scheduler_config.json
        vae=kl_vae(seed=4, scaling_factor=1.5305, shift_factor=0.0609),  # SD3's VAE latent normalisation
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
