"""The DiT rows of gpu_throughput.py: FLUX.1-dev-, SD3.5-Large- and Qwen-Image-sized pipelines with random weights.

The configs below are the published models' own (their transformer/, vae/ and text encoders' config.json),
written out so that nothing is downloaded. A pipeline is built from them in code (`build_pipeline`: straight
on the device, in the dtype it runs in, torch's default initialisation from a fixed seed), either kept in
memory for the plain diffusers runner (`--in-memory`: no 34 GB folder to write and read back in a short GPU
slot) or saved with save_pretrained for runners that load a folder (genbatch, once its family seam loads
these pipelines). FLOP per image (`count_flop`) is counted on the meta device: no weights are allocated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# --- Published configs -----------------------------------------------------------------------------------

# black-forest-labs/FLUX.1-dev transformer/config.json: 19 double-stream + 38 single-stream blocks, 24 heads
# of 128 (3072 wide), T5-XXL states (4096) as the text stream, CLIP-L's pooled embedding, distilled guidance.
FLUX_DEV_TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
# vae/config.json: SD's VAE with 16 latent channels, no quant convs, FLUX's scale and shift.
FLUX_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "force_upcast": True,
}
# google/t5-v1_1-xxl's encoder (text_encoder_2 of FLUX.1, text_encoder_3 of SD3.5): 24 layers, 4096 wide,
# 64 heads of 64, gated-GELU feed-forward of 10240.
T5_XXL = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "feed_forward_proj": "gated-gelu",
    "layer_norm_epsilon": 1e-6,
    "dropout_rate": 0.0,
    "is_encoder_decoder": False,
    "use_cache": False,
}
# CLIP ViT-L/14's text tower (FLUX.1's and SD3.5's first text encoder) and OpenCLIP bigG/14's (SD3.5's second).
CLIP_L_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
CLIP_G_TEXT = {
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}
FLUX_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}

# stabilityai/stable-diffusion-3.5-large transformer/config.json: 38 MMDiT blocks, 38 heads of 64 (2432 wide),
# RMS-normed queries and keys, patch 2 over 16 latent channels.
SD35_LARGE_TRANSFORMER = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 38,
    "attention_head_dim": 64,
    "num_attention_heads": 38,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 2432,
    "pooled_projection_dim": 2048,
    "out_channels": 16,
    "pos_embed_max_size": 192,
    "qk_norm": "rms_norm",
}
SD35_VAE = {**FLUX_VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609}
SD35_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0}

# Qwen/Qwen-Image transformer/config.json: 60 MMDiT blocks, 24 heads of 128 (3072 wide), Qwen2.5-VL-7B's
# last hidden states (3584) as the text stream.
QWEN_IMAGE_TRANSFORMER = {
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 60,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 3584,
    "guidance_embeds": False,
    "axes_dims_rope": (16, 56, 56),
}
# vae/config.json: the causal 3D VAE (Wan 2.1's), one frame per image; its latent mean/std are the class defaults.
QWEN_IMAGE_VAE = {
    "base_dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
}
# Qwen/Qwen2.5-VL-7B-Instruct (text_encoder/config.json): 28 layers, 3584 wide, 28 query / 4 key-value heads.
QWEN2_5_VL_7B = {
    "text_config": {
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
    },
}
QWEN_IMAGE_SCHEDULER = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": True,
    "base_shift": math.log(3),
    "max_shift": math.log(3),
    "base_image_seq_len": 256,
    "max_image_seq_len": 8192,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
}


@dataclass(frozen=True)
class TextEncoder:
    component: str  # the pipeline's argument: text_encoder, text_encoder_2, ...
    kind: str  # clip (CLIPTextModel), clip_projection (CLIPTextModelWithProjection), t5, qwen2_5_vl
    config: dict
    tokens: int  # tokens it reads per prompt (padded length; Qwen: the chat template's 34 + the prompt's)


@dataclass(frozen=True)
class DitSpec:
    """A DiT pipeline with the sizes of a published model: what to build, call and count."""

    name: str
    folder: str  # the default --model-dir is bench-FOLDER-vBUILD_VERSION under the genbatch cache
    pipeline: str  # diffusers pipeline class
    transformer_class: str
    transformer: dict
    vae_class: str
    vae: dict
    text_encoders: tuple[TextEncoder, ...]
    scheduler: dict  # FlowMatchEulerDiscreteScheduler's config
    steps: int  # the family's default steps
    guidance: float
    cfg: bool  # real classifier-free guidance: the transformer runs twice per step (prompt and negative)
    text_tokens: int  # text tokens the transformer attends to beside the image's
    call: dict = field(default_factory=dict)  # the pipeline call's own arguments beside prompt, steps, size
    latent_factor: int = 8  # pixels per latent pixel (the VAE's downsampling)
    patch: int = 2  # latent pixels per side of one image token
    weights_dtype: str = "bf16"

    sdxl = False  # gpu_throughput's SD-only paths ask
    unet: dict = field(default_factory=dict)  # no UNet (gpu_throughput's smoke overrides look for one)

    @property
    def evaluations_per_step(self) -> int:
        return 2 if self.cfg else 1

    def image_tokens(self, size: int) -> int:
        return (size // self.latent_factor // self.patch) ** 2


FLUX_DEV_SIZED = DitSpec(
    "FLUX.1-dev-sized transformer (12B)/VAE/CLIP-L + T5-XXL + CLIP ViT-L/14 scorer",
    "flux-dev-sized",
    "FluxPipeline",
    "FluxTransformer2DModel",
    FLUX_DEV_TRANSFORMER,
    "AutoencoderKL",
    FLUX_VAE,
    (
        TextEncoder("text_encoder", "clip", CLIP_L_TEXT, 77),
        TextEncoder("text_encoder_2", "t5", T5_XXL, 512),
    ),
    FLUX_SCHEDULER,
    steps=28,
    guidance=3.5,
    cfg=False,  # guidance-distilled: guidance_scale is an input of the transformer, one evaluation per step
    text_tokens=512,
    call={"guidance_scale": 3.5, "max_sequence_length": 512},
)
SD35_SIZED = DitSpec(
    "SD3.5-Large-sized transformer (8B)/VAE/CLIP-L + CLIP-G + T5-XXL + CLIP ViT-L/14 scorer",
    "sd35-sized",
    "StableDiffusion3Pipeline",
    "SD3Transformer2DModel",
    SD35_LARGE_TRANSFORMER,
    "AutoencoderKL",
    SD35_VAE,
    (
        TextEncoder("text_encoder", "clip_projection", CLIP_L_TEXT, 77),
        TextEncoder("text_encoder_2", "clip_projection", CLIP_G_TEXT, 77),
        TextEncoder("text_encoder_3", "t5", T5_XXL, 256),
    ),
    SD35_SCHEDULER,
    steps=28,
    guidance=3.5,
    cfg=True,
    text_tokens=77 + 256,  # CLIP's 77 states beside T5's 256 (max_sequence_length), joined
    call={"guidance_scale": 3.5, "negative_prompt": "", "max_sequence_length": 256},
)
# A short prompt: Qwen-Image feeds the transformer the prompt's own tokens (no padding), after dropping the
# chat template's 34; 32 is a dozen words.
QWEN_PROMPT_TOKENS = 32
QWEN_IMAGE_SIZED = DitSpec(
    "Qwen-Image-sized transformer (20B)/VAE/Qwen2.5-VL-7B + CLIP ViT-L/14 scorer",
    "qwen-image-sized",
    "QwenImagePipeline",
    "QwenImageTransformer2DModel",
    QWEN_IMAGE_TRANSFORMER,
    "AutoencoderKLQwenImage",
    QWEN_IMAGE_VAE,
    (TextEncoder("text_encoder", "qwen2_5_vl", QWEN2_5_VL_7B, 34 + QWEN_PROMPT_TOKENS),),
    QWEN_IMAGE_SCHEDULER,
    steps=50,
    guidance=4.0,
    cfg=True,  # true_cfg_scale 4 with a negative prompt, as its model card runs it
    text_tokens=QWEN_PROMPT_TOKENS,
    call={"true_cfg_scale": 4.0, "negative_prompt": " ", "max_sequence_length": 512},
)

# --tiny / --smoke: the same architectures, shrunk until a CPU runs them in seconds.
TINY_T5 = {**T5_XXL, "vocab_size": 128, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4}
TINY_CLIP_TEXT = {
    **CLIP_L_TEXT,
    "vocab_size": 0,  # raised to the tokenizer's size
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "projection_dim": 32,
}
TINY_VAE = {**FLUX_VAE, "block_out_channels": (8, 16), "down_block_types": ("DownEncoderBlock2D",) * 2}
TINY_VAE = {**TINY_VAE, "up_block_types": ("UpDecoderBlock2D",) * 2, "layers_per_block": 1, "norm_num_groups": 4}
TINY_FLUX = DitSpec(
    "tiny FLUX.1-dev-shaped (2 double + 2 single blocks, CLIP + T5)",
    "tiny-flux-dev",
    "FluxPipeline",
    "FluxTransformer2DModel",
    {
        **FLUX_DEV_TRANSFORMER,
        "num_layers": 2,
        "num_single_layers": 2,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 32,
        "pooled_projection_dim": 32,
        "axes_dims_rope": (4, 6, 6),
    },
    "AutoencoderKL",
    TINY_VAE,
    (TextEncoder("text_encoder", "clip", TINY_CLIP_TEXT, 77), TextEncoder("text_encoder_2", "t5", TINY_T5, 32)),
    FLUX_SCHEDULER,
    steps=2,
    guidance=3.5,
    cfg=False,
    text_tokens=32,
    call={"guidance_scale": 3.5, "max_sequence_length": 32},
    latent_factor=2,
    weights_dtype="fp32",
)
DIT_SPECS = {"flux-dev-sized": FLUX_DEV_SIZED, "sd35-sized": SD35_SIZED, "qwen-image-sized": QWEN_IMAGE_SIZED}


# --- Building -------------------------------------------------------------------------------------------------


def build_t5_tokenizer(max_tokens: int):
    """A T5 (Unigram) fast tokenizer written by code, every printable character a piece: `<pad>`=0, `</s>`=1,
    `<unk>`=2 as T5 numbers them; its ids fit in any T5 vocabulary."""
    import string

    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(char, -3.0) for char in sorted(set(string.printable) - set(string.whitespace))]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=max_tokens)


def _tokenizer(kind: str, tokens: int):
    if kind in ("clip", "clip_projection"):
        from workers.models.tiny import build_tokenizer

        return build_tokenizer()
    if kind == "t5":
        return build_t5_tokenizer(tokens)
    try:  # the tiny DiT built-ins' offline Qwen2 tokenizer (issue 21, workers/tiny_dit)
        from workers.models.tiny_dit.tokenizers import build_qwen_tokenizer  # type: ignore[import-not-found]
    except ImportError:
        raise SystemExit(
            "gpu_throughput.py: qwen-image-sized pipelines need an offline Qwen2 tokenizer "
            "(workers.models.tiny_dit.tokenizers, from the tiny DiT built-ins); --flop-only works without it"
        ) from None
    return build_qwen_tokenizer()


def text_encoder(encoder: TextEncoder, tokenizer):
    """The text encoder of `encoder`'s kind and config, built in the current default device and dtype."""
    import transformers

    if encoder.kind in ("clip", "clip_projection"):
        from workers.models.tiny import text_config

        config = text_config(encoder.config, tokenizer)
        kind = transformers.CLIPTextModel if encoder.kind == "clip" else transformers.CLIPTextModelWithProjection
        return kind(config)
    if encoder.kind == "t5":
        return transformers.T5EncoderModel(transformers.T5Config(**encoder.config))
    return transformers.Qwen2_5_VLForConditionalGeneration(transformers.Qwen2_5_VLConfig(**encoder.config))


