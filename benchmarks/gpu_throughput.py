"""GPU throughput of genbatch against a plain diffusers loop, on SD1.5- or SDXL-sized models, in images/s and TFLOP/s.

Both runners do the same work for the same rows, at the same batch size, on one GPU: generate with
classifier-free guidance, CLIP-score, PNG-encode (zlib level 1) and write Parquet. The models have
the sizes of Stable Diffusion 1.5 or SDXL base (two text encoders, 1024 px) and CLIP ViT-L/14 (their
public configs, written out below) with random weights: they are built in code once, saved with
save_pretrained to --model-dir (a second call reuses them), and loaded by both runners through the
ordinary from_pretrained path. Nothing is downloaded.

Start-up (model loading, actor start, compilation, first micro-batch) is timed apart from the steady
state, which runs from the end of the first micro-batch to the end of the last. FLOP per image is
counted with torch.utils.flop_counter on the meta device (matrix products, convolutions, attention:
the usual convention for achieved TFLOP/s), so it follows --steps and --size, and needs no GPU.

Each --quantize option (performance.quantize) gets rows of its own, and genbatch's rows say how far
their images drift from the unquantized (bf16) ones of the same ids and seeds: mean |delta CLIP
score| and PSNR. The unquantized images are kept under --model-dir, so a later call that measures
only fp8 still has them to compare with. Ctrl-C or SIGTERM stops the run and prints (and appends to
--results) the table of what was measured so far.

    python benchmarks/gpu_throughput.py --results benchmarks/RESULTS.md         # all batch sizes, compile off and on
    python benchmarks/gpu_throughput.py --batch-sizes 16 --compile on --quantize none fp8   # a part, for a short slot
    python benchmarks/gpu_throughput.py --model sdxl-sized --batch-sizes 8 --runners genbatch   # SDXL at 1024 px
    python benchmarks/gpu_throughput.py --build-only                            # build the models, count FLOP; no GPU
    python benchmarks/gpu_throughput.py --flop-only --model sdxl-sized          # count FLOP only (meta device, seconds)
    python benchmarks/gpu_throughput.py --smoke      # tiny models, 64 px, 2 steps, on the CPU: checks the script only
"""

from __future__ import annotations

import argparse
import gc
import io
import logging
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

# Set before Ray is imported (and inherited by its actors): a local instance on loopback only, and
# no hub look-ups, so a missing folder fails instead of downloading.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import dit_models as dit
import pyarrow as pa
import pyarrow.parquet as pq
from throughput import make_manifest

from jobs.signals import Interrupted, exit_code
from workers.models import tiny
from workers.models.loading import quiet_libraries

logger = logging.getLogger("gpu_throughput")

PNG_COMPRESS_LEVEL = 1
BUILD_VERSION = "1"  # bump when a config or seed below changes, so cached folders are rebuilt
# The issue's figure for SD1.5 at 512x512, 50 steps with CFG, plus CLIP ViT-L/14; shown beside the count.
ISSUE_TFLOP_PER_IMAGE = 83.0
# MLPerf Inference's SDXL offline result, the number to put beside ours: about 2.0 images/s per H100
# (TensorRT, 1024x1024, 20 Euler steps, CFG 8), as quoted in the issue.
MLPERF_SDXL_IMAGES_PER_S = 2.0
QUANTIZE_OPTIONS = ("none", "fp8", "int8")

# --- Model configs -----------------------------------------------------------------------------------

# runwayml/stable-diffusion-v1-5 unet/config.json (attention_head_dim is diffusers' legacy name for
# the number of heads).
SD15_UNET = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": (320, 640, 1280, 1280),
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
}
# vae/config.json
SD15_VAE = {
    "act_fn": "silu",
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
}
# text_encoder/config.json: the text tower of CLIP ViT-L/14, shared with the scorer's text tower.
VIT_L14_TEXT = dit.CLIP_L_TEXT
# openai/clip-vit-large-patch14 vision_config.
VIT_L14_VISION = {
    "image_size": 224,
    "patch_size": 14,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
# scheduler/scheduler_config.json: PNDM (PLMS), which runs one more UNet evaluation than it has steps.
SD15_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
}

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json: three levels, 10 transformer blocks deep at
# the lowest, cross-attention on both text encoders' hidden states (768 + 1280 = 2048), and the pooled
# text embedding plus six size/crop conditioning numbers as an added embedding (1280 + 6 x 256 = 2816).
SDXL_UNET = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": (5, 10, 20),
    "block_out_channels": (320, 640, 1280),
    "center_input_sample": False,
    "cross_attention_dim": 2048,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": (1, 2, 10),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "use_linear_projection": True,
}
# vae/config.json: SD's VAE at 1024 px with SDXL's latent scaling.
SDXL_VAE = {**SD15_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
# text_encoder_2/config.json: the text tower of OpenCLIP ViT-bigG/14, with its projection (the pooled embedding).
BIGG_TEXT = dit.CLIP_G_TEXT
# scheduler/scheduler_config.json: Euler, one UNet evaluation per step.
SDXL_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "use_karras_sigmas": False,
}

# --smoke: the same architecture (four UNet and VAE levels, cross-attention, CLIP towers), shrunk
# until a CPU runs the whole benchmark in about a minute.
SMOKE_UNET = {
    **SD15_UNET,
    "attention_head_dim": 4,
    "block_out_channels": (16, 16, 32, 32),
    "cross_attention_dim": 32,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 8,
}
SMOKE_VAE = {
    **SD15_VAE,
    "block_out_channels": (8, 8, 16, 16),
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 64,
}
SMOKE_TEXT = dit.TINY_CLIP_TEXT  # ViT-L/14's text tower, shrunk as the tiny DiT rows' is
SMOKE_VISION = {
    **VIT_L14_VISION,
    "image_size": 32,
    "patch_size": 4,
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "projection_dim": 32,
}
# --smoke --model sdxl-sized: SDXL's shape (three levels, two text encoders, the added embedding), shrunk.
SMOKE_SDXL_UNET = {
    **SDXL_UNET,
    "addition_time_embed_dim": 8,
    "attention_head_dim": (1, 2, 4),
    "block_out_channels": (16, 32, 32),
    "cross_attention_dim": 64,  # 32 + 32: both smoke text encoders
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "projection_class_embeddings_input_dim": 32 + 6 * 8,
    "sample_size": 8,
    "transformer_layers_per_block": (1, 1, 2),
}
SMOKE_SDXL_VAE = {**SMOKE_VAE, "scaling_factor": 0.13025, "force_upcast": False}
SMOKE_TEXT_2 = {**SMOKE_TEXT, "hidden_act": "gelu"}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    folder: str  # the default --model-dir is bench-FOLDER-vBUILD_VERSION under the genbatch cache
    unet: dict
    vae: dict
    text: dict
    vision: dict
    text_2: dict | None = None  # SDXL's second text encoder (with projection); None: one text encoder
    scheduler: str = "PNDMScheduler"
    scheduler_config: dict = field(default_factory=lambda: SD15_SCHEDULER)
    weights_dtype: str = "fp32"  # what the built folders store

    @property
    def sdxl(self) -> bool:
        return self.text_2 is not None


