"""Will it fit? What one actor needs in GPU memory, told before any actor loads anything.

The estimate (`estimate_job`) sums the weights the actor loads, from their safetensors headers
(jobs.config.weights: no tensor is read), in the dtype the job runs in, plus the CLIP and scorer models (fp32, as
workers.models.loading keeps them), plus a working margin stated below. `fit_verdict` sets it against the GPUs
the cluster's nodes report (`gpu_sizes`): a refusal where even the largest is too small, a warning where
the numbers are uncertain (a model not in the cache, a GPU type whose memory Ray does not say).

The working margin, per actor:
- FIXED_BYTES (1.5 GB): the CUDA context, cuBLAS/cuDNN workspaces, the caching allocator's slack;
- WEIGHTS_SLACK (10% of the weights): fragmentation, transient copies while loading and casting;
- the denoiser's activations: DENOISER_BYTES_PER_PIXEL per output pixel, per image of a micro-batch and
  per branch (classifier-free guidance runs the denoiser on two), in a 2-byte dtype (twice in fp32). 512 is
  generous for inference, which keeps no activations across blocks: FLUX.1's widest live tensors at
  1024x1024 (4,608 tokens x 12,288 feed-forward channels x 2 bytes = 113 MB per image) are ~110 B/px;
- the VAE decode of one image (DECODE_BYTES_PER_PIXEL, workers.pipeline.fastpaths's figure: 128-channel activations
  at full resolution, a dozen live); `vae_slicing: auto` decodes one image at a time where a whole batch
  would not fit, so only `vae_slicing: false` counts the whole micro-batch.

Quantization (performance.quantize) stores the denoiser's wide Linear weights in one byte (plus a 4-byte
scale per output row), the layers workers.pipeline.quantize picks. The actor quantizes after loading the denoiser
in the job's dtype, so loading still needs the unquantized weights: what one actor needs is the larger of
the weights as loaded (plus FIXED_BYTES) and the quantized weights plus the margin.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from jobs.config.schema import JobConfig
from jobs.config.weights import (
    Files,
    LocalFiles,
    TensorInfo,
    WeightsError,
    folder_tensors,
    holds_weights,
    pipeline_components,
)
from jobs.errors import ConfigError
from workers.models.loading import is_builtin, is_hub_model
from workers.pipeline.fastpaths import _DECODE_BYTES_PER_PIXEL as DECODE_BYTES_PER_PIXEL
from workers.pipeline.quantize import _ALIGNMENT as QUANTIZE_ALIGNMENT

logger = logging.getLogger(__name__)

# Sizes are in GiB, printed "GB" as GPU memory is labelled (an "80 GB" H100 has 79.6 GiB usable by CUDA).
GB = 2**30
FIXED_BYTES = 1.5 * GB
WEIGHTS_SLACK = 0.10
DENOISER_BYTES_PER_PIXEL = 512
DTYPE_SIZES = {"bf16": 2, "fp16": 2, "fp32": 4}
SCALE_BYTES = 4  # one fp32 scale per output row of a quantized Linear weight
# Nominal memory of each GPU type (GiB) as Ray labels nodes (the `accelerator_type:X` resource, the device name's
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
# A need this small fits any GPU that runs diffusion models (8 GB: a P4, the smallest in GPU_MEMORY_GB), so a
# GPU of unknown size is not worth a warning (the built-in tiny models need ~2 GB, nearly all of it margin).
SMALL_NEED_GB = 8


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
        """For job.json's `estimate`: GiB, rounded to 0.01."""
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
    model = config.model
    try:
        files = model_files(model.id, model.revision, "model_index.json")
        if isinstance(files, str):
            unknown.append(f"model.id {model.id}: {files}")
        elif files is not None and not files.has("model_index.json"):
            unknown.append(f"model.id {model.id}: no model_index.json")
        elif files is not None:
            parts += pipeline_parts(files, config, size, unknown)
    except HubUnavailable as why:
        unknown.append(f"model.id {model.id}: {why}")
    # CLIP and the scorers' CLIPs stay in fp32; a scorer sharing clip.model's CLIP shares its copy.
    scorers = {"clip.model": config.clip.model}
    if config.scores.pickscore is not None:
        scorers["scores.pickscore.model"] = config.scores.pickscore.model
    if config.scores.aesthetic is not None:
        scorers["scores.aesthetic.model"] = config.scores.aesthetic.model
    named: dict[str, str] = {}  # model -> the first key naming it
    for key, ref in scorers.items():
        if ref is not None:
            named.setdefault(ref, key)
    for ref, key in named.items():
        try:
            found = model_files(ref, None, "config.json")
            if isinstance(found, str):
                unknown.append(f"{key} {ref}: {found}")
            elif found is not None:
                tensors = _tensors(key, found, "", None)
                if tensors is None:
                    unknown.append(f"{key}: no safetensors weights in {found}")
                    continue
                size_fp32 = sum(cast_bytes(tensor, 4) for tensor in tensors)
                parts.append(Part(key, size_fp32, size_fp32))
        except HubUnavailable as why:
            unknown.append(f"{key} {ref}: {why}")
    return Estimate(dtype, tuple(parts), activation_bytes(config, size), tuple(unknown))


