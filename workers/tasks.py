"""The narrow contract between driver and actors: settings in, shard descriptions in, small results out.

Only plain dataclasses live here, so the driver can import this module without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal

# The settings below carry no defaults: the config (jobs.config.schema) holds each default once, and
# jobs.runfolder.settings fills every field from it.


@dataclass(frozen=True)
class GenerationDefaults:
    """Generation settings for rows that do not override them: the config's `generation` section."""

    steps: int
    guidance_scale: float
    width: int
    height: int
    negative_prompt: str
    strength: float  # image-to-image rows without their own
    init_image_policy: Literal["resize", "error"]
    true_cfg_scale: float | None  # real CFG with negative prompts where the family has it (FLUX.1); None: n/a
    max_sequence_length: int | None  # T5/LLM text encoders' token limit (the family's default); None: n/a


@dataclass(frozen=True)
class ImageEncoding:
    """How images are stored in the image column: the config's `output` section."""

    image_format: Literal["png", "webp", "jpeg"]
    png_compress_level: int
    quality: int


@dataclass(frozen=True)
class FastPaths:
    """Speed options (the config's `performance` section); none but `quantize` changes pixels by more than
    float rounding."""

    compile: bool | Literal["auto", "regional"]  # auto, regional: resolved by the actor (fastpaths.choose_compile)
    compile_cache: str | None  # folder or URI of shared compiled kernels; None: under the genbatch cache
    channels_last: bool | Literal["auto"]
    quantize: Literal["none", "fp8", "int8"]  # workers.pipeline.quantize: the one option here that changes pixels
    quantize_min_features: int  # the narrowest Linear layer quantized
    vae_slicing: bool | Literal["auto"]
    vae_tiling: bool
    cache: Literal["none", "first_block", "taylorseer", "magcache"]  # workers.pipeline.step_cache: changes pixels
    cache_threshold: float | None  # None: the cache's default
    cache_warmup_steps: int | None
    cache_interval: int | None
    clip_preprocess: Literal["device", "processor", "auto"]
    writer_threads: int | Literal["auto"]  # auto: 2 with a GPU, 0 on the CPU


@dataclass(frozen=True)
class ScoreModels:
    """Per-image scorers besides the CLIP score: the config's `scores` section; None: not computed."""

    pickscore: str | None  # the PickScore CLIPModel (folder, hub id or tiny)
    aesthetic: str | None  # the CLIP whose image embeddings feed the aesthetic head
    aesthetic_head: str | None  # the head's safetensors file, or tiny


@dataclass(frozen=True)
class LoraFile:
    """One LoRA file as the actors load it (the config's model.loras and model.adapters entries, resolved)."""

    source: str  # a local .safetensors file, or a hub repository id (then weight_name names its file)
    weight_name: str | None
    weight: float
    sha256: str  # of the file's bytes: part of the job identity, the worker-reuse key and the compile key


@dataclass(frozen=True)
class WorkerSettings:
    """Everything an actor needs to load its models and turn rows into output rows."""

    model: str
    revision: str | None
    variant: str | None
    scheduler: str | None
    dtype: str
    clip_model: str | None
    scores: ScoreModels
    mode: Literal["generate", "reconstruct"]
    batch_size: int
    job_seed: int
    defaults: GenerationDefaults
    encoding: ImageEncoding
    fast: FastPaths
    output_dir: str
    job_key: str  # hash of everything that decides the output; stamped on every shard file
    num_threads: int | None  # torch threads; None: torch's own choice
    run_token: str | None  # the run's token in OUTPUT/.genbatch.lock (workers.io.fence); None: no lock
    images_per_worker: int | None  # images this run generates / workers: whether compiling pays; None: unknown
    loras: tuple[LoraFile, ...]  # model.loras: fused into the weights at load (workers.pipeline.adapters)
    adapters: tuple[tuple[str, tuple[LoraFile, ...]], ...]  # model.adapters: (name, files), chosen per row


@dataclass(frozen=True)
class RescoreSettings:
    """What a rescoring actor (workers.rescoring) needs: which score columns to (re)compute, with what, where."""

    scores: ScoreModels  # the run's new `scores` section
    recompute: tuple[str, ...]  # columns (columns.SCORES) computed afresh; the section's others are kept as they are
    batch_size: int  # images per scorer call
    clip_preprocess: Literal["device", "processor", "auto"]  # performance.clip_preprocess
    output_dir: str
    old_key: str  # the job key on the shards to rescore
    new_key: str  # the key they get: that of the job with the new scores
    num_threads: int | None
    run_token: str | None  # as in WorkerSettings (workers.io.fence)