SD15_SIZED = ModelSpec(
    "SD1.5-sized UNet/VAE/text encoder + CLIP ViT-L/14",
    "sd15-sized",
    SD15_UNET,
    SD15_VAE,
    VIT_L14_TEXT,
    VIT_L14_VISION,
)
# Stored in bf16, the dtype it runs in: 7 GB instead of 14 GB of random weights to write and read.
SDXL_SIZED = ModelSpec(
    "SDXL-sized UNet/VAE/2 text encoders (CLIP ViT-L/14 + OpenCLIP ViT-bigG/14) + CLIP ViT-L/14 scorer",
    "sdxl-sized",
    SDXL_UNET,
    SDXL_VAE,
    VIT_L14_TEXT,
    VIT_L14_VISION,
    text_2=BIGG_TEXT,
    scheduler="EulerDiscreteScheduler",
    scheduler_config=SDXL_SCHEDULER,
    weights_dtype="bf16",
)
SMOKE = ModelSpec(
    "smoke-sized (tiny channels, same architecture)", "smoke", SMOKE_UNET, SMOKE_VAE, SMOKE_TEXT, SMOKE_VISION
)
SMOKE_SDXL = ModelSpec(
    "smoke-sized SDXL (tiny channels, SDXL's architecture, 2 text encoders)",
    "smoke-sdxl",
    SMOKE_SDXL_UNET,
    SMOKE_SDXL_VAE,
    SMOKE_TEXT,
    SMOKE_VISION,
    text_2=SMOKE_TEXT_2,
    scheduler="EulerDiscreteScheduler",
    scheduler_config=SDXL_SCHEDULER,
)


@dataclass(frozen=True)
class Mode:
    """What a run measures; --smoke swaps all of it for something a CPU finishes quickly."""

    spec: ModelSpec | dit.DitSpec
    device: str
    dtype: str  # genbatch's model.dtype
    steps: int
    size: int
    guidance: float
    batch_sizes: tuple[int, ...]
    compile: tuple[bool, ...]
    min_rows: int  # rows per measurement: max(4 x batch, min_rows), so several batches follow the first
    shard_rows: int

    @property
    def smoke(self) -> bool:
        return self.device == "cpu"


# SDXL as MLPerf runs it: 1024 px, 20 Euler steps, CFG 8.
MODES = {
    ("sd15-sized", False): Mode(SD15_SIZED, "cuda", "bf16", 50, 512, 7.5, (1, 8, 16, 32), (False, True), 64, 64),
    ("sdxl-sized", False): Mode(SDXL_SIZED, "cuda", "bf16", 20, 1024, 8.0, (1, 4, 8), (False, True), 16, 16),
    ("sd15-sized", True): Mode(SMOKE, "cpu", "fp32", 2, 64, 7.5, (1, 2), (False,), min_rows=8, shard_rows=4),
    ("sdxl-sized", True): Mode(SMOKE_SDXL, "cpu", "fp32", 2, 64, 8.0, (1, 2), (False,), min_rows=8, shard_rows=4),
    # The DiT families at 1024 px with their own default steps and guidance (benchmarks/dit_models.py).
    ("flux-dev-sized", False): Mode(dit.FLUX_DEV_SIZED, "cuda", "bf16", 28, 1024, 3.5, (1, 4), (False, True), 8, 8),
    ("sd35-sized", False): Mode(dit.SD35_SIZED, "cuda", "bf16", 28, 1024, 3.5, (1, 4), (False, True), 8, 8),
    ("qwen-image-sized", False): Mode(dit.QWEN_IMAGE_SIZED, "cuda", "bf16", 50, 1024, 4.0, (1,), (False, True), 4, 4),
    ("flux-dev-sized", True): Mode(dit.TINY_FLUX, "cpu", "fp32", 2, 64, 3.5, (1, 2), (False,), 8, 4),
}
DIT_MODELS = tuple(dit.DIT_SPECS)
# Published FLUX.1-dev figures (1024x1024, one H100) to print beside ours, and the issue's goals for them.
FLUX_ANCHORS = (
    "FLUX.1-dev 1024², 28 steps, one H100, xDiT: 6.71 s eager, 4.30 s compiled per image "
    "(0.149 / 0.233 images/s); SGLang H100 baseline: 7.35 s at 50 steps"
)
FLUX_GOAL_COMPILED = 0.25  # images/s, compiled bf16: ahead of xDiT's 0.233
FLUX_GOAL_FP8 = 0.33  # images/s with performance.quantize: fp8


def denoiser_of(spec) -> str:
    return "transformer" if isinstance(spec, dit.DitSpec) else "unet"


def scorer_configs(spec) -> tuple[dict, dict]:
    """The CLIP scorer's text and vision configs: ViT-L/14 for every full-sized model, the smoke ones for tiny."""
    if isinstance(spec, ModelSpec):
        return spec.text, spec.vision
    return (SMOKE_TEXT, SMOKE_VISION) if spec.weights_dtype == "fp32" else (VIT_L14_TEXT, VIT_L14_VISION)


# --- Building the models -------------------------------------------------------------------------------