def build_pipeline(spec: DitSpec, device: str, dtype_name: str, seed: int = 0):
    """The pipeline with random weights, made straight on `device` in its dtype (no float32 copy of a 12B
    transformer is ever made): torch's default initialisation, from `seed`."""
    import diffusers
    import torch

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[dtype_name]
    before = torch.get_default_dtype()
    components: dict = {}
    torch.manual_seed(seed)
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            components["transformer"] = getattr(diffusers, spec.transformer_class)(**spec.transformer)
            components["vae"] = getattr(diffusers, spec.vae_class)(**spec.vae)
            for encoder in spec.text_encoders:
                tokenizer = _tokenizer(encoder.kind, encoder.tokens)
                components[encoder.component] = text_encoder(encoder, tokenizer).eval()
                components[encoder.component.replace("text_encoder", "tokenizer")] = tokenizer
    finally:
        torch.set_default_dtype(before)
    components["scheduler"] = diffusers.FlowMatchEulerDiscreteScheduler(**spec.scheduler)
    pipeline = getattr(diffusers, spec.pipeline)(**components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def call_arguments(spec: DitSpec, prompts: list[str], steps: int, size: int) -> dict:
    sizes = {"num_inference_steps": steps, "width": size, "height": size}
    return {"prompt": prompts, **sizes, **_batched(spec.call, prompts)}


def _batched(call: dict, prompts: list[str]) -> dict:
    return {key: [value] * len(prompts) if key == "negative_prompt" else value for key, value in call.items()}


# --- FLOP per image ---------------------------------------------------------------------------------------------


def transformer_inputs(spec: DitSpec, size: int, batch: int, zeros) -> dict:
    """Meta tensors of the shapes the pipeline hands its transformer at `size` px for `batch` images."""
    image_tokens = spec.image_tokens(size)
    text = zeros(batch, spec.text_tokens, spec.transformer["joint_attention_dim"])
    latent = size // spec.latent_factor
    if spec.transformer_class == "FluxTransformer2DModel":
        return {
            "hidden_states": zeros(batch, image_tokens, spec.transformer["in_channels"]),
            "encoder_hidden_states": text,
            "pooled_projections": zeros(batch, spec.transformer["pooled_projection_dim"]),
            "timestep": zeros(batch),
            "img_ids": zeros(image_tokens, 3),
            "txt_ids": zeros(spec.text_tokens, 3),
            "guidance": zeros(batch) if spec.transformer["guidance_embeds"] else None,
            "return_dict": False,
        }
    if spec.transformer_class == "SD3Transformer2DModel":
        return {
            "hidden_states": zeros(batch, spec.transformer["in_channels"], latent, latent),
            "encoder_hidden_states": text,
            "pooled_projections": zeros(batch, spec.transformer["pooled_projection_dim"]),
            "timestep": zeros(batch),
            "return_dict": False,
        }
    if spec.transformer_class == "QwenImageTransformer2DModel":
        side = latent // spec.patch
        # No text mask: every text token is the prompt's (the pipeline pads nothing for one prompt).
        return {
            "hidden_states": zeros(batch, image_tokens, spec.transformer["in_channels"]),
            "encoder_hidden_states": text,
            "timestep": zeros(batch),
            "img_shapes": [[(1, side, side)]] * batch,
            "return_dict": False,
        }
    raise ValueError(f"no transformer inputs for {spec.transformer_class}")


def count_transformer_flop(spec: DitSpec, size: int) -> float:
    """FLOP of one transformer evaluation for one image (torch.utils.flop_counter, meta device)."""
    import diffusers
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        transformer = getattr(diffusers, spec.transformer_class)(**spec.transformer)

    def zeros(*shape, dtype=torch.float32):
        return torch.zeros(*shape, device="meta", dtype=dtype)

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        transformer(**transformer_inputs(spec, size, 1, zeros))
    return float(counter.get_total_flops())


def count_flop(spec: DitSpec, steps: int, size: int, clip_parts: dict) -> dict[str, float]:
    """FLOP per image by part: the transformer's evaluations, the text encoders, the VAE decode, and the
    CLIP scorer's (`clip_parts`, counted by gpu_throughput as for the SD rows)."""
    import diffusers
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    def zeros(*shape, dtype=torch.float32):
        return torch.zeros(*shape, device="meta", dtype=dtype)

    def flop(call) -> float:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            call()
        return float(counter.get_total_flops())

    latent = size // spec.latent_factor
    with torch.device("meta"):
        vae = getattr(diffusers, spec.vae_class)(**spec.vae)
    channels = spec.vae.get("latent_channels", spec.vae.get("z_dim"))
    if spec.vae_class == "AutoencoderKLQwenImage":
        decode = flop(lambda: vae.decode(zeros(1, channels, 1, latent, latent)))
    else:
        decode = flop(lambda: vae.decode(zeros(1, channels, latent, latent)))
    # Text encoders, counted as 2 FLOP per parameter per token read (their matrix products; attention over at
    # most 512 tokens adds under 5%): the Qwen2.5-VL forward cannot run on meta tensors (its position ids
    # depend on values), and the share is small beside the transformer's either way.
    text = 0.0
    for encoder in spec.text_encoders:
        with torch.device("meta"):
            model = text_encoder(encoder, _MetaTokenizer(encoder.config.get("vocab_size", 0)))
        params = sum(p.numel() for name, p in model.named_parameters() if not _lookup_or_vision(name))
        text += 2 * params * encoder.tokens * spec.evaluations_per_step
    return {
        "transformer": steps * spec.evaluations_per_step * count_transformer_flop(spec, size),
        "text encoders": text,
        "vae decode": decode,
        **clip_parts,
    }


def _lookup_or_vision(name: str) -> bool:
    # Embedding tables are looked up, not multiplied; Qwen2.5-VL's vision tower never sees a text prompt.
    return "visual" in name or "embed" in name or name.startswith("shared.")


@dataclass(frozen=True)
class _MetaTokenizer:
    """What text_encoder() reads of a tokenizer, for counting without building one."""

    vocab: int
    bos_token_id: int = 0
    eos_token_id: int = 1
    pad_token_id: int = 1

    def __len__(self) -> int:
        return self.vocab
