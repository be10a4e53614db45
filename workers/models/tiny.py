"""The built-in `tiny` models: a random Stable Diffusion pipeline and a random CLIP, built in code.

They are saved once, in the standard diffusers/transformers folder format, to a cache folder and then
loaded through the same `from_pretrained` path as any real model. Nothing is downloaded.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

from workers.models.aesthetic_mlp import aesthetic_mlp

logger = logging.getLogger(__name__)

TINY = "tiny"
TINY_SDXL = "tiny-sdxl"
TINY_PICKSCORE = "tiny-pickscore"  # a random CLIPModel with PickScore's logit scale (scores.pickscore.model)
TINY_HEAD = "tiny"  # scores.aesthetic.head: a random LAION-shaped aesthetic MLP for the tiny CLIPs
AESTHETIC_HEAD_FILE = "aesthetic-mlp.safetensors"
PICKSCORE_LOGIT_SCALE = 4.6052  # ln(100), PickScore_v1's learned value: scores land near its 0-100 range
# Bump when the architecture or seeds below change, so stale caches are rebuilt.
TINY_VERSION = "2"
MAX_TOKENS = 77
TEXT_DIM = 32


def cache_root() -> Path:
    """Where built-in models are saved: $GENBATCH_CACHE, else ~/.cache/genbatch."""
    root = os.environ.get("GENBATCH_CACHE") or Path.home() / ".cache" / "genbatch"
    return Path(root)


def tiny_pipeline_dir() -> Path:
    """Folder of the tiny Stable Diffusion pipeline, built on first use."""
    return _build_once(cache_root() / f"tiny-sd-v{TINY_VERSION}", _save_tiny_pipeline)


def tiny_sdxl_dir() -> Path:
    """Folder of the tiny SDXL pipeline (two text encoders, pooled embeddings, size conditioning)."""
    return _build_once(cache_root() / f"tiny-sdxl-v{TINY_VERSION}", _save_tiny_sdxl)


def tiny_clip_dir() -> Path:
    """Folder of the tiny CLIP model and processor, built on first use."""
    return _build_once(cache_root() / f"tiny-clip-v{TINY_VERSION}", _save_tiny_clip)


def tiny_pickscore_dir() -> Path:
    """Folder of the tiny PickScore-like CLIPModel and processor, built on first use."""
    return _build_once(cache_root() / f"tiny-pickscore-v{TINY_VERSION}", _save_tiny_pickscore)


def tiny_aesthetic_head() -> Path:
    """The tiny aesthetic head's safetensors file: the LAION MLP's names and shapes, its input the tiny
    CLIPs' projection_dim (TEXT_DIM) instead of 768."""
    folder = _build_once(cache_root() / f"tiny-aesthetic-v{TINY_VERSION}", _save_tiny_aesthetic_head)
    return folder / AESTHETIC_HEAD_FILE