def _scheduler(spec: ModelSpec):
    import diffusers

    return getattr(diffusers, spec.scheduler)(**spec.scheduler_config)


def build_models(spec: ModelSpec | dit.DitSpec, folder: Path, pipeline: bool = True) -> tuple[Path, Path]:
    """The pipeline and CLIP folders under `folder`, built with random weights on first use. The BUILT
    marker is written last, so an interrupted build is redone and a finished one is never rebuilt.
    `pipeline` False builds the CLIP scorer only (--in-memory: the plain runner builds its pipeline itself)."""
    sd_dir, clip_dir = folder / "sd", folder / "clip"
    marker = folder / ("BUILT" if pipeline else "BUILT-clip")
    if marker.is_file() and marker.read_text() == BUILD_VERSION:
        logger.info("reusing models in %s", folder)
        return sd_dir, clip_dir
    if isinstance(spec, dit.DitSpec):
        return _build_dit(spec, folder, marker, pipeline)
    import torch

    logger.info("building %s with random weights in %s (once)", spec.name, folder)
    started = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[spec.weights_dtype]
    # The second text encoder's seed is 2 here (the tiny SDXL's is 1): these folders were first built so.
    tiny.save_sd_pipeline(
        sd_dir, spec.unet, spec.vae, spec.text, _scheduler(spec), spec.text_2, dtype=dtype, text_2_seed=2
    )
    tiny.save_clip(clip_dir, spec.text, spec.vision, seed=1)  # the CLIP scorer: random weights, fp32
    marker.write_text(BUILD_VERSION)
    logger.info("built in %.0fs", time.perf_counter() - started)
    return sd_dir, clip_dir


def _build_dit(spec: dit.DitSpec, folder: Path, marker: Path, pipeline: bool) -> tuple[Path, Path]:
    """A DiT pipeline folder, built on the GPU where there is one (its weights made there, in bf16) and saved."""
    import torch

    started = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if pipeline:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        logger.info("building %s with random weights on %s, saving it in %s (once)", spec.name, device, folder)
        built = dit.build_pipeline(spec, device, spec.weights_dtype)
        built.save_pretrained(folder / "sd", safe_serialization=True)
        del built
        if device == "cuda":
            torch.cuda.empty_cache()
    tiny.save_clip(folder / "clip", *scorer_configs(spec), seed=1)  # the CLIP scorer
    marker.write_text(BUILD_VERSION)
    logger.info("built in %.0fs", time.perf_counter() - started)
    return folder / "sd", folder / "clip"


# --- FLOP per image -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlopCount:
    parts: dict[str, float]  # FLOP per image, by model
    unet_evaluations: int  # the denoiser's (UNet or transformer) evaluations per image

    @property
    def per_image(self) -> float:
        return sum(self.parts.values())

    @property
    def denoiser_share(self) -> float:
        denoiser = self.parts.get("unet", self.parts.get("transformer", 0.0))
        return denoiser / self.per_image if self.per_image else 0.0

    def describe(self) -> str:
        return ", ".join(f"{name} {value / 1e12:.4g}" for name, value in self.parts.items())


def count_flop_per_image(spec: ModelSpec | dit.DitSpec, steps: int, size: int, prompt: str) -> FlopCount:
    """FLOP per image by part, counted on meta tensors (shapes only: seconds, no memory, no GPU)."""
    if isinstance(spec, dit.DitSpec):
        parts = dit.count_flop(spec, steps, size, {"clip": count_clip_flop(*scorer_configs(spec), prompt)})
        return FlopCount(parts, steps * spec.evaluations_per_step)
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = tiny.build_tokenizer()
    text_config = tiny.text_config(spec.text, tokenizer)
    tokens = spec.text["max_position_embeddings"]
    latent = size // 8
    scheduler = _scheduler(spec)
    scheduler.set_timesteps(steps)
    evaluations = len(scheduler.timesteps)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**spec.unet)
        vae = AutoencoderKL(**spec.vae)
        text_encoders = [CLIPTextModel(text_config)]
        if spec.text_2 is not None:
            text_encoders.append(CLIPTextModelWithProjection(tiny.text_config(spec.text_2, tokenizer)))

    def flop(call) -> float:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            call()
        return float(counter.get_total_flops())

    def zeros(*shape, dtype=torch.float32):
        return torch.zeros(*shape, device="meta", dtype=dtype)

    # SDXL's UNet also takes the pooled text embedding and six size/crop numbers per image.
    added = (
        {"text_embeds": zeros(2, spec.text_2["projection_dim"]), "time_ids": zeros(2, 6)}
        if spec.text_2 is not None
        else None
    )
    parts = {
        # CFG: each step runs the UNet on the prompt and the negative prompt, as one batch of 2.
        "unet": evaluations
        * flop(
            lambda: unet(
                zeros(2, 4, latent, latent),
                zeros(2),
                encoder_hidden_states=zeros(2, tokens, unet.config.cross_attention_dim),
                added_cond_kwargs=added,
            )
        ),
        "text encoder": sum(flop(lambda e=e: e(zeros(2, tokens, dtype=torch.long))) for e in text_encoders),
        "vae decode": flop(lambda: vae.decode(zeros(1, 4, latent, latent))),
        "clip": count_clip_flop(spec.text, spec.vision, prompt),
    }
    return FlopCount(parts, evaluations)


