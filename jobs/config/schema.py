"""The job configuration: one pydantic tree, loaded from YAML, with `--set` overrides applied first."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jobs.config.model_family import apply_model_family
from jobs.errors import ConfigError, one_line
from workers.io import storage
from workers.models.loading import is_hub_id, looks_like_path, missing_model_folder, unknown_model_ref
from workers.models.schedulers import SCHEDULERS
from workers.pipeline.quantize import MIN_FEATURES


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(_Section):
    path: str = Field(
        description="A local .safetensors file, a folder holding one, or a hub id (org/name) with weight_name."
    )
    weight: float = Field(1.0, allow_inf_nan=False, description="How strongly the LoRA applies (its scale).")
    weight_name: str | None = Field(
        None, description="The .safetensors file inside the folder or hub repository; needed for a hub id."
    )

    @field_validator("path")
    @classmethod
    def _expand_home(cls, path: str) -> str:
        return os.path.expanduser(path)

    @model_validator(mode="after")
    def _safetensors_file(self) -> LoraConfig:
        """Safetensors only (a pickle would run code); a folder or hub id must say which file, unless a folder
        holds exactly one (jobs.config.adapters finds it)."""
        if self.weight_name is not None and not self.weight_name.endswith(".safetensors"):
            raise ValueError(
                f"weight_name {self.weight_name!r} is not a .safetensors file; LoRAs load from safetensors only"
            )
        if os.path.isfile(self.path):
            if not self.path.endswith(".safetensors"):
                raise ValueError(f"{self.path} is not a .safetensors file; LoRAs load from safetensors only")
        elif os.path.isdir(self.path):
            if self.weight_name is None:
                found = folder_safetensors(self.path)
                if len(found) != 1:
                    raise ValueError(
                        f"folder {self.path} holds {len(found)} .safetensors files; set weight_name to the LoRA's"
                    )
            elif not os.path.isfile(os.path.join(self.path, self.weight_name)):
                raise ValueError(f"file {os.path.join(self.path, self.weight_name)} does not exist")
        elif looks_like_path(self.path) or not is_hub_id(self.path):
            raise ValueError(f"no file or folder {self.path!r}, and not a Hugging Face id (org/name)")
        elif self.weight_name is None:
            raise ValueError(f"hub LoRA {self.path!r} needs weight_name (its .safetensors file)")
        return self


def folder_safetensors(folder: str) -> list[str]:
    """The names of the .safetensors files directly in `folder`, sorted."""
    return sorted(name for name in os.listdir(folder) if name.endswith(".safetensors"))


class ModelConfig(_Section):
    id: str = Field(
        "tiny",
        description='"tiny" or "tiny-sdxl" (built-in), a Hugging Face hub id (org/name), or a local diffusers folder.',
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to load.")
    variant: str | None = Field(None, description="Weights variant to load, e.g. fp16 (*.fp16.safetensors).")
    scheduler: str | None = Field(
        None,
        description=f"null keeps the model's scheduler; else one of those of its family (README: Model families): "
        f"{', '.join(SCHEDULERS)}.",
    )
    dtype: Literal["auto", "fp16", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 (fp16 where unsupported) on GPU, fp32 on CPU."
    )
    loras: list[LoraConfig] = Field(
        default_factory=list,
        description="LoRAs fused into the model's weights when it loads, for every row (no per-step cost).",
    )
    adapters: dict[str, list[LoraConfig]] = Field(
        default_factory=dict,
        description="Named sets of LoRAs that the manifest's `adapter` column picks per row (null: the model "
        "without them); each is loaded once, and micro-batches switch between them.",
    )

    @field_validator("adapters")
    @classmethod
    def _named_sets(cls, adapters: dict[str, list[LoraConfig]]) -> dict[str, list[LoraConfig]]:
        for name, loras in adapters.items():
            if not name.strip():
                raise ValueError("an adapter name must not be empty")
            if not loras:
                raise ValueError(f"adapter {name!r} lists no LoRA")
        return adapters

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, name: str | None) -> str | None:
        if name is not None and name not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}")
        return name

    @field_validator("id")
    @classmethod
    def _existing_folder(cls, ref: str) -> str:
        return _loadable_model(ref, "model")


class GenerationConfig(_Section):
    steps: int = Field(30, ge=1, description="Denoising steps per image; unset: the model family's default.")
    guidance_scale: float = Field(
        7.5,
        ge=0,
        allow_inf_nan=False,
        description="Classifier-free guidance (<= 1 disables it), or FLUX.1's distilled guidance; unset: the "
        "model family's default.",
    )
    width: int = Field(512, ge=8, description="Image width in pixels, a multiple of 8.")
    height: int = Field(512, ge=8, description="Image height in pixels, a multiple of 8.")
    negative_prompt: str = Field("", description="Used for rows without a negative_prompt of their own.")
    images_per_prompt: int = Field(
        1, ge=1, description="Images per manifest row, each with its own seed (image 0 keeps the row's seed)."
    )
    strength: float = Field(
        0.8, gt=0, le=1, description="Image-to-image rows without their own: how far from the init image (1: all)."
    )
    init_image_policy: Literal["resize", "error"] = Field(
        "resize", description="An init image whose size is not the row's width x height: resize it, or fail the row."
    )
    true_cfg_scale: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="Real classifier-free guidance with the negative prompt, for families whose guidance_scale is "
        "distilled (FLUX.1): > 1 runs the denoiser twice per step; null: the family's default (1: off).",
    )
    max_sequence_length: int | None = Field(
        None,
        ge=1,
        description="Tokens the T5/LLM text encoder reads per prompt (FLUX.1: up to 512); null: the family's "
        "default. CLIP encoders and CLIP scoring always read 77.",
    )

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8, got {value}")
        return value


class ClipConfig(_Section):
    model: str | None = Field(
        "tiny", description='"tiny", a hub id (org/name), or a local CLIP folder; null disables scoring.'
    )

    @field_validator("model")
    @classmethod
    def _existing_folder(cls, ref: str | None) -> str | None:
        return None if ref is None else _loadable_model(ref, "CLIP")


def _loadable_model(ref: str, kind: str) -> str:
    """`ref` if a folder or hub id could load it; a one-line error naming the `kind` of model if not."""
    missing = missing_model_folder(ref)
    if missing:
        raise ValueError(f"{kind} folder {missing} does not exist")
    if unknown_model_ref(ref):
        raise ValueError(f"no folder {ref!r} and not a Hugging Face id (org/name)")
    return ref


class PickScoreConfig(_Section):
    model: str = Field(
        description='The PickScore CLIPModel: "tiny", a hub id (yuvalkirstain/PickScore_v1) or a local folder; '
        "its processor comes from the same folder."
    )

    @field_validator("model")
    @classmethod
    def _existing_folder(cls, ref: str) -> str:
        return _loadable_model(ref, "PickScore")


class AestheticConfig(_Section):
    model: str = Field(
        description='The CLIP whose image embeddings feed the head: "tiny", a hub id or a local folder '
        "(the same as clip.model shares its loaded copy)."
    )
    head: str = Field(
        description="The LAION improved-aesthetic-predictor MLP as a .safetensors file (see README to convert the "
        '.pth), or "tiny" for the built-in random head that fits the tiny CLIP.'
    )

    @field_validator("model")
    @classmethod
    def _existing_folder(cls, ref: str) -> str:
        return _loadable_model(ref, "CLIP")

    @field_validator("head")
    @classmethod
    def _safetensors_file(cls, head: str) -> str:
        if head == "tiny":
            return head
        path = os.path.expanduser(head)
        if not path.endswith(".safetensors"):
            raise ValueError(
                f"{path} is not a .safetensors file; heads are loaded from safetensors only "
                "(README: The output, Scores, says how to convert the published .pth)"
            )
        if not os.path.isfile(path):
            raise ValueError(f"file {path} does not exist")
        return path


class ScoresConfig(_Section):
    pickscore: PickScoreConfig | None = Field(None, description="Add the `pickscore` column (float32); null: none.")
    aesthetic: AestheticConfig | None = Field(None, description="Add the `aesthetic` column (float32); null: none.")


class WorkerRange(_Section):
    """An elastic pool: as many actors as the cluster has room for, within these bounds."""

    min: int = Field(1, ge=1, description="Actors started at once and kept even while the cluster has no room.")
    max: int | None = Field(None, ge=1, description="Ceiling; null: as many as the cluster can host.")

    @property
    def elastic(self) -> bool:
        """Whether the pool follows the cluster's capacity (a fixed pool has min == max)."""
        return self.max != self.min

    def size(self, capacity: int) -> int:
        """The pool size for a cluster that can host `capacity` actors: capacity, within [min, max]."""
        return max(self.min, capacity if self.max is None else min(self.max, capacity))