@dataclass(frozen=True)
class RunBinding:
    """The run a shard belongs to, when one actor serves several runs of a sweep (jobs.run.sweep): where and
    for which job it writes, and the settings that change per run without loading anything again.
    Each field replaces the WorkerSettings field of the same name for that shard."""

    output_dir: str
    job_key: str
    run_token: str | None
    job_seed: int
    scheduler: str | None  # schedulers are built from the model's own scheduler config: cheap
    defaults: GenerationDefaults

    @classmethod
    def of(cls, settings: WorkerSettings) -> RunBinding:
        """The binding of the run whose actors have `settings`."""
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})

    def applied_to(self, settings: WorkerSettings, **others: Any) -> WorkerSettings:
        """`settings` with this run's fields in place of their own (and `others` changed too)."""
        return replace(settings, **{f.name: getattr(self, f.name) for f in fields(self)}, **others)


@dataclass(frozen=True)
class ShardTask:
    """Rows [start, stop) of one manifest file; `first_row` is the manifest-wide index of `start`."""

    index: int
    file: str
    start: int
    stop: int
    first_row: int
    has_id_column: bool
    retry_failed: bool = False  # rerun only the rows whose status is error in the existing file
    images_per_row: int = 1  # generation.images_per_prompt: output rows per manifest row
    failed_before: int = 0  # with retry_failed: the existing file's error rows, which this task regenerates
    run: RunBinding | None = None  # a sweep's run; None: the actor's own settings say where and how

    @property
    def rows(self) -> int:
        """Manifest rows."""
        return self.stop - self.start

    @property
    def images(self) -> int:
        """Output rows (images): what the shard file, progress and counts are in."""
        return self.rows * self.images_per_row

    @property
    def images_to_generate(self) -> int:
        """What running this task generates: every image, or only the failed ones of a retry."""
        return self.failed_before if self.retry_failed else self.images


@dataclass(frozen=True)
class RescoreTask:
    """One complete shard of a run to rescore (workers.rescoring). The dispatcher (jobs.pool.dispatch) queues and
    retries it as it does a ShardTask, so it has the few fields the dispatcher reads of one."""

    index: int
    images: int  # the shard file's rows: one per image

    @property
    def run(self) -> None:
        """A rescore serves one run: the actor's settings say where it writes (ShardTask.run in a sweep)."""
        return None

    @property
    def images_to_generate(self) -> int:
        """What the dispatcher counts for a shard that gives up: nothing is generated, every image is scored."""
        return self.images


@dataclass(frozen=True)
class WorkerInfo:
    """What an actor reports once its models are loaded."""

    name: str
    device: str
    dtype: str
    scheduler: str
    load_seconds: float
    pid: int
    node_id: str
    node_ip: str = ""
    versions: dict | None = None  # library versions that decide pixels (workers.io.provenance)
    device_name: str = ""  # `cpu`, or the GPU model and CUDA version
    compile: bool = False  # performance.compile as resolved on this actor
    compile_reason: str = ""  # why compile is on or off, in words
    compile_cache_hit: bool | None = None  # compile on: whether compiled kernels were loaded from compile_cache
    # performance.quantize as applied: `int8: 40 of 50 Linear layers` (workers.pipeline.quantize)
    quantize: str = "none"


@dataclass(frozen=True)
class StartupTimings:
    """How soon an actor made its first images. Known only after its first micro-batch, after `ready()`
    reported its WorkerInfo, so each ShardResult carries it."""

    pid: int  # with the worker's name, tells a replacement actor from the one it replaced
    first_batch_seconds: float  # the first micro-batch alone; with compile on, that includes compiling
    first_image_seconds: float  # from the actor's start (its imports included) to the end of its first micro-batch


@dataclass(frozen=True)
class BatchProgress:
    """Yielded by an actor after each micro-batch, so the driver can show live progress."""

    shard: int
    images: int
    failed: int
    finished_at: float = 0.0  # wall clock (time.time()) in the actor when the micro-batch was done


@dataclass(frozen=True)
class ShardResult:
    """Yielded last by an actor once its shard file is written."""

    shard: int
    images: int  # the shard file's rows: one per image
    ok: int
    failed: int
    file: str
    worker: str
    seconds: float
    generated: int = 0  # images this run generated: fewer than `rows` when only failed rows were retried
    startup: StartupTimings | None = None  # the actor's; None from actors that do not measure it (stubs)
    output_dir: str = ""  # the run's output folder: which run of a sweep the shard belongs to


@dataclass(frozen=True)
class RescoreResult(ShardResult):
    """Yielded by a rescoring actor once its shard file is rewritten: a ShardResult (`images`, `ok` and `failed`
    are the file's, unchanged by rescoring), so the dispatcher takes it as a shard's outcome."""

    scored: int = 0  # images scored (rows with an image)
    skipped: bool = False  # the shard already had the new key (an earlier, interrupted rescore did it)