def count_clip_flop(text: dict, vision: dict, prompt: str) -> float:
    """The CLIP scorer's FLOP for one image and its prompt (meta device)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPModel

    tokenizer = tiny.build_tokenizer()
    prompt_tokens = len(tokenizer(prompt, truncation=True, max_length=text["max_position_embeddings"])["input_ids"])
    config = tiny.clip_config(text, vision, tokenizer)
    with torch.device("meta"):
        clip = CLIPModel(config)
    image = vision["image_size"]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        clip.get_image_features(pixel_values=torch.zeros(1, 3, image, image, device="meta"))
        clip.get_text_features(input_ids=torch.zeros(1, prompt_tokens, device="meta", dtype=torch.long))
    return float(counter.get_total_flops())


# --- The two runners ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    mode: Mode
    steps: int
    size: int
    threads: int
    rows: int | None  # fixed rows per measurement, else max(4 x batch, mode.min_rows)
    min_features: int  # performance.quantize_min_features
    in_memory: bool = False  # the plain runner builds its DiT pipeline on the device instead of loading a folder

    def rows_for(self, batch: int) -> int:
        rows = self.rows or max(4 * batch, self.mode.min_rows)
        return math.ceil(rows / batch) * batch  # whole batches only: a short last batch would recompile

    def shard_size(self, batch: int) -> int:
        return math.ceil(self.mode.shard_rows / batch) * batch


@dataclass
class Measurement:
    runner: str
    batch: int
    compile: bool
    quantize: str
    rows: int
    startup_s: float  # start to the end of the first micro-batch: loading, compiling, first batch
    images_per_s: float  # steady state, after the first micro-batch
    wall_s: float
    clip_scores: dict = field(default_factory=dict, repr=False)  # id -> score, to check both did the same work
    images: dict = field(default_factory=dict, repr=False)  # id -> PNG bytes (genbatch), for the drift
    drift: Drift | None = None  # genbatch's images against the unquantized ones of the same ids


@dataclass(frozen=True)
class Drift:
    """How far a run's images are from the unquantized baseline's, over the ids both have."""

    images: int
    clip_delta: float  # mean |delta CLIP score| (CLIP scores are 0-100)
    psnr_db: float  # over all those images' pixels (8-bit); inf when identical

    def cells(self) -> tuple[str, str]:
        return f"{self.clip_delta:.3f}", "inf" if math.isinf(self.psnr_db) else f"{self.psnr_db:.1f}"


class StopRequested(Interrupted):
    """SIGINT or SIGTERM: stop measuring, print what was measured. An `Interrupted`, so that run_job
    stops cleanly on it."""


# The stop signal received, kept here: on its way out of Ray's calls the exception it raised may come
# back as a plain KeyboardInterrupt.
_received: list[int] = []


def _stop_on_signal(signum, frame) -> None:
    _received.append(signum)
    # Once: a second signal while the run winds down (Ray stopping its actors) is only noted.
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, lambda s, f: logger.warning("%s: already stopping", signal.Signals(s).name))
    raise StopRequested(signum)


def _stop_signal() -> int:
    return _received[0] if _received else signal.SIGINT


def plain_loop(
    sd_dir: Path, clip_dir: Path, manifest: Path, out: Path, batch: int, compile: bool, quantize: str, run: Run
) -> Measurement:
    """What a user would write by hand with diffusers, transformers (and torchao), in this process."""
    import torch
    from diffusers import AutoPipelineForText2Image
    from transformers import CLIPModel, CLIPProcessor

    started = time.perf_counter()
    spec = run.mode.spec
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[run.mode.dtype]
    if run.in_memory:
        pipe, quantized = _in_memory_pipeline(spec, run, quantize)
    else:
        pipe = AutoPipelineForText2Image.from_pretrained(sd_dir, dtype=dtype, use_safetensors=True)
        pipe = pipe.to(run.mode.device)
        quantized = "none"
    pipe.set_progress_bar_config(disable=True)
    name = denoiser_of(spec)
    denoiser = getattr(pipe, name)
    if compile and name == "unet":
        denoiser.to(memory_format=torch.channels_last)
    if quantize != quantized:
        from workers.pipeline.quantize import quantize_unet

        quantize_unet(denoiser, quantize, run.min_features)  # the same layers as genbatch's, before compiling
        if run.in_memory:
            _IN_MEMORY["quantized"] = quantize
    if compile:
        # The denoiser is where the time goes; channels_last (UNet) plus torch.compile is diffusers' own
        # advice. Default mode: max-autotune would take several minutes of tuning per batch size.
        setattr(pipe, name, torch.compile(denoiser, fullgraph=True))
    clip = CLIPModel.from_pretrained(clip_dir, use_safetensors=True).to(run.mode.device).eval()
    processor = CLIPProcessor.from_pretrained(clip_dir)
    table = pq.read_table(manifest).to_pylist()
    out.mkdir(parents=True)
    marks, records, scores, kept = [], [], {}, {}
    for start in range(0, len(table), batch):
        # 1. Generate: each row's noise from its own CPU generator, as genbatch does.
        rows = table[start : start + batch]
        prompts = [row["prompt"] for row in rows]
        generators = [torch.Generator("cpu").manual_seed(row["seed"]) for row in rows]
        if isinstance(spec, dit.DitSpec):
            images = pipe(**dit.call_arguments(spec, prompts, run.steps, run.size), generator=generators).images
        else:
            images = pipe(
                prompts,
                # genbatch passes each row's negative prompt (the config's "" here); SDXL would put zeros in
                # place of an absent one (force_zeros_for_empty_prompt), other work than encoding "".
                negative_prompt=[""] * len(prompts),
                num_inference_steps=run.steps,
                guidance_scale=run.mode.guidance,
                width=run.size,
                height=run.size,
                generator=generators,
            ).images
        # 2. Score.
        inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True, truncation=True)
        with torch.inference_mode():
            output = clip(**inputs.to(run.mode.device))
        cosines = torch.nn.functional.cosine_similarity(output.image_embeds, output.text_embeds).tolist()
        # 3. Encode and write, one Parquet file per shard.
        for row, image, cosine in zip(rows, images, cosines):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
            score = 100 * max(cosine, 0.0)
            records.append({**row, "image": buffer.getvalue(), "clip_score": score})
            scores[row["id"]] = score
            if isinstance(spec, dit.DitSpec):  # its fp8 drift is measured on the plain runner's images
                kept[row["id"]] = buffer.getvalue()
        if len(records) >= run.shard_size(batch) or start + batch >= len(table):
            pq.write_table(pa.Table.from_pylist(records), out / f"shard-{start:05d}.parquet")
            records = []
        marks.append(time.perf_counter())
    measurement = Measurement(
        runner="plain diffusers",
        batch=batch,
        compile=compile,
        quantize=quantize,
        rows=len(table),
        startup_s=marks[0] - started,
        images_per_s=steady_rate(len(table), batch, marks),
        wall_s=time.perf_counter() - started,
        clip_scores=scores,
        images=kept,
    )
    setattr(pipe, name, denoiser)  # uncompiled again: an in-memory pipeline serves the next point too
    # Give the GPU back before genbatch's actor loads its own copy.
    del pipe, clip, denoiser
    if compile:
        torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return measurement


# --in-memory: the plain runner's DiT pipeline, built once on the device and kept for every point; quantizing
# changes it in place, so a point of another quantize option than it holds builds it anew.
_IN_MEMORY: dict = {}


def _in_memory_pipeline(spec, run: Run, quantize: str):
    """The kept pipeline and the quantize option it already has."""
    import torch

    if "pipe" in _IN_MEMORY and _IN_MEMORY["quantized"] not in ("none", quantize):
        _IN_MEMORY.clear()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if "pipe" not in _IN_MEMORY:
        started = time.perf_counter()
        _IN_MEMORY.update(pipe=dit.build_pipeline(spec, run.mode.device, run.mode.dtype), quantized="none")
        logger.info("built %s on %s in %.0fs", spec.name, run.mode.device, time.perf_counter() - started)
    return _IN_MEMORY["pipe"], _IN_MEMORY["quantized"]


def genbatch_job(
    sd_dir: Path, clip_dir: Path, manifest: Path, out: Path, batch: int, compile: bool, quantize: str, run: Run
) -> Measurement:
    """The same work through `run_job`: one actor holding the pipeline and the scorer."""
    from jobs.config.schema import JobConfig
    from jobs.pool.dispatch import JobHooks
    from jobs.run.driver import run_job

    rows = pq.read_metadata(manifest).num_rows
    generation = {"steps": run.steps, "guidance_scale": run.mode.guidance, "width": run.size, "height": run.size}
    config = JobConfig.model_validate(
        {
            "manifest": str(manifest),
            "output": {"path": str(out), "image_format": "png", "png_compress_level": PNG_COMPRESS_LEVEL},
            "shard_size": run.shard_size(batch),
            "model": {"id": str(sd_dir), "dtype": run.mode.dtype},
            "clip": {"model": str(clip_dir)},
            "generation": generation,
            "resources": {
                "workers": 1,
                "gpus_per_worker": 1 if run.mode.device == "cuda" else 0,
                # As many CPU threads as the plain loop has, for decoding, CLIP preprocessing and PNG.
                "cpus_per_worker": run.threads,
                "batch_size": batch,
            },
            # A compile cache of this run's own: start-up is measured cold, as the plain loop's is.
            "performance": {
                "compile": compile,
                "compile_cache": f"{out}-compile-cache",
                "quantize": quantize,
                "quantize_min_features": run.min_features,
            },
        }
    )
    marks: list[float] = []
    hooks = JobHooks(on_progress=lambda done, failed: marks.append(time.perf_counter()))
    started = time.perf_counter()
    summary = run_job(config, progress="off", hooks=hooks)
    wall = time.perf_counter() - started
    if summary.interrupted:  # run_job stops cleanly on a signal and says so; the benchmark stops too
        raise StopRequested(_stop_signal())
    if summary.ok != rows:
        # Failed rows skip scoring and encoding: the two runners would not be doing the same work.
        raise RuntimeError(f"genbatch finished {summary.ok} of {rows} rows ({summary.failed} failed); see {out}")
    scores, images = read_output(out)
    return Measurement(
        runner="genbatch",
        batch=batch,
        compile=compile,
        quantize=quantize,
        rows=rows,
        startup_s=marks[0] - started,
        images_per_s=steady_rate(rows, batch, marks),
        wall_s=wall,
        clip_scores=scores,
        images=images,
    )


def steady_rate(rows: int, batch: int, marks: list[float]) -> float:
    """Images/s from the end of the first micro-batch to the end of the last."""
    if len(marks) < 2 or marks[-1] <= marks[0]:
        return float("nan")
    return (rows - batch) / (marks[-1] - marks[0])


def read_output(out: Path) -> tuple[dict, dict]:
    """id -> CLIP score and id -> PNG bytes, from a genbatch output folder's shards."""
    files = sorted(path for path in (out / "data").glob("shard-*.parquet"))
    table = pa.concat_tables([pq.read_table(path, columns=["id", "clip_score", "image"]) for path in files])
    ids = table.column("id").to_pylist()
    images = [cell["bytes"] for cell in table.column("image").to_pylist()]
    return dict(zip(ids, table.column("clip_score").to_pylist())), dict(zip(ids, images))


