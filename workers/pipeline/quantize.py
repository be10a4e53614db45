"""performance.quantize: the denoiser's (UNet's or transformer's) large nn.Linear layers in fp8 or int8 (torchao).

Both options quantize activations per token and weights per output channel, on the fly ("dynamic":
no calibration data); the matrix products then run on the GPU's fp8 or int8 tensor cores. Only the
denoiser (the family's `unet` or `transformer`, workers.models.families) is quantized: it does nearly all of a
job's work, while the text encoders, the VAE and CLIP run once per image and stay as loaded. Unlike the
other fast paths this changes pixels beyond float rounding, so the setting is part of a job's identity
(jobs.runfolder.resume.job_identity).

- `fp8`: float8 (e4m3) activations and weights, on CUDA GPUs of compute capability 8.9 or newer
  (Ada, Hopper, Blackwell), the first with fp8 tensor cores; elsewhere it is refused, at config time
  by the driver for CPU actors (jobs.config.preflight) and here at load time for the GPU an actor got.
- `int8`: int8 activations and weights, the portable variant: any CUDA GPU, and the CPU.

Quantizing comes before torch.compile (workers.pipeline.fastpaths), which then fuses the per-token
quantization into the surrounding kernels.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from workers.errors import WorkerLoadError

logger = logging.getLogger(__name__)

QUANTIZE_OPTIONS = ("none", "fp8", "int8")

# A Linear layer is quantized only when both its in- and out-features reach this (the default of
# performance.quantize_min_features). Dynamic quantization
# adds a pass over each activation (a max per token, a scale, a cast) and a rescale of each output,
# costs that grow with the layer's inputs and outputs while the saving grows with their product: on
# narrow layers the extra passes cost more than the faster matrix product saves. diffusers' fast-
# diffusion recipe (pytorch-labs/diffusion-fast) leaves out SDXL's narrow 320- and 640-channel
# projections for this reason and keeps the 1280-channel ones and the wide feed-forwards; 512 keeps
# SD1.5's and SDXL's 640- and 1280-channel attention and every feed-forward, and leaves out the
# 320-channel level, whose products are too thin to gain. benchmarks/gpu_throughput.py measures it.
MIN_FEATURES = 512

# Layers that see one row per image, not one per latent pixel or token: the UNet's time embedding, a DiT's
# timestep/text embedding and its adaptive-norm modulation (`norm1.linear`, `norm_out.linear`).
_PER_IMAGE = re.compile(r"time_emb|time_text_embed|norm\w*\.linear$")

# fp8 matrix products (torch._scaled_mm) need both dimensions in multiples of 16; int8 ones want 8.
_ALIGNMENT = {"fp8": 16, "int8": 8}

# The fp8 tensor cores arrived with Ada (8.9) and Hopper (9.0).
FP8_MIN_CAPABILITY = (8, 9)

INSTALL_HINT = "pip install 'genbatch[quantize]' (torchao 0.18.0, pinned with torch 2.13)"


@dataclass(frozen=True)
class QuantizedLayers:
    """What `quantize_unet` did, for the actor's log line."""

    option: str
    quantized: int
    linear_layers: int

    def describe(self) -> str:
        return f"{self.option}: {self.quantized} of {self.linear_layers} Linear layers"


def check_device(option: str, device, dtype) -> None:
    """Refuse, before the weights are loaded, a quantization this actor cannot run: no torchao, or fp8
    on a device (or dtype) without fp8 matrix products."""
    if option == "none":
        return
    import_torchao(option)
    if option != "fp8":
        return
    if device.type != "cuda":
        raise WorkerLoadError(
            "performance.quantize: fp8 needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper, "
            f"Blackwell); this actor runs on {device.type}: use quantize: int8 (portable) or none"
        )
    import torch

    capability = torch.cuda.get_device_capability(device)
    if tuple(capability) < FP8_MIN_CAPABILITY:
        raise WorkerLoadError(
            "performance.quantize: fp8 needs a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper, "
            f"Blackwell); this actor's {torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}: "
            "use quantize: int8 (portable) or none"
        )
    if dtype != torch.bfloat16:
        # torchao's per-row fp8 scales are computed from bf16 weights only.
        raise WorkerLoadError(
            f"performance.quantize: fp8 needs the model in bf16 (model.dtype: bf16 or auto), this actor loads it in "
            f"{str(dtype).removeprefix('torch.')}"
        )


def import_torchao(option: str):
    """torchao's quantization module, or one line saying how to install it."""
    # torchao logs a warning for each optional CUDA extension a CPU-only build lacks, and torch one
    # per enum it registers; neither matters here, and every actor would repeat them.
    noisy = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in noisy]
    for log in noisy:
        log.setLevel(logging.ERROR)
    try:
        from torchao import quantization
    except ImportError as error:
        raise WorkerLoadError(
            f"performance.quantize: {option} needs torchao, which cannot be imported here ({error}): {INSTALL_HINT}"
        ) from None
    finally:
        for log, level in zip(noisy, levels):
            log.setLevel(level)
    return quantization


def is_quantizable(module, name: str, option: str, min_features: int) -> bool:
    """A Linear layer wide enough to gain (see MIN_FEATURES), with dimensions the fast kernels accept. The
    time-embedding and modulation layers are left out whatever their width: they see one row per image,
    not one per latent pixel or token, so there is nothing to gain (_PER_IMAGE)."""
    import torch

    if not isinstance(module, torch.nn.Linear) or _PER_IMAGE.search(name):
        return False
    dims = (module.in_features, module.out_features)
    return min(dims) >= min_features and all(dim % _ALIGNMENT[option] == 0 for dim in dims)


def quantize_denoiser(unet, option: str, min_features: int = MIN_FEATURES) -> QuantizedLayers:
    """Quantize the denoiser's (a UNet's or a DiT's) Linear layers of at least `min_features` in and out, in
    place (weights where they are, on the actor's device)."""
    import torch

    linear = sum(isinstance(module, torch.nn.Linear) for module in unet.modules())
    if option == "none":
        return QuantizedLayers(option, 0, linear)
    quantization = import_torchao(option)
    if option == "fp8":
        # Per row: a scale per token and per output channel, not one per tensor, so that the outlier
        # channels and tokens diffusion activations have do not flatten every other value to a few levels.
        config = quantization.Float8DynamicActivationFloat8WeightConfig(granularity=quantization.PerRow())
    elif option == "int8":
        config = quantization.Int8DynamicActivationInt8WeightConfig()  # per token and per channel, symmetric
    else:
        raise ValueError(f"unknown quantize option {option!r}; choose one of: {', '.join(QUANTIZE_OPTIONS)}")
    chosen = {name for name, module in unet.named_modules() if is_quantizable(module, name, option, min_features)}
    if chosen:
        # The configs also apply torchao's recommended Inductor settings (coordinate-descent tuning, int8
        # matmuls fused with their rescale): a compiled quantized UNet takes longer to compile, and runs faster.
        quantization.quantize_(unet, config, filter_fn=lambda module, name: name in chosen)
    done = QuantizedLayers(option, len(chosen), linear)
    logger.info("quantized the denoiser, %s (those with in and out features >= %d)", done.describe(), min_features)
    return done


quantize_unet = quantize_denoiser  # the name it had before DiT families
