"""`tiny-qwen-image`: a random Qwen-Image-shaped pipeline.

Like Qwen-Image: an MMDiT fed the last hidden states of a Qwen2.5-VL language model (after the chat template's
34-token system prefix, which the tiny tokenizer keeps at 34 tokens), Qwen-Image's 16-channel causal-3D VAE
with its per-channel latent mean and std, and Qwen-Image's dynamic, exponential-shift flow-matching schedule.
Real classifier-free guidance: `true_cfg_scale` with a `negative_prompt`. Its VAE downsamples 2x, not 8x.
"""

from __future__ import annotations

from pathlib import Path

from workers.models.tiny_dit.components import flow_match_scheduler
from workers.models.tiny_dit.tokenizers import build_qwen_tokenizer

TEXT_WIDTH = 32
LATENT_CHANNELS = 16


def qwen2_5_vl_text_encoder(seed: int, tokenizer):
    """A tiny Qwen2.5-VL (2 language layers, grouped-query attention, multimodal RoPE; a 1-block vision tower)."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    special = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": TEXT_WIDTH,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 2048,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": special("<|endoftext|>"),
            "eos_token_id": special("<|im_end|>"),
            "pad_token_id": special("<|endoftext|>"),
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "patch_size": 4,
            "out_hidden_size": TEXT_WIDTH,
            "fullatt_block_indexes": [0],
        },
        image_token_id=special("<|image_pad|>"),
        video_token_id=special("<|video_pad|>"),
        vision_start_token_id=special("<|vision_start|>"),
        vision_end_token_id=special("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config)


def save_tiny_qwen_image(folder: Path) -> None:
    import torch
    from diffusers import AutoencoderKLQwenImage, QwenImagePipeline, QwenImageTransformer2DModel

    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=4 * LATENT_CHANNELS,  # the pipeline packs 2x2 latent patches into channels
        out_channels=LATENT_CHANNELS,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_WIDTH,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
    )
    torch.manual_seed(1)
    # Qwen-Image's latent mean and std per channel are the class defaults; two levels instead of four.
    vae = AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=LATENT_CHANNELS,
        dim_mult=[1, 2],
        num_res_blocks=1,
        temperal_downsample=[False],
    )
    tokenizer = build_qwen_tokenizer()
    pipeline = QwenImagePipeline(
        # Qwen-Image's scheduler_config.json.
        scheduler=flow_match_scheduler(
            shift=1.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=0.9,
            base_image_seq_len=256,
            max_image_seq_len=8192,
            shift_terminal=0.02,
            time_shift_type="exponential",
        ),
        vae=vae,
        text_encoder=qwen2_5_vl_text_encoder(seed=2, tokenizer=tokenizer),
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipeline.save_pretrained(folder, safe_serialization=True)
