"""`tiny-flux2`: a random FLUX.2 [klein]-shaped pipeline (`Flux2KleinPipeline`, the base, undistilled variant).

Like FLUX.2 klein: a Qwen3 text encoder whose hidden states after layers 9, 18 and 27 are stacked (so the
tiny Qwen3 has 27 layers: the pipeline's default `text_encoder_out_layers` then work), a transformer without a
guidance embedding, FLUX.2's 32-channel VAE with the batch-norm statistics it normalises latents with, and the
dynamic-shift flow-matching scheduler (the pipeline computes its shift from the token and step counts).
`is_distilled=False`: `guidance_scale > 1` runs real classifier-free guidance against an empty prompt (the
pipeline takes no `negative_prompt`). Its VAE downsamples 2x, not 8x. `Flux2Pipeline` (FLUX.2 dev) is not
built: its Mistral-3 text encoder and Pixtral processor are far from tiny.
"""

from __future__ import annotations

from pathlib import Path

from workers.models.tiny_dit.components import flow_match_scheduler
from workers.models.tiny_dit.tokenizers import build_qwen_tokenizer
from workers.models.tiny_dit.z_image import TEXT_WIDTH, qwen3_config

LATENT_CHANNELS = 32
TEXT_LAYERS = 27  # the last of the pipeline's default text_encoder_out_layers (9, 18, 27)


def save_tiny_flux2(folder: Path) -> None:
    import torch
    from diffusers import AutoencoderKLFlux2, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,  # the pipeline packs 2x2 latent patches into channels
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * TEXT_WIDTH,  # three text-encoder layers, stacked
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),  # sums to attention_head_dim
        guidance_embeds=False,
    )
    torch.manual_seed(1)
    vae = AutoencoderKLFlux2(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        sample_size=32,
    )
    tokenizer = build_qwen_tokenizer()
    torch.manual_seed(2)
    text_encoder = Qwen3ForCausalLM(qwen3_config(tokenizer, num_hidden_layers=TEXT_LAYERS))
    pipeline = Flux2KleinPipeline(
        scheduler=flow_match_scheduler(shift=3.0, use_dynamic_shifting=True),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=False,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