class ResourcesConfig(_Section):
    workers: int | Literal["auto"] | WorkerRange = Field(
        1,
        description="Actors, each holding the whole pipeline: a number (fixed); auto (one per slot the cluster's "
        "nodes have for a worker's CPUs and GPUs, re-checked as nodes join and leave); or {min: M, max: N} (auto "
        "within bounds, either optional).",
    )
    gpus_per_worker: float = Field(1, ge=0, description="GPUs each actor reserves; 0 runs actors on CPU.")
    cpus_per_worker: float | None = Field(
        None, gt=0, description="CPUs each actor reserves; default 1 with a GPU, all cores of a node without."
    )
    batch_size: int = Field(8, ge=1, description="Images per pipeline call.")
    max_shard_retries: int = Field(
        3, ge=0, description="Times a shard is retried (on a healthy or replacement actor) before it is failed."
    )

    @field_validator("workers", mode="before")
    @classmethod
    def _worker_count(cls, value):
        """One clear message for every bad form (pydantic would list one per member of the union)."""
        if value == "auto" or isinstance(value, WorkerRange):
            return value
        if isinstance(value, dict):
            unknown = sorted(str(key) for key in value if key not in ("min", "max"))
            if unknown:
                raise ValueError(f"unknown key {unknown[0]!r} in {{min: M, max: N}}")
            low = _worker_number(value.get("min", 1), "min ")
            high = None if value.get("max") is None else _worker_number(value["max"], "max ")
            if high is not None and high < low:
                raise ValueError(f"max must be >= min, got min {low} and max {high}")
            return {"min": low, "max": high}
        return _worker_number(value, "")

    def worker_range(self) -> WorkerRange:
        """`workers` as bounds: a number N is min = max = N (fixed), auto is min 1 with no ceiling."""
        if self.workers == "auto":
            return WorkerRange()
        if isinstance(self.workers, int):
            return WorkerRange(min=self.workers, max=self.workers)
        return self.workers