def _build_once(target: Path, save) -> Path:
    # Several actors may race to build the same folder: each builds in a private temp folder and
    # renames it into place; the loser discards its copy. A present target is always complete.
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        save(tmp)
        try:
            os.rename(tmp, target)
            logger.info("built %s", target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_tokenizer():
    """The tiny models' tokenizer (benchmarks build bigger random models with it too)."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    # A byte-level BPE vocabulary with no merges: every character is a token, which keeps the
    # vocabulary small and makes long prompts long (useful for truncation tests).
    vocab: dict[str, int] = {}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=MAX_TOKENS)


# The tiny models' sizes, in the arguments of their classes (CLIPTextConfig, CLIPVisionConfig, UNet2DConditionModel,
# AutoencoderKL). A text tower's `vocab_size` 0 is raised to the tokenizer's size (`text_config`).
TINY_TEXT = {
    "vocab_size": 0,
    "hidden_size": TEXT_DIM,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": MAX_TOKENS,
    "projection_dim": TEXT_DIM,
}
TINY_VISION = {
    "image_size": 32,
    "patch_size": 4,
    "hidden_size": TEXT_DIM,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "projection_dim": TEXT_DIM,
}
# The UNet shared by `tiny` and `tiny-sdxl`; each adds its family's conditioning.
_TINY_UNET = {
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 4,
}
TINY_SD_UNET = {**_TINY_UNET, "cross_attention_dim": TEXT_DIM, "attention_head_dim": 4}
_SDXL_TIME_EMBED_DIM = 8
TINY_SDXL_UNET = {
    **_TINY_UNET,
    "attention_head_dim": (2, 4),
    "use_linear_projection": True,
    # SDXL's conditioning: pooled text embedding + (original size, crop, target size) time embeddings.
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": _SDXL_TIME_EMBED_DIM,
    "transformer_layers_per_block": (1, 2),
    "projection_class_embeddings_input_dim": 6 * _SDXL_TIME_EMBED_DIM + TEXT_DIM,
    "cross_attention_dim": 2 * TEXT_DIM,  # both encoders' hidden states, concatenated
}
TINY_VAE = {
    "block_out_channels": [8, 16],
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 16,
}
TINY_SDXL_VAE = {**TINY_VAE, "scaling_factor": 0.13025, "force_upcast": False}  # SDXL's VAE scaling factor


def text_config(text: dict, tokenizer):
    """A CLIPTextConfig of `text`'s sizes for `tokenizer` (its special tokens; a vocabulary at least its size)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        **{**text, "vocab_size": max(text["vocab_size"], len(tokenizer))},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def clip_config(text: dict, vision: dict, tokenizer, **options):
    """A CLIPConfig of these text and vision towers' sizes (`options`: CLIPConfig's own, e.g. the logit scale)."""
    from transformers import CLIPConfig, CLIPVisionConfig

    return CLIPConfig(
        text_config=text_config(text, tokenizer).to_dict(),
        vision_config=CLIPVisionConfig(**vision).to_dict(),
        projection_dim=vision["projection_dim"],
        **options,
    )


def save_sd_pipeline(
    folder: Path,
    unet: dict,
    vae: dict,
    text: dict,
    scheduler,
    text_2: dict | None = None,
    dtype=None,
    text_2_seed: int = 1,
) -> None:
    """A Stable Diffusion pipeline of these sizes with random weights, from fixed seeds, saved to `folder`; with
    `text_2` (the second text encoder's sizes: it has a projection, the pooled embedding) an SDXL one.
    The built-in tiny pipelines are built here, and the benchmarks' full-sized ones (stored in `dtype`)."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    def seeded(seed: int, build):
        torch.manual_seed(seed)
        model = build()
        return model if dtype is None else model.to(dtype)

    tokenizer = build_tokenizer()
    unet_model = seeded(0, lambda: UNet2DConditionModel(**unet))
    vae_model = seeded(0, lambda: AutoencoderKL(**vae))
    text_encoder = seeded(0, lambda: CLIPTextModel(text_config(text, tokenizer)))
    if text_2 is None:
        pipeline = StableDiffusionPipeline(
            unet=unet_model,
            vae=vae_model,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    else:
        text_encoder_2 = seeded(text_2_seed, lambda: CLIPTextModelWithProjection(text_config(text_2, tokenizer)))
        pipeline = StableDiffusionXLPipeline(
            vae=vae_model,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=build_tokenizer(),
            unet=unet_model,
            scheduler=scheduler,
            add_watermarker=False,
        )
    pipeline.save_pretrained(folder, safe_serialization=True)


def save_clip(folder: Path, text: dict, vision: dict, seed: int, **config_options) -> None:
    """A CLIPModel of these sizes with random weights (from `seed`), and its processor, saved to `folder`.
    The processor is CLIP's own preprocessing (shortest edge resized, centre crop, OpenAI mean/std) at the
    vision tower's image size."""
    import torch
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = build_tokenizer()
    config = clip_config(text, vision, tokenizer, **config_options)
    torch.manual_seed(seed)
    model = CLIPModel(config)
    image_size = vision["image_size"]
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    model.save_pretrained(folder, safe_serialization=True)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)


def _save_tiny_pipeline(folder: Path) -> None:
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    save_sd_pipeline(folder, TINY_SD_UNET, TINY_VAE, TINY_TEXT, scheduler)


def _save_tiny_sdxl(folder: Path) -> None:
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    save_sd_pipeline(folder, TINY_SDXL_UNET, TINY_SDXL_VAE, TINY_TEXT, scheduler, text_2=TINY_TEXT)


def _save_tiny_clip(folder: Path) -> None:
    save_clip(folder, TINY_TEXT, TINY_VISION, seed=1)


def _save_tiny_pickscore(folder: Path) -> None:
    save_clip(folder, TINY_TEXT, TINY_VISION, seed=3, logit_scale_init_value=PICKSCORE_LOGIT_SCALE)


def _save_tiny_aesthetic_head(folder: Path) -> None:
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(2)
    mlp = aesthetic_mlp(TEXT_DIM)
    # The original's names: its module kept the nn.Sequential as `layers`.
    save_file({f"layers.{name}": tensor for name, tensor in mlp.state_dict().items()}, folder / AESTHETIC_HEAD_FILE)