def pipeline_parts(files: Files, config: JobConfig, size: int, unknown: list[str]) -> list[Part]:
    """One Part per component the pipeline loads; components whose weights cannot be sized go to `unknown`."""
    parts = []
    components = pipeline_components(files)
    denoiser = "transformer" if "transformer" in components else "unet"
    for name in components:
        tensors = _tensors("model.id", files, name, config.model.variant)
        if tensors is None:
            if holds_weights(files, name):
                unknown.append(f"model.id {name}: no safetensors weights in {files}/{name}")
            continue
        loaded = sum(cast_bytes(tensor, size) for tensor in tensors)
        running = loaded
        quantize = config.performance.quantize
        if name == denoiser and quantize != "none":
            minimum = config.performance.quantize_min_features
            running = sum(quantized_bytes(tensor, size, quantize, minimum) for tensor in tensors)
        parts.append(Part(name, loaded, running))
    return parts


def model_files(ref: str | None, revision: str | None, index_file: str) -> Files | str | None:
    """Where `ref`'s files are read from; None for none to size (no model, or a built-in: a few MB); a
    string saying why where the sizes cannot be known before the actors download the model."""
    if ref is None or is_builtin(ref):
        return None
    if not is_hub_model(ref):
        return LocalFiles(Path(os.path.expanduser(ref)))
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(ref, index_file, revision=revision)
    snapshot = Path(cached).parent if isinstance(cached, str) else None
    if snapshot is None and constants.HF_HUB_OFFLINE:
        return "not in the Hugging Face cache, so its weight sizes are unknown until the actors download it"
    key = (ref, revision, snapshot, constants.HF_HUB_OFFLINE)
    if key not in _HUB_FILES:  # a sweep sizes the same model for each of its runs: ask the hub once
        _HUB_FILES[key] = HubFiles(ref, revision, snapshot, online=not constants.HF_HUB_OFFLINE)
    return _HUB_FILES[key]


_HUB_FILES: dict[tuple, HubFiles] = {}


class HubUnavailable(Exception):
    """The hub could not tell a model's sizes (no network, an error): the estimate says so and goes on."""


class HubFiles:
    """A hub model's files: from the local cache where it holds them, else from the hub, whose safetensors
    headers are read with HTTP range requests (a few KB each; no tensor is downloaded)."""

    def __init__(self, ref: str, revision: str | None, snapshot: Path | None, online: bool):
        self.ref, self.revision, self.online = ref, revision, online
        self.local = LocalFiles(snapshot) if snapshot is not None else None
        self.remote: set[str] | None = None
        self.headers: dict[str, list[TensorInfo]] = {}  # path -> its tensors, read once
        if online:
            self.remote = set(self._ask(lambda api: api.list_repo_files(ref, revision=revision)))

    def _ask(self, call):
        import httpx2
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError

        try:
            return call(HfApi())
        except (HfHubHTTPError, httpx2.RequestError, OSError, ValueError) as error:  # the sizes are unknown
            raise HubUnavailable(f"could not read its weight sizes from the hub ({type(error).__name__})") from None

    def _cached(self, path: str) -> bool:
        return self.local is not None and self.local.has(path)

    def has(self, path: str) -> bool:
        return self._cached(path) or (self.remote is not None and path in self.remote)

    def under(self, folder: str) -> list[str]:
        names = set(self.local.under(folder)) if self.local is not None else set()
        names |= {name for name in self.remote or () if name.rpartition("/")[0] == folder}
        return sorted(names)

    def read_json(self, path: str) -> dict:
        if self._cached(path) or not self.online:
            assert self.local is not None
            return self.local.read_json(path)
        from huggingface_hub import hf_hub_download

        local = self._ask(lambda api: hf_hub_download(self.ref, path, revision=self.revision))  # small: kept cached
        return LocalFiles(Path(local).parent).read_json(Path(local).name)

    def tensors(self, path: str) -> list[TensorInfo]:
        if self._cached(path):
            assert self.local is not None
            return self.local.tensors(path)
        if not self.online:
            raise HubUnavailable(f"{path} is not in the Hugging Face cache")
        if path not in self.headers:
            ask = self._ask(lambda api: api.parse_safetensors_file_metadata(self.ref, path, revision=self.revision))
            self.headers[path] = [TensorInfo(name, info.dtype, tuple(info.shape)) for name, info in ask.tensors.items()]
        return self.headers[path]

    def __str__(self) -> str:
        return f"{self.ref} (Hugging Face hub)"


def _tensors(key: str, files: Files, folder: str, variant: str | None) -> list[TensorInfo] | None:
    try:
        return folder_tensors(files, folder, variant)
    except WeightsError as error:
        raise WeightsError(f"{key}: {error}") from None


def cast_bytes(tensor: TensorInfo, size: int) -> float:
    """A tensor's bytes once loaded: floating-point ones in the job's dtype, integer ones as stored."""
    return tensor.numel * size if tensor.is_float else tensor.nbytes


def quantized_bytes(tensor: TensorInfo, size: int, option: str, min_features: int) -> float:
    """A denoiser tensor's bytes after performance.quantize: the Linear weights workers.pipeline.quantize picks
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
    if sizes.unknown and need > SMALL_NEED_GB:
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
    known = f"; the cluster's largest GPU has {largest:g} GB" if largest is not None else ""
    logger.info("model needs %s%s", estimate.describe(), known)
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