def _worker_number(value, which: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        expected = "a whole number >= 1" if which else "auto, a whole number >= 1, or {min: M, max: N}"
        raise ValueError(f"{which}must be {expected}, got {value!r}")
    return value


class OutputConfig(_Section):
    path: str = Field(description="Output folder; created. Rerunning on it resumes the same job.")
    image_format: Literal["png", "webp", "jpeg"] = Field("png", description="Encoding of the image column.")
    png_compress_level: int = Field(1, ge=0, le=9, description="zlib level for png: 1 is fast, 9 is small.")
    quality: int = Field(95, ge=1, le=100, description="Quality for webp and jpeg.")

    @field_validator("path")
    @classmethod
    def _usable_path(cls, path: str) -> str:
        return _usable_location(path)


class PerformanceConfig(_Section):
    compile: bool | Literal["auto", "regional"] = Field(
        "auto",
        description="torch.compile the denoiser (UNet or transformer) and VAE decoder; micro-batches are padded to "
        "batch_size. regional: compile only the transformer's repeated blocks (diffusers' compile_repeated_blocks), "
        "for a fraction of the compile time. auto: on GPU, unless the job has too few images per worker to pay back "
        "the compile time (workers.pipeline.fastpaths), regionally for transformer (DiT) families.",
    )
    cache: Literal["none", "first_block", "taylorseer", "magcache"] = Field(
        "none",
        description="Reuse work across denoising steps with diffusers' cache hooks on the denoiser "
        "(workers.pipeline.step_cache; changes pixels, so part of the job's identity). "
        "first_block: skip the other blocks "
        "while the first block's output changes less than cache_threshold (decided for a whole micro-batch at once); "
        "taylorseer: predict the attention outputs every step but each cache_interval-th after cache_warmup_steps; "
        "magcache: skip steps while the model's known residual magnitudes change less than cache_threshold.",
    )
    cache_threshold: float | None = Field(
        None, gt=0, description="first_block (default 0.05) and magcache (default 0.06): higher skips more."
    )
    cache_warmup_steps: int | None = Field(
        None,
        ge=0,
        description="taylorseer (default 3) and magcache (default: the first 20% of the steps): steps never skipped.",
    )
    cache_interval: int | None = Field(
        None, ge=1, description="taylorseer (default 5): every cache_interval-th step after warm-up is computed."
    )
    compile_cache: str | None = Field(
        None,
        description="Folder or URI where compiled kernels are shared by actors, nodes and runs; "
        "null: $GENBATCH_CACHE/compile (default ~/.cache/genbatch/compile) on each node.",
    )
    channels_last: bool | Literal["auto"] = Field("auto", description="channels_last UNet/VAE; auto: on GPU only.")
    quantize: Literal["none", "fp8", "int8"] = Field(
        "none",
        description="Quantize the UNet's large Linear layers (torchao; changes pixels, so part of the job's "
        "identity): fp8 on CUDA GPUs of compute capability >= 8.9 with model.dtype bf16/auto; int8 anywhere.",
    )
    quantize_min_features: int = Field(
        MIN_FEATURES,
        ge=1,
        description="With quantize: only Linear layers whose in- and out-features both reach this are quantized; "
        "narrower ones lose more to quantizing their inputs than the faster product saves (workers.pipeline.quantize).",
    )
    vae_slicing: bool | Literal["auto"] = Field(
        "auto", description="Decode one image at a time; auto: when a batch's decode would not fit in free GPU memory."
    )
    vae_tiling: bool = Field(False, description="Decode in tiles, for sizes whose single-image decode does not fit.")
    clip_preprocess: Literal["auto", "device", "processor"] = Field(
        "auto", description="CLIP resize/crop/normalize on the device, or by CLIPProcessor; auto: device on GPU."
    )
    writer_threads: int | Literal["auto"] = Field(
        "auto",
        description="CPU threads that encode and hash images while the next batch generates; 0: inline; "
        "auto: 2 with a GPU, 0 on CPU actors (where threads would compete with the model for cores).",
    )

    @model_validator(mode="after")
    def _cache_parameters(self) -> PerformanceConfig:
        """A cache parameter the chosen cache does not take is refused, not ignored."""
        from workers.pipeline.step_cache import PARAMETERS

        for key in ("cache_threshold", "cache_warmup_steps", "cache_interval"):
            if getattr(self, key) is not None and key not in PARAMETERS[self.cache]:
                takes = ", ".join(PARAMETERS[self.cache]) or "no parameters"
                raise ValueError(f"{key}: cache {self.cache!r} takes {takes}; remove the key")
        return self

    @field_validator("compile_cache")
    @classmethod
    def _usable_cache(cls, location: str | None) -> str | None:
        return None if location is None else _usable_location(location)

    @field_validator("writer_threads")
    @classmethod
    def _non_negative(cls, value):
        if value != "auto" and value < 0:
            raise ValueError(f"must be >= 0 or auto, got {value}")
        return value


class JobConfig(_Section):
    manifest: str = Field(description="A Parquet file, a folder of Parquet files, a glob, or a URI.")
    mode: Literal["generate", "reconstruct"] = Field(
        "generate", description="generate: text- (or image-) to-image; reconstruct: VAE round trip of init_image."
    )
    output: OutputConfig = Field(description="Output folder (a path), or a section with path and image settings.")
    seed: int = Field(0, ge=0, description="Job seed; rows without a seed get one derived from (seed, row id).")
    shard_size: int = Field(256, ge=1, description="Rows per shard.")
    model: ModelConfig = Field(
        default_factory=ModelConfig, description="The diffusion model: which, its scheduler, dtype and LoRAs."
    )
    generation: GenerationConfig = Field(
        default_factory=GenerationConfig,
        description="How each image is generated, for rows whose manifest columns do not say.",
    )
    clip: ClipConfig = Field(default_factory=ClipConfig, description="The CLIP model behind the clip_score column.")
    scores: ScoresConfig = Field(
        default_factory=ScoresConfig, description="Per-image scores besides the CLIP score (pickscore, aesthetic)."
    )
    resources: ResourcesConfig = Field(
        default_factory=ResourcesConfig, description="The actor pool: how many actors, what each reserves, batch size."
    )
    performance: PerformanceConfig = Field(
        default_factory=PerformanceConfig,
        description="Speed settings: compile, step cache, quantization, VAE and writer options.",
    )
    sweep: dict[str, list[Any]] | None = Field(
        None,
        description="Dotted config keys mapped to lists of values: one run per combination, each in its own folder "
        "under output (jobs.run.sweep); null: one run.",
    )

    @model_validator(mode="after")
    def _model_family(self) -> JobConfig:
        """Settings resolved from, and checked against, the model's family (jobs.config.model_family)."""
        apply_model_family(self)
        return self

    @field_validator("sweep")
    @classmethod
    def _sweep_axes(cls, axes: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        for key, values in (axes or {}).items():
            if key == "sweep" or key.split(".")[0] == "output":
                raise ValueError(f"{key!r} cannot be swept: the sweep names each run's output folder")
            if not values:
                raise ValueError(f"{key!r} has no values")
            texts = [repr(value) for value in values]
            repeated = sorted({text for text in texts if texts.count(text) > 1})
            if repeated:
                raise ValueError(f"{key!r} lists {', '.join(repeated)} more than once")
        return axes

    @field_validator("manifest")
    @classmethod
    def _usable_manifest(cls, path: str) -> str:
        return _usable_location(path)

    @field_validator("output", mode="before")
    @classmethod
    def _output_path_alone(cls, value):
        return {"path": value} if isinstance(value, str) else value


def _usable_location(location: str) -> str:
    """A local path with `~` expanded, or a URI as it is; an empty one would mean the current folder."""
    if not location.strip():
        raise ValueError("must not be empty")
    return location if storage.is_remote(location) else os.path.expanduser(location)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> JobConfig:
    """Read a YAML config, apply `dotted.key=value` overrides, and validate everything."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"{path}: cannot read config: {one_line(error)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys, got {type(raw).__name__}")
    for override in overrides:
        if isinstance(raw.get("output"), str):  # `output: DIR` is short for `output: {path: DIR}`
            raw["output"] = {"path": raw["output"]}
        apply_override(raw, override, path)
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{path}: {describe_validation_error(error)}") from None


def apply_override(raw: dict, override: str, path: Path) -> None:
    """Set `a.b.c=value` in a raw config dict; the value is parsed as YAML (so 30 is an int)."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{path}: --set {override!r}: expected dotted.key=value")
    parts = key.strip().split(".")
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{path}: --set {override!r}: {'.'.join(parts[: depth + 1])} is not a section")
        node = child
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: --set {override!r}: {one_line(error)}") from None
    if parts == ["output"] and isinstance(value, str) and isinstance(node.get("output"), dict):
        node["output"]["path"] = value  # keep the image settings of an output section
    else:
        node[parts[-1]] = value


def describe_validation_error(error: ValidationError) -> str:
    """pydantic's errors as one line: `key: problem; key: problem`."""
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"])
        if not key and item["type"] == "value_error":  # a whole-config check: its message names the keys
            problems.append(item["msg"].removeprefix("Value error, "))
        elif not key:
            problems.append(f"(top level): {item['msg']}")
        elif item["type"] == "extra_forbidden":
            problems.append(f"unknown key {key!r}")
        elif item["type"] == "missing":
            problems.append(f"missing key {key!r}")
        else:
            problems.append(f"{key}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)