# --- Drift against the unquantized images -------------------------------------------------------------------


class Baseline:
    """genbatch's unquantized (bf16) images and CLIP scores by id, kept in one Parquet file per model,
    steps, size and guidance under --model-dir, so later calls compare with them. The first run of an id
    stays its baseline: later unquantized runs only add ids it lacks (and show their own drift, which is
    float rounding: another batch size or compile)."""

    def __init__(self, model_dir: Path, run: Run):
        self.path = model_dir / "baselines" / f"{run.steps}steps-{run.size}px-cfg{run.mode.guidance:g}.parquet"
        self.rows: dict = {}  # id -> (score, png bytes, where from)
        if self.path.is_file():
            table = pq.read_table(self.path).to_pylist()
            self.rows = {row["id"]: (row["clip_score"], row["image"], row["source"]) for row in table}

    def describe(self) -> str:
        sources = sorted({source for _, _, source in self.rows.values()})
        return f"{len(self.rows)} images ({'; '.join(sources)})" if sources else "none yet"

    def add(self, measurement: Measurement) -> None:
        source = f"batch {measurement.batch}, compile {'on' if measurement.compile else 'off'}"
        scores = measurement.clip_scores
        new = {i: (scores[i], png, source) for i, png in measurement.images.items() if i not in self.rows}
        if not new:
            return
        self.rows.update(new)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = [{"id": i, "clip_score": s, "image": png, "source": src} for i, (s, png, src) in self.rows.items()]
        temporary = self.path.with_suffix(".tmp")
        pq.write_table(pa.Table.from_pylist(rows), temporary)
        temporary.replace(self.path)  # whole or not at all

    def drift(self, measurement: Measurement) -> Drift | None:
        common = sorted(set(measurement.images) & set(self.rows))
        if not common:
            return None
        deltas = [abs(measurement.clip_scores[i] - self.rows[i][0]) for i in common]
        errors = [squared_error(measurement.images[i], self.rows[i][1]) for i in common]
        return Drift(len(common), statistics.fmean(deltas), psnr(errors))


