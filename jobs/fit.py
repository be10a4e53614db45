"""Will it fit? What one actor needs in GPU memory, told before any actor loads anything.

The estimate (`estimate_job`) sums the weights the actor loads, from their safetensors headers
(jobs.weights: no tensor is read), in the dtype the job runs in, plus the CLIP and scorer models (fp32, as
workers.loading keeps them), plus a working margin stated below. `fit_verdict` sets it against the GPUs
the cluster's nodes report (`gpu_sizes`): a refusal where even the largest is too small, a warning where
the numbers are uncertain (a model not in the cache, a GPU type whose memory Ray does not say).

The working margin, per actor:
- FIXED_BYTES (1.5 GB): the CUDA context, cuBLAS/cuDNN workspaces, the caching allocator's slack;
- WEIGHTS_SLACK (10% of the weights): fragmentation, transient copies while loading and casting;
- the denoiser's activations: DENOISER_BYTES_PER_PIXEL per output pixel, per image of a micro-batch and
  per branch (classifier-free guidance runs the denoiser on two), in a 2-byte dtype (twice in fp32). 512 is
  generous for inference, which keeps no activations across blocks: FLUX.1's widest live tensors at
  1024x1024 (4,608 tokens x 12,288 feed-forward channels x 2 bytes = 113 MB per image) are ~110 B/px;
- the VAE decode of one image (DECODE_BYTES_PER_PIXEL, workers.fastpaths's figure: 128-channel activations
  at full resolution, a dozen live); `vae_slicing: auto` decodes one image at a time where a whole batch
  would not fit, so only `vae_slicing: false` counts the whole micro-batch.

Quantization (performance.quantize) stores the denoiser's wide Linear weights in one byte (plus a 4-byte
scale per output row), the layers workers.quantize picks. The actor quantizes after loading the denoiser
in the job's dtype, so loading still needs the unquantized weights: what one actor needs is the larger of
the weights as loaded (plus FIXED_BYTES) and the quantized weights plus the margin.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from jobs.config import JobConfig
from jobs.errors import ConfigError
from jobs.weights import TensorInfo, WeightsError, folder_tensors, pipeline_components
from workers.fastpaths import _DECODE_BYTES_PER_PIXEL as DECODE_BYTES_PER_PIXEL
from workers.loading import is_builtin, is_hub_model
from workers.quantize import _ALIGNMENT as QUANTIZE_ALIGNMENT

logger = logging.getLogger(__name__)

GB = 1e9
FIXED_BYTES = 1.5 * GB
WEIGHTS_SLACK = 0.10
DENOISER_BYTES_PER_PIXEL = 512
DTYPE_SIZES = {"bf16": 2, "fp16": 2, "fp32": 4}
SCALE_BYTES = 4  # one fp32 scale per output row of a quantized Linear weight
# Nominal memory of each GPU type as Ray labels nodes (the `accelerator_type:X` resource, the device name's
# model token), in GB: (smallest, largest) where one name covers several sizes (A100 40/80 GB, V100
# 16/32 GB, H100 80/94 GB): such a GPU refuses nothing between the two, it only warns.
GPU_MEMORY_GB: dict[str, tuple[float, float]] = {
    "K80": (12, 12),
    "P4": (8, 8),
    "P100": (12, 16),
    "T4": (16, 16),
    "V100": (16, 32),
    "A10": (24, 24),
    "A10G": (24, 24),
    "A40": (48, 48),
    "A100": (40, 80),
    "A100-40G": (40, 40),
    "A100-80G": (80, 80),
    "L4": (24, 24),
    "L40": (48, 48),
    "L40S": (48, 48),
    "RTX-A6000": (48, 48),
    "RTX-PRO-6000": (96, 96),
    "GeForce-RTX-3090": (24, 24),
    "GeForce-RTX-4090": (24, 24),
    "GeForce-RTX-5090": (32, 32),
    "H20": (96, 141),
    "H100": (80, 94),
    "H200": (141, 141),
    "B200": (180, 192),
    "GB200": (186, 192),
    "B300": (288, 288),
    "GB300": (288, 288),
    "AMD-Instinct-MI210": (64, 64),
    "AMD-Instinct-MI250X": (64, 128),  # one GCD (64 GB) or the whole card
    "AMD-Instinct-MI250X-MI250": (64, 128),
    "AMD-Instinct-MI300X-OAM": (192, 192),
    "AMD-Instinct-MI325X-OAM": (256, 256),
    "AMD-Instinct-MI350X-OAM": (288, 288),
    "AMD-Instinct-MI355X-OAM": (288, 288),
}
ACCELERATOR_PREFIX = "accelerator_type:"


@dataclass(frozen=True)
class Part:
    """One model an actor holds: its bytes as loaded (the job's dtype) and as it runs (after quantizing)."""

    name: str
    loaded_bytes: float
    running_bytes: float


@dataclass(frozen=True)
class Estimate:
    """What one actor needs in GPU memory; `unknown` names what could not be sized (then a lower bound)."""

    dtype: str
    parts: tuple[Part, ...]
    activation_bytes: float
    unknown: tuple[str, ...] = ()

    @property
    def loaded_bytes(self) -> float:
        return sum(part.loaded_bytes for part in self.parts)

    @property
    def weights_bytes(self) -> float:
        return sum(part.running_bytes for part in self.parts)

    @property
    def margin_bytes(self) -> float:
        return FIXED_BYTES + WEIGHTS_SLACK * self.weights_bytes + self.activation_bytes

    @property
    def need_bytes(self) -> float:
        return max(self.loaded_bytes + FIXED_BYTES, self.weights_bytes + self.margin_bytes)

    def record(self) -> dict:
        """For job.json's `estimate`: GB, rounded to 0.01."""
        return {
            "dtype": self.dtype,
            "weights_gb": _gb(self.weights_bytes),
            "margin_gb": _gb(self.margin_bytes),
            "need_gb": _gb(self.need_bytes),
            "parts_gb": {part.name: _gb(part.running_bytes) for part in self.parts},
            "unknown": list(self.unknown),
        }

    def describe(self) -> str:
        parts = ", ".join(f"{part.name} {part.running_bytes / GB:.2f}" for part in self.parts)
        return (
            f"~{self.need_bytes / GB:.1f} GB per worker in {self.dtype}: weights {self.weights_bytes / GB:.2f} GB "
            f"({parts or 'none'}) + working margin {self.margin_bytes / GB:.2f} GB"
        )


def _gb(value: float) -> float:
    return round(value / GB, 2)


# --- The estimate -------------------------------------------------------------------------------------------


def estimate_job(config: JobConfig) -> Estimate:
    """What one of the job's actors needs on its GPU. Raises WeightsError for a weights file that is not
    safetensors (the actors could not load it either)."""
    dtype = "fp32" if config.model.dtype == "fp32" else ("fp16" if config.model.dtype == "fp16" else "bf16")
    size = DTYPE_SIZES[dtype]
    parts: list[Part] = []
    unknown: list[str] = []
    pipeline = model_folder(config.model.id, config.model.revision, "model_index.json")
    if isinstance(pipeline, str):
        unknown.append(f"model.id {config.model.id}: {pipeline}")
    elif pipeline is not None and not (pipeline / "model_index.json").is_file():
        unknown.append(f"model.id {config.model.id}: no model_index.json")
    elif pipeline is not None:
        components = pipeline_components(pipeline)
        denoiser = "transformer" if "transformer" in components else "unet"
        for name, folder in components.items():
            tensors = _tensors("model.id", folder, config.model.variant)
            if tensors is None:
                if _holds_weights(folder):
                    unknown.append(f"model.id {name}: no safetensors weights in {folder}")
                continue
            loaded = sum(cast_bytes(tensor, size) for tensor in tensors)
            running = loaded
            if name == denoiser and config.performance.quantize != "none":
                running = sum(
                    quantized_bytes(tensor, size, config.performance.quantize, config.performance.quantize_min_features)
                    for tensor in tensors
                )
            parts.append(Part(name, loaded, running))
    # CLIP and the scorers' CLIPs stay in fp32; a scorer sharing clip.model's CLIP shares its copy.
    scorers = {"clip.model": config.clip.model}
    if config.scores.pickscore is not None:
        scorers["scores.pickscore.model"] = config.scores.pickscore.model
    if config.scores.aesthetic is not None:
        scorers["scores.aesthetic.model"] = config.scores.aesthetic.model
    seen: set[str] = set()
    for key, ref in scorers.items():
        if ref is None or ref in seen:
            continue
        seen.add(ref)
        found = model_folder(ref, None, "config.json")
        if isinstance(found, str):
            unknown.append(f"{key} {ref}: {found}")
        elif found is not None:
            tensors = _tensors(key, found, None)
            if tensors is None:
                unknown.append(f"{key}: no safetensors weights in {found}")
                continue
            size_fp32 = sum(cast_bytes(tensor, 4) for tensor in tensors)
            parts.append(Part(key, size_fp32, size_fp32))
    return Estimate(dtype, tuple(parts), activation_bytes(config, size), tuple(unknown))


def model_folder(ref: str | None, revision: str | None, index_file: str) -> Path | str | None:
    """The local folder holding `ref`'s files; None for none to size (no model, or a built-in: a few MB);
    a string saying why where the sizes cannot be known before the actors download the model."""
    if ref is None or is_builtin(ref):
        return None
    if not is_hub_model(ref):
        return Path(os.path.expanduser(ref))
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(ref, index_file, revision=revision)
    if not isinstance(found, str):
        return "not in the Hugging Face cache, so its weight sizes are unknown until the actors download it"
    return Path(found).parent


def _tensors(key: str, folder: Path, variant: str | None) -> list[TensorInfo] | None:
    try:
        return folder_tensors(folder, variant)
    except WeightsError as error:
        raise WeightsError(f"{key}: {error}") from None


def _holds_weights(folder: Path) -> bool:
    # A component folder with only a config (a scheduler, a tokenizer) has nothing to load onto the GPU.
    return any(folder.glob("*.safetensors*")) or any(folder.glob("*.bin")) or any(folder.glob("*.pt*"))


def cast_bytes(tensor: TensorInfo, size: int) -> float:
    """A tensor's bytes once loaded: floating-point ones in the job's dtype, integer ones as stored."""
    return tensor.numel * size if tensor.is_float else tensor.nbytes


def quantized_bytes(tensor: TensorInfo, size: int, option: str, min_features: int) -> float:
    """A denoiser tensor's bytes after performance.quantize: the Linear weights workers.quantize picks
    (both dimensions at least `min_features` and aligned; not the time embedding) in one byte per element
    plus a scale per output row."""
    shape = tensor.shape
    linear = len(shape) == 2 and tensor.name.endswith(".weight") and "time_emb" not in tensor.name
    if (
        linear
        and tensor.is_float
        and min(shape) >= min_features
        and all(dim % QUANTIZE_ALIGNMENT[option] == 0 for dim in shape)
    ):
        return tensor.numel + shape[0] * SCALE_BYTES
    return cast_bytes(tensor, size)


def activation_bytes(config: JobConfig, size: int) -> float:
    """The denoiser's activations for a micro-batch and the VAE decode, at the job's resolution (see the
    module's docstring). Classifier-free guidance doubles the denoiser's batch where guidance_scale > 1."""
    pixels = config.generation.width * config.generation.height
    batch = config.resources.batch_size  # a micro-batch holds batch_size images, whatever images_per_prompt
    branches = 2 if config.generation.guidance_scale > 1 else 1
    decoded = batch if config.performance.vae_slicing is False else 1
    scale = size / 2
    return scale * pixels * (batch * branches * DENOISER_BYTES_PER_PIXEL + decoded * DECODE_BYTES_PER_PIXEL)


# --- The cluster's GPUs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuSizes:
    """The GPU types of the cluster's nodes: memory in GB (smallest, largest) by type, and the GPU nodes
    whose memory cannot be told (no accelerator type, or a type not in GPU_MEMORY_GB), in words."""

    known: dict[str, tuple[float, float]]
    unknown: tuple[str, ...]


def gpu_sizes(nodes: list[dict]) -> GpuSizes | None:
    """From live nodes' resources (`ray.nodes()[i]["Resources"]`); None where no node has a GPU."""
    known: dict[str, tuple[float, float]] = {}
    unknown: list[str] = []
    gpu_nodes = [node for node in nodes if node.get("GPU", 0) > 0]
    if not gpu_nodes:
        return None
    for node in gpu_nodes:
        types = [name.removeprefix(ACCELERATOR_PREFIX) for name in node if name.startswith(ACCELERATOR_PREFIX)]
        if not types:
            unknown.append(f"a node with {node['GPU']:g} GPU(s) of a type Ray does not name")
        for kind in types:
            if kind in GPU_MEMORY_GB:
                known[kind] = GPU_MEMORY_GB[kind]
            elif f"GPUs of type {kind}" not in unknown:
                unknown.append(f"GPUs of type {kind}")
    return GpuSizes(known, tuple(unknown))


@dataclass(frozen=True)
class Verdict:
    refusal: str | None = None
    warnings: tuple[str, ...] = ()


def fit_verdict(
    estimate: Estimate,
    sizes: GpuSizes | None,
    gpus_per_worker: float,
    advice: tuple[str, ...] = ("a smaller model", "larger GPUs"),
) -> Verdict:
    """Refuse where even the cluster's largest GPU is too small for one actor (several where
    gpus_per_worker < 1 puts them on one GPU); warn where that cannot be told for sure. `advice` lists
    what would help, for the refusal's line."""
    if sizes is None or gpus_per_worker == 0:
        return Verdict()
    sharing = max(1, int(1 / gpus_per_worker + 1e-9)) if gpus_per_worker < 1 else 1
    need = estimate.need_bytes / GB
    per_gpu = need * sharing
    at_least = "at least " if estimate.unknown else ""
    needs = f"model needs {at_least}~{need:.0f} GB per worker in {estimate.dtype}"
    if sharing > 1:
        needs += f" ({sharing} workers share each GPU at resources.gpus_per_worker {gpus_per_worker:g}: "
        needs += f"~{per_gpu:.0f} GB)"
    warnings = [f"sizes uncertain: {what}" for what in estimate.unknown]
    largest = max((high for _, high in sizes.known.values()), default=None)
    if largest is not None and per_gpu > largest and not sizes.unknown:
        return Verdict(f"{needs}; the cluster's largest GPU has {largest:g} GB: use {_or(advice)}")
    if sizes.unknown:
        unknown = ", ".join(sizes.unknown)
        warnings.append(f"could not tell whether the model fits ({needs}): GPU memory unknown for {unknown}")
    small = sorted(f"{kind} ({_range(low, high)} GB)" for kind, (low, high) in sizes.known.items() if per_gpu > low)
    if small:
        warnings.append(f"{needs}; workers on {', '.join(small)} GPUs may not have room to load it")
    return Verdict(None, tuple(warnings))


def _range(low: float, high: float) -> str:
    return f"{low:g}" if low == high else f"{low:g} or {high:g}"


def _or(options: tuple[str, ...]) -> str:
    return options[0] if len(options) == 1 else f"{', '.join(options[:-1])}, or {options[-1]}"


# --- The check ----------------------------------------------------------------------------------------------


def check_fit(config: JobConfig, estimate: Estimate | None, nodes: list[dict]) -> None:
    """Raise ConfigError, one line, where no GPU of the cluster (`nodes`: live nodes' resources) can hold
    one actor; log a warning where that cannot be told. `estimate` None: a CPU-only job, nothing to check."""
    if estimate is None:
        return
    gpus = config.resources.gpus_per_worker
    sizes = gpu_sizes(nodes)
    verdict = fit_verdict(estimate, sizes, gpus)
    if verdict.refusal is not None:
        raise ConfigError(fit_verdict(estimate, sizes, gpus, advice(config, sizes)).refusal or verdict.refusal)
    largest = max((high for _, high in sizes.known.values()), default=None) if sizes else None
    if largest is not None:
        logger.info("model needs %s; the cluster's largest GPU has %g GB", estimate.describe(), largest)
    for warning in verdict.warnings:
        logger.warning("%s", warning)


def advice(config: JobConfig, sizes: GpuSizes | None) -> tuple[str, ...]:
    """What would make the job fit, for the refusal: fp8 or a batch of one where either alone would."""
    options = []
    gpus = config.resources.gpus_per_worker

    def fits(**changes) -> bool:
        changed = config.model_copy(deep=True)
        for section, (key, value) in changes.items():
            setattr(getattr(changed, section), key, value)
        return fit_verdict(estimate_job(changed), sizes, gpus).refusal is None

    if config.performance.quantize == "none" and config.model.dtype != "fp32" and fits(performance=("quantize", "fp8")):
        options.append("performance.quantize: fp8")
    if config.resources.batch_size > 1 and fits(resources=("batch_size", 1)):
        options.append("resources.batch_size: 1")
    return (*options, "a smaller model", "larger GPUs")
