"""`tiny-pixart`: a random PixArt-Sigma-shaped pipeline.

Like PixArt-Sigma: a DiT with adaLN-single timestep conditioning and cross-attention to T5 hidden states,
predicting noise and a learned variance (8 output channels for 4 latent ones; the pipeline keeps the noise
half), Stable Diffusion's 4-channel KL VAE with SDXL's scaling factor (PixArt-Sigma ships SDXL's VAE), and the
DPM-Solver++ of its scheduler_config.json. Its VAE downsamples 2x, not 8x. Real classifier-free guidance:
`guidance_scale > 1` with `negative_prompt` (default ""). The transformer's `sample_size` 16 is not one of the
pipeline's aspect-ratio bin sizes: call it with `use_resolution_binning=False`.
"""

from __future__ import annotations

from pathlib import Path

from workers.models.tiny_dit.components import T5_DIM, kl_vae, t5_text_encoder

LATENT_CHANNELS = 4
SDXL_VAE_SCALING = 0.13025



def save_tiny_pixart(folder: Path) -> None:
    import torch
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=16,  # latent pixels: the pipeline's default image is 16 x vae_scale_factor (2) = 32 px
        patch_size=2,
        in_channels=LATENT_CHANNELS,
        out_channels=2 * LATENT_CHANNELS,  # noise and learned variance, as PixArt-Sigma's
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=T5_DIM,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        use_additional_conditions=False,  # Sigma has no resolution/aspect-ratio embedding (Alpha 1024 does)
    )
    text_encoder, tokenizer = t5_text_encoder(seed=1)
    pipeline = PixArtSigmaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=kl_vae(2, SDXL_VAE_SCALING, None, LATENT_CHANNELS, quant_convs=True),  # SD-style, as PixArt-Sigma ships
        transformer=transformer,
        # PixArt-Sigma's scheduler_config.json: DPM-Solver++ (2nd order) on the linear beta schedule, epsilon.
        scheduler=DPMSolverMultistepScheduler(
            beta_start=0.0001,
            beta_end=0.02,
            beta_schedule="linear",
            algorithm_type="dpmsolver++",
            solver_order=2,
            prediction_type="epsilon",
        ),
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