def squared_error(png: bytes, reference_png: bytes) -> tuple[float, int]:
    """Sum of squared 8-bit differences, and the number of values."""
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)
    b = np.asarray(Image.open(io.BytesIO(reference_png)).convert("RGB"), dtype=np.float64)
    return float(((a - b) ** 2).sum()), a.size


def psnr(errors: list[tuple[float, int]]) -> float:
    """PSNR in dB over all the pixels of the images whose squared errors are given."""
    total, count = sum(e for e, _ in errors), sum(n for _, n in errors)
    return math.inf if total == 0 else 10 * math.log10(255**2 / (total / count))


# --- Running and reporting -------------------------------------------------------------------------------

RUNNERS = {"plain": plain_loop, "genbatch": genbatch_job}


def measure(
    run: Run,
    sd_dir: Path,
    clip_dir: Path,
    work: Path,
    point: tuple[int, bool, str],
    repeats: int,
    runners: tuple[str, ...],
    results: list[Measurement],
) -> None:
    """The runners, alternating so that drift on a shared machine hits both alike; their medians are added
    to `results`, also when a signal stops the repeats (then from the runs that finished)."""
    batch, compile, quantize = point
    manifest = make_manifest(work / f"prompts-{run.rows_for(batch)}.parquet", run.rows_for(batch))
    runs: dict[str, list[Measurement]] = {name: [] for name in runners}
    try:
        for repeat in range(repeats):
            for name in runners:
                out = work / f"{name}-b{batch}-c{int(compile)}-q{quantize}-r{repeat}"
                rows = run.rows_for(batch)
                logger.info("%s: batch %d, compile %s, quantize %s, %d rows", name, batch, compile, quantize, rows)
                measurement = RUNNERS[name](sd_dir, clip_dir, manifest, out, batch, compile, quantize, run)
                logger.info(
                    "%s: start-up %.1fs, %.2f images/s steady, %.1fs in all",
                    name,
                    measurement.startup_s,
                    measurement.images_per_s,
                    measurement.wall_s,
                )
                runs[name].append(measurement)
                shutil.rmtree(out, ignore_errors=True)
    finally:
        results += [median_of(measurements) for measurements in runs.values() if measurements]
    if len(runners) == 2:
        plain, genbatch = runs["plain"][-1], runs["genbatch"][-1]
        drift = max(abs(plain.clip_scores[i] - genbatch.clip_scores[i]) for i in plain.clip_scores)
        logger.info("same work: %d rows each; CLIP scores differ by at most %.3f", len(plain.clip_scores), drift)


def median_of(measurements: list[Measurement]) -> Measurement:
    last = measurements[-1]  # its scores and images: the drift is of one run's images
    return Measurement(
        runner=last.runner,
        batch=last.batch,
        compile=last.compile,
        quantize=last.quantize,
        rows=last.rows,
        startup_s=statistics.median(m.startup_s for m in measurements),
        images_per_s=statistics.median(m.images_per_s for m in measurements),
        wall_s=statistics.median(m.wall_s for m in measurements),
        clip_scores=last.clip_scores,
        images=last.images,
    )


def render_table(
    run: Run,
    args,
    device_name: str,
    flop: FlopCount,
    results: list[Measurement],
    baseline: str = "",
    stopped: str | None = None,
    failures: list[str] | None = None,
) -> str:
    """The Markdown table; `stopped` says why a run ended early (its table has the rows measured so far),
    `failures` which points raised instead of giving a row."""
    import diffusers
    import torch
    import transformers

    per_image = flop.per_image
    smoke = run.mode.smoke
    sdxl = run.mode.spec.sdxl
    title = "CPU smoke test (tiny models; checks the script, NOT a performance figure)" if smoke else "GPU throughput"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        import torchao

        torchao_version = f", torchao {torchao.__version__}"
    except ImportError:
        torchao_version = ", torchao not installed"
    spec = run.mode.spec
    is_dit = isinstance(spec, dit.DitSpec)
    issue = f"; the issue estimates {ISSUE_TFLOP_PER_IMAGE:g} T" if not smoke and not sdxl and not is_dit else ""
    if is_dit:
        scheduler = "flow-matching Euler"
    else:
        scheduler = "PNDM" if spec.scheduler == "PNDMScheduler" else "Euler"
    denoiser = "transformer" if is_dit else "UNet"
    guidance = f"CFG {run.mode.guidance:g}" if not is_dit or spec.cfg else f"distilled guidance {run.mode.guidance:g}"
    lines = [
        f"### {title}: {when}, {device_name}{' (INTERRUPTED)' if stopped else ''}",
        "",
        f"- torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}"
        f"{torchao_version}, CUDA {torch.version.cuda or 'none'}, {run.threads} CPU threads per runner",
        f"- {run.mode.spec.name}, random weights, {run.mode.dtype} (CLIP in fp32, as genbatch loads it)",
        f"- {run.size}x{run.size} px, {run.steps} steps ({scheduler}: {flop.unet_evaluations} {denoiser} "
        f"evaluations), {guidance}, CLIP score, PNG level {PNG_COMPRESS_LEVEL}, Parquet; one runner at a time, "
        "one device" + ("; plain runner's pipeline built on the device (--in-memory)" if run.in_memory else ""),
        f"- FLOP per image: {per_image / 1e12:.4g} T, counted with torch.utils.flop_counter on the meta device "
        f"({flop.describe()}; the {denoiser} {100 * flop.denoiser_share:.1f}%){issue}",
        f"- % of bf16 peak against {args.peak_tflops:g} TFLOP/s (dense bf16, whatever the quantization)"
        + ("; not meaningful on a CPU" if smoke else "")
        + f"; steady state after the first micro-batch; median of {args.repeats} alternating run(s)",
        "- start-up: from the runner's start to the end of its first micro-batch (loading, actor, compiling); "
        "total: the whole run, start-up included",
        f"- quantize: performance.quantize of the {denoiser}'s Linear layers at least {run.min_features} wide "
        "(quantize_min_features; workers/pipeline/quantize.py); drift: "
        f"{'the' if is_dit else 'genbatch' + chr(39) + 's'} images against the unquantized ones of the same ids and "
        f"seeds, mean |Δ CLIP score| and PSNR over their pixels (baseline: {baseline or 'none'})",
    ]
    if stopped:
        lines.append(f"- **interrupted** ({stopped}): the rows below are the measurements that finished")
    lines += [f"- **failed**: {failure}" for failure in failures or ()]
    lines += [
        "",
        "| batch | compile | quantize | runner | rows | start-up s | total s | steady images/s | TFLOP/s "
        "| % of bf16 peak | genbatch / plain | mean abs Δ CLIP | PSNR dB |",
        "|---:|:---|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    plain_rate: dict[tuple[int, bool, str], float] = {}
    best: Measurement | None = None  # genbatch's fastest row
    for m in results:
        tflops = m.images_per_s * per_image / 1e12
        peak = "n/a" if smoke else f"{100 * tflops / args.peak_tflops:.1f}"
        point = (m.batch, m.compile, m.quantize)
        ratio, drift = "", ("", "")
        if m.drift is not None:
            drift = m.drift.cells()
        if m.runner == "genbatch":
            if point in plain_rate:
                ratio = f"{m.images_per_s / plain_rate[point]:.2f}x"
            if best is None or m.images_per_s > best.images_per_s:
                best = m
        else:
            plain_rate[point] = m.images_per_s
        lines.append(
            f"| {m.batch} | {'on' if m.compile else 'off'} | {m.quantize} | {m.runner} | {m.rows} | {m.startup_s:.1f} "
            f"| {m.wall_s:.1f} | {m.images_per_s:.3f} | {tflops:.4g} | {peak} | {ratio} | {drift[0]} | {drift[1]} |"
        )
    if is_dit and spec.transformer_class == "FluxTransformer2DModel":
        lines += ["", *flux_goal_lines(results, smoke)]
    if best is not None and not smoke and not is_dit:
        top_pct = 100 * best.images_per_s * per_image / 1e12 / args.peak_tflops
        where = f"at batch {best.batch}, compile {'on' if best.compile else 'off'}, quantize {best.quantize}"
        if sdxl:
            lines += [
                "",
                f"Best genbatch: {best.images_per_s:.2f} images/s ({top_pct:.1f}% of bf16 peak) {where}. MLPerf "
                f"Inference SDXL offline reference: ~{MLPERF_SDXL_IMAGES_PER_S:g} images/s per H100 (TensorRT, "
                f"1024 px, 20 steps): genbatch at {best.images_per_s / MLPERF_SDXL_IMAGES_PER_S:.2f}x of it (CLIP "
                "and PNG included here, not there).",
            ]
        else:
            # The issue's target: >= 40% of bf16 peak end to end (CLIP and PNG included).
            target_rate = 0.4 * args.peak_tflops * 1e12 / per_image
            verdict = "met" if top_pct >= 40 else "NOT met"
            lines += [
                "",
                f"Best genbatch: {best.images_per_s:.2f} images/s ({top_pct:.1f}% of bf16 peak) {where}. "
                f"Target >= 40% of peak (>= {target_rate:.2f} images/s here): {verdict}.",
            ]
    return "\n".join(lines) + "\n"


def flux_goal_lines(results: list[Measurement], smoke: bool) -> list[str]:
    """The published FLUX.1-dev anchors beside ours, and the issue's two goals with the best row for each
    (any runner: genbatch's DiT rows wait for its family seam)."""

    def best(rows: list[Measurement]) -> Measurement | None:
        return max(rows, key=lambda m: m.images_per_s, default=None)

    def verdict(row: Measurement | None, goal: float) -> str:
        if row is None:
            return "not measured"
        where = f"{row.runner}, batch {row.batch}"
        if row.drift is not None:
            where += f", drift {row.drift.cells()[0]} Δ CLIP / {row.drift.cells()[1]} dB"
        met = "n/a (CPU smoke test)" if smoke else ("met" if row.images_per_s >= goal else "NOT met")
        return f"{row.images_per_s:.3f} images/s, {1 / row.images_per_s:.2f} s per image ({where}): {met}"

    compiled = best([m for m in results if m.compile and m.quantize == "none"])
    fp8 = best([m for m in results if m.quantize == "fp8"])
    goal = "Goal FLUX.1-dev-sized >="
    return [
        f"Published: {FLUX_ANCHORS}.",
        f"{goal} {FLUX_GOAL_COMPILED:g} images/s compiled bf16: {verdict(compiled, FLUX_GOAL_COMPILED)}.",
        f"{goal} {FLUX_GOAL_FP8:g} images/s with fp8: {verdict(fp8, FLUX_GOAL_FP8)}.",
    ]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models, 64 px, 2 steps, batch 1 and 2, on the CPU")
    parser.add_argument(
        "--model",
        choices=("sd15-sized", "sdxl-sized", *DIT_MODELS),
        default="sd15-sized",
        help="default sd15-sized; the DiT ones at 1024 px with their family's steps (28, 28, 50)",
    )
    parser.add_argument(
        "--in-memory",
        action="store_true",
        help="DiT models, plain runner only: build the pipeline on the device instead of writing and loading a "
        "folder (FLUX.1-dev-sized: 34 GB), for a short GPU slot",
    )
    parser.add_argument("--build-only", action="store_true", help="build the models and count FLOP, then stop")
    parser.add_argument("--flop-only", action="store_true", help="count FLOP per image on the meta device, then stop")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="default 1 8 16 32 (sdxl-sized: 1 4 8; smoke: 1 2)")
    parser.add_argument("--compile", choices=("off", "on", "both"), help="default both (smoke: off)")
    parser.add_argument(
        "--quantize", choices=QUANTIZE_OPTIONS, nargs="+", default=["none"], help="performance.quantize; default none"
    )
    parser.add_argument(
        "--quantize-min-features",
        type=int,
        help="performance.quantize_min_features; default genbatch's (512); smoke: 16, so its tiny layers are quantized",
    )
    parser.add_argument(
        "--runners",
        choices=tuple(RUNNERS),
        nargs="+",
        default=list(RUNNERS),
        help="default plain genbatch; genbatch alone halves a short slot's work",
    )
    parser.add_argument("--steps", type=int, help="default 50 (sdxl-sized: 20; smoke: 2)")
    parser.add_argument("--size", type=int, help="pixels per side; default 512 (sdxl-sized: 1024; smoke: 64)")
    parser.add_argument("--rows", type=int, help="rows per measurement; default max(4 x batch, 64) (smoke: 8)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs per measurement; the median is shown")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for each runner")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100/H200 SXM)")
    parser.add_argument("--model-dir", type=Path, help="where the random models are built once (and reused)")
    parser.add_argument(
        "--work-dir", type=Path, help="manifests and outputs (deleted after each run); default a temp dir"
    )
    parser.add_argument("--results", type=Path, help="also append the table to this Markdown file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    quiet_libraries()  # the table is printed at the end: library chatter says nothing about the measurement
    import torch

    if (args.model, args.smoke) not in MODES:
        raise SystemExit(f"gpu_throughput.py: --smoke has no tiny variant of {args.model} (flux-dev-sized has one)")
    mode = MODES[(args.model, args.smoke)]
    if args.in_memory and (not isinstance(mode.spec, dit.DitSpec) or args.runners != ["plain"]):
        raise SystemExit("gpu_throughput.py: --in-memory is for the DiT models' plain runner: add --runners plain")
    measuring = not (args.build_only or args.flop_only)
    if mode.device == "cuda" and measuring and not torch.cuda.is_available():
        sys.exit("gpu_throughput.py: no CUDA GPU is visible; this measures GPU throughput (--smoke checks it on a CPU)")
    from workers.pipeline.quantize import MIN_FEATURES

    run = Run(
        mode=mode,
        steps=args.steps or mode.steps,
        size=args.size or mode.size,
        threads=args.threads,
        rows=args.rows,
        min_features=args.quantize_min_features or (16 if mode.smoke else MIN_FEATURES),
        in_memory=args.in_memory,
    )
    batch_sizes = tuple(args.batch_sizes or mode.batch_sizes)
    compiles = {"off": (False,), "on": (True,), "both": (False, True), None: mode.compile}[args.compile]
    if run.size % 8:
        raise SystemExit(f"gpu_throughput.py: --size must be a multiple of 8, got {run.size}")

    flop = count_flop_per_image(mode.spec, run.steps, run.size, "a photo of object number 0")
    logger.info(
        "FLOP per image: %.4g T (%s T; %d %s evaluations, %.1f%% of the FLOP)",
        flop.per_image / 1e12,
        flop.describe(),
        flop.unet_evaluations,
        denoiser_of(mode.spec),
        100 * flop.denoiser_share,
    )
    if args.flop_only:
        print(
            f"{args.model}: {flop.per_image / 1e12:.4g} TFLOP per image ({flop.describe()} T), "
            f"{denoiser_of(mode.spec)} {100 * flop.denoiser_share:.1f}%",
            flush=True,
        )
    if args.flop_only:
        return 0
    model_dir = args.model_dir or tiny.cache_root() / f"bench-{mode.spec.folder}-v{BUILD_VERSION}"
    sd_dir, clip_dir = build_models(mode.spec, model_dir, pipeline=not args.in_memory)
    if not measuring:
        return 0

    import ray

    from jobs import signals

    torch.set_num_threads(run.threads)
    device_name = torch.cuda.get_device_name() if mode.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    # A private local instance (genbatch's run_job reuses it); its start is not part of any measurement.
    with signals.ray_keeps_our_handlers():  # Ray's SIGTERM handlers would exit at once, with no table
        ray.init(
            address="local",
            num_cpus=run.threads,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            logging_level="ERROR",
        )
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, _stop_on_signal)
    baseline = Baseline(model_dir, run)
    points = [(b, c, q) for b in batch_sizes for c in compiles for q in args.quantize]
    if args.in_memory:  # unquantized points first: quantizing changes the kept pipeline in place
        points.sort(key=lambda point: point[2] != "none")
    runners = tuple(name for name in RUNNERS if name in args.runners)
    results: list[Measurement] = []
    stopped: str | None = None
    failures: list[str] = []
    try:
        with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
            for done, point in enumerate(points):
                try:
                    measure(run, sd_dir, clip_dir, Path(tmp), point, args.repeats, runners, results)
                except KeyboardInterrupt:
                    stopped = signal.Signals(_stop_signal()).name
                    logger.warning("%s: stopped after %d of %d measurements", stopped, done, len(points))
                    break
                except Exception as error:  # one failed point (fp8 refused, say) costs only its row, logged
                    logger.exception("batch %d, compile %s, quantize %s failed", *point)
                    failures.append(
                        f"batch {point[0]}, compile {'on' if point[1] else 'off'}, quantize {point[2]}: "
                        f"{type(error).__name__}: {' '.join(str(error).split())}"
                    )
                finally:
                    # Rows with images (genbatch's; the plain runner's for DiT models) feed and meet the baseline.
                    for m in results:
                        if m.images and m.quantize == "none" and m.drift is None:
                            baseline.add(m)
                    for m in results:
                        if m.images and m.drift is None:
                            m.drift = baseline.drift(m)
    finally:
        ray.shutdown()

    reason = None
    if stopped is not None:
        finished = len({(m.batch, m.compile, m.quantize) for m in results})
        reason = f"{stopped}; {finished} of {len(points)} batch/compile/quantize points measured"
    table = render_table(run, args, device_name, flop, results, baseline.describe(), reason, failures)
    print("\n" + table, flush=True)
    if args.results is not None:
        with args.results.open("a", encoding="utf-8") as file:
            file.write("\n" + table)
        logger.info("appended the table to %s", args.results)
    if stopped is not None:
        return exit_code(_stop_signal())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
