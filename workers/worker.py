"""The Ray actor: holds a whole text-to-image pipeline and a CLIP model, and turns shards into files."""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import Future
from dataclasses import replace
from datetime import datetime, timezone

from workers.errors import WorkerLoadError, describe
from workers.io import columns as C
from workers.io.fence import check_fence
from workers.io.provenance import device_description, pixel_versions
from workers.io.rows import RowSpec, expand_images, read_slice, resolve_rows, row_ids
from workers.io.shard_stats import ShardStats, write_shard_stats
from workers.io.writer import ShardFooter, write_shard
from workers.models import families
from workers.models.loading import quiet_libraries
from workers.pipeline import quantize
from workers.pipeline.batch import BatchRunner, collect_encoded, micro_batches
from workers.pipeline.output import RowOutput, RowsToRun, RunLabels, build_output_table
from workers.scoring.scorers import score_columns
from workers.tasks import (
    BatchProgress,
    RunBinding,
    ShardResult,
    ShardTask,
    StartupTimings,
    WorkerInfo,
    WorkerSettings,
)

logger = logging.getLogger(__name__)

# Micro-batches whose images may still be encoding while the next one generates.
MAX_BATCHES_ENCODING = 2


class GenerationWorker:
    """One per actor. Heavy libraries are imported here, not in the driver."""

    def __init__(self, settings: WorkerSettings, index: int):
        self.created = time.perf_counter()  # first_image_seconds counts from here
        quiet_libraries()  # one actor's library chatter, times the actors, would flood the driver's log
        self.settings = settings
        self.index = index
        self.load_error: str | None = None
        self.startup: StartupTimings | None = None  # set by the first micro-batch
        self.save_compiled_to: str | None = None  # compile_cache file to fill after the first micro-batch
        try:
            self._load()
        except Exception as error:
            self.load_error = describe(error)
            logger.error("worker-%d could not load its models: %s", index, self.load_error)
            logger.debug("traceback", exc_info=True)

    def _load(self) -> None:
        """Load the models; each step acts on what the steps before it made."""
        import torch

        from workers.models.loading import load_pipeline, pick_device, pick_dtype

        started = time.perf_counter()
        settings = self.settings
        # 1. Device and dtype; a quantize option the device cannot run fails before the weights are read.
        if settings.num_threads:
            torch.set_num_threads(min(settings.num_threads, os.cpu_count() or 1))
        self.device = pick_device()
        dtype = pick_dtype(settings.dtype, self.device)
        quantize.check_device(settings.fast.quantize, self.device, dtype)
        # 2. The pipeline with the model's own scheduler, kept: any other is built from its config (`_use_scheduler`).
        self.pipeline = load_pipeline(settings.model, settings.revision, self.device, dtype, settings.variant)
        self.family = families.for_pipeline(self.pipeline)
        self.model_scheduler = self.pipeline.scheduler
        self.scheduler_name: str | None = None  # the scheduler the pipeline has now; None: the model's own
        self._check_scheduler(settings.scheduler)  # before compiling: a sweep's bad one would waste it
        # 3. LoRAs, the step cache, then compile and the other fast paths (workers.pipeline.fastpaths).
        adapters, applied, cache_hit = self._speed_up(dtype)
        # 4. CLIP and the other scorers, and the image encoder.
        self._load_scorers()
        self.encoder = self._image_encoder()
        # 5. The batch runner, with the run's scheduler.
        self.batch_runner = BatchRunner(
            self.pipeline,
            self.scorer,
            self.encoder,
            mode=settings.mode,
            pad_to=settings.batch_size if self.compile.on else None,  # a compiled model sees one batch size
            init_image_policy=settings.defaults.init_image_policy,
            scorers=self.scorers,
            step_cache=self.step_cache,
            adapters=adapters,
        )
        self._use_scheduler(settings.scheduler)
        # 6. What the rows and the driver are told about this worker.
        self.labels = RunLabels(
            model=settings.model,
            clip_model=settings.clip_model,
            scheduler=self._scheduler_label(settings.scheduler),
            worker=f"worker-{self.index}@{socket.gethostname()}",
        )
        self.info = self._describe(dtype, applied, cache_hit, load_seconds=time.perf_counter() - started)
        logger.info(
            "%s ready on %s in %.1fs (pid %d)", self.info.name, self.device, self.info.load_seconds, os.getpid()
        )

    def _speed_up(self, dtype):
        """LoRAs first: quantizing and compiling act on the weights with the LoRAs fused in (and adapters on);
        then the step cache's hooks, on the final, uncompiled blocks; then compile and the other fast paths.
        The AdapterSwitch (or None), the fast paths applied, and whether compiled kernels were loaded."""
        from workers.pipeline.fastpaths import apply_fast_paths, choose_compile

        settings = self.settings
        # Whether to compile is decided here, where the device and the model's family are known.
        self.compile = choose_compile(settings.fast.compile, self.device, settings.images_per_worker, self.family)
        adapters = self._load_loras()
        self.step_cache = self._step_cache()
        cache_hit = self._prepare_compile(dtype) if self.compile.on else None
        fast = replace(settings.fast, compile=self.compile.setting)
        applied = apply_fast_paths(self.pipeline, fast, self.device, settings.batch_size, settings.defaults)
        turned_on = ", ".join(applied) or "none"
        logger.info("worker-%d fast paths: %s; compile %s", self.index, turned_on, self.compile.reason)
        return adapters, applied, cache_hit

    def _load_scorers(self) -> None:
        """The CLIP scorer (None without clip.model) and the `scores` section's; a scorer on the same CLIP
        model shares it (one copy of the weights)."""
        from workers.models.loading import load_clip
        from workers.scoring.clip import ClipScorer
        from workers.scoring.scorers import build_scorers

        settings = self.settings
        preprocess = settings.fast.clip_preprocess
        on_device = preprocess == "device" or (preprocess == "auto" and self.device.type == "cuda")
        self.scorer = None
        clip = None
        if settings.clip_model is not None:
            model, processor = load_clip(settings.clip_model, self.device)
            self.scorer = ClipScorer(model, processor, self.device, on_device=on_device)
            clip = (settings.clip_model, model, processor)
        self.scorers = build_scorers(settings.scores, self.device, clip, on_device)

    def _image_encoder(self):
        from workers.pipeline.images import ImageEncoder

        threads = self.settings.fast.writer_threads
        if threads == "auto":  # on CPU actors the model already uses every core the actor has
            threads = 2 if self.device.type == "cuda" else 0
        return ImageEncoder(self.settings.encoding, int(threads))

    def _describe(self, dtype, applied: list[str], cache_hit: bool | None, load_seconds: float) -> WorkerInfo:
        quantized = next((name.removeprefix("quantize ") for name in applied if name.startswith("quantize ")), "none")
        return WorkerInfo(
            name=self.labels.worker,
            device=str(self.device),
            dtype=str(dtype).removeprefix("torch."),
            scheduler=self.labels.scheduler,
            load_seconds=load_seconds,
            pid=os.getpid(),
            node_id=_node_id(),
            node_ip=_node_ip(),
            versions=pixel_versions(),
            device_name=device_description(self.device),
            compile=self.compile.on,
            compile_reason=self.compile.reason,
            compile_cache_hit=cache_hit,
            quantize=quantized,
        )

    def _step_cache(self):
        """performance.cache's hook on the denoiser (workers.pipeline.step_cache); None when it is none. Refuses, as
        the driver
        does where it knows the family, an option the family's hooks do not support."""
        from workers.pipeline.step_cache import CacheSettings, StepCache

        fast = self.settings.fast
        for key, problem in (
            ("cache", self.family.cache_problem(fast.cache)),
            ("compile", self.family.compile_problem(fast.compile)),
        ):
            if problem:
                raise WorkerLoadError(f"performance.{key}: {problem}")
        if fast.cache == "none":
            return None
        denoiser = getattr(self.pipeline, self.family.denoiser)
        return StepCache(denoiser, CacheSettings.of(fast), self.family.mag_ratios)

    def _load_loras(self):
        """Fuse model.loras into the weights and load model.adapters; the AdapterSwitch, or None without adapters."""
        from workers.pipeline.adapters import AdapterSwitch, fuse_loras

        settings = self.settings
        for key, present in (("model.loras", settings.loras), ("model.adapters", settings.adapters)):
            problem = self.family.lora_problem(key) if present else None
            if problem:
                raise WorkerLoadError(problem)
        fuse_loras(self.pipeline, settings.loras)
        if not settings.adapters:
            return None
        return AdapterSwitch(self.pipeline, settings.adapters, compiled=self.compile.on)

    def _prepare_compile(self, dtype) -> bool:
        """Before anything is compiled: load the kernels an earlier actor compiled for the same key, or plan to
        save this actor's after its first micro-batch. True when kernels were loaded."""
        import torch

        from workers.pipeline.compile_cache import cache_file, compile_key, load_artifacts

        fast = self.settings.fast
        if fast.compile == "auto":  # chosen for the user: should the compiler fail, the model runs uncompiled
            torch._dynamo.config.suppress_errors = True
        key = compile_key(self.settings, self.device, dtype, self.family, regional=self.compile.regional)
        location = cache_file(fast.compile_cache, key)
        loaded = load_artifacts(location)
        self.save_compiled_to = None if loaded else location
        return loaded

    def ready(self) -> WorkerInfo:
        """The worker's description once its models are loaded; raises if they could not be."""
        if self.load_error is not None:
            raise WorkerLoadError(self.load_error)
        return self.info

    def rebind(self, run: RunBinding, batch_size: int) -> WorkerInfo:
        """Serve a new job with the same models (jobs.pool.worker_reuse): where and for which job it writes, its
        seed, scheduler and generation defaults change, as they do between the runs of a sweep, and so may
        the batch size of an actor that nothing was shaped for (jobs.pool.worker_reuse.key_of)."""
        self.settings = run.applied_to(self.settings, batch_size=batch_size)
        self._use_scheduler(self.settings.scheduler)
        self.info = replace(self.info, scheduler=self._scheduler_label(self.settings.scheduler))
        return self.ready()

    def _use_scheduler(self, name: str | None) -> None:
        """Give the pipeline the named scheduler (None: the model's own), built as a model load would build it."""
        if name == self.scheduler_name:
            return
        from workers.models.schedulers import build_scheduler

        self._check_scheduler(name)
        scheduler = self.model_scheduler if name is None else build_scheduler(name, self.model_scheduler.config)
        self.batch_runner.set_scheduler(scheduler)
        self.scheduler_name = name

    def _check_scheduler(self, name: str | None) -> None:
        """Refuse a scheduler the model's family cannot run (the driver refuses it where it knows the family)."""
        problem = self.family.scheduler_problem(name)
        if problem:
            raise WorkerLoadError(f"model.scheduler: {problem}")

    def _scheduler_label(self, name: str | None) -> str:
        return name or type(self.model_scheduler).__name__

    def _bind(self, task: ShardTask) -> tuple[WorkerSettings, RunLabels]:
        """This actor's settings and row labels, with those of the task's run (a sweep's, or a reused actor's
        new job) in place of its own: its scheduler and init-image policy too."""
        settings = self.settings if task.run is None else task.run.applied_to(self.settings)
        self._use_scheduler(settings.scheduler)
        self.batch_runner.init_image_policy = settings.defaults.init_image_policy
        return settings, replace(self.labels, scheduler=self._scheduler_label(settings.scheduler))

    def run_shard(self, task: ShardTask) -> Iterator[BatchProgress | ShardResult]:
        """Process one shard; yields progress after each micro-batch, then the ShardResult."""
        started = time.perf_counter()
        settings, labels = self._bind(task)
        # 1. Read the shard's rows and resolve their settings; with --retry-failed, only failed rows run.
        table = read_slice(task.file, task.start, task.stop)
        ids = row_ids(table, task)
        rows = resolve_rows(table, ids, settings.defaults, settings.job_seed)
        if task.images_per_row > 1:  # one output row per image, in manifest order
            table, ids, rows = expand_images(table, ids, rows, task.images_per_row)
        todo = RowsToRun.of(settings.output_dir, task, len(rows))
        # 2. Run each micro-batch (steps 1-6 in workers/pipeline/batch.py); encoding runs on CPU threads meanwhile.
        outputs = yield from self._run_batches(task, rows, todo.positions, settings.batch_size)
        # 3. The shard's table: the new rows, in place of the failed ones on a retry.
        fresh = build_output_table(
            table.take(todo.positions),
            ids.take(todo.positions),
            [rows[p] for p in todo.positions],
            [outputs[p] for p in todo.positions],
            labels,
            reconstruct=settings.mode == "reconstruct",
            scores=score_columns(settings.scores),
            cache=self.step_cache is not None,
        )
        # 4. Write the shard file and its stats; only its path and counts go back to the driver.
        shard = todo.merged(fresh)
        yield self._write(shard, task, settings, labels, rows=len(rows), generated=len(todo.positions), started=started)

    def _run_batches(
        self, task: ShardTask, rows: list[RowSpec], positions: list[int], batch_size: int
    ) -> Generator[BatchProgress, None, dict[int, RowOutput]]:
        """Run the rows at `positions` in micro-batches, yielding progress after each; each row's output by position."""
        outputs: dict[int, RowOutput] = {}
        encoding: deque[list[tuple[int, Future]]] = deque()
        for batch in micro_batches(rows, positions, batch_size):
            batch_started = time.perf_counter()
            result = self.batch_runner.run(batch)
            if self.startup is None:
                self._first_batch_done(time.perf_counter() - batch_started)
            outputs.update(result.outputs)
            encoding.append(result.encoding)
            while len(encoding) > MAX_BATCHES_ENCODING:  # bounded, so memory stays flat
                collect_encoded(encoding.popleft(), outputs)
            failed = sum(out.error is not None for out in result.outputs.values())
            yield BatchProgress(shard=task.index, images=len(batch), failed=failed, finished_at=time.time())
        while encoding:
            collect_encoded(encoding.popleft(), outputs)
        return outputs

    def _write(
        self,
        table,
        task: ShardTask,
        settings: WorkerSettings,
        labels: RunLabels,
        rows: int,
        generated: int,
        started: float,
    ) -> ShardResult:
        """Publish the shard file, then its stats file (both fenced by the run's lock), and say what was written."""
        failed = table.column(C.STATUS).to_pylist().count(C.STATUS_ERROR)
        footer = ShardFooter(
            settings.job_key,
            task.index,
            rows,
            rows - failed,
            failed,
            versions=self.info.versions,
            device=self.info.device_name,
        )
        fence = functools.partial(check_fence, settings.output_dir, settings.run_token)
        path = write_shard(table, settings.output_dir, footer, before_publish=fence)
        seconds = time.perf_counter() - started
        stats = ShardStats(
            shard=task.index,
            rows=rows,
            ok=rows - failed,
            failed=failed,
            generated=generated,
            seconds=round(seconds, 6),  # rounded coarser, a short shard's rate would not match its time
            images_per_s=round(generated / seconds, 3) if seconds > 0 else 0.0,
            worker=labels.worker,
            node=self.info.node_id,
            node_ip=self.info.node_ip,
            pid=self.info.pid,
            finished_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            job_key=settings.job_key,
        )
        write_shard_stats(settings.output_dir, stats, before_publish=fence)
        return ShardResult(
            shard=task.index,
            images=rows,
            ok=rows - failed,
            failed=failed,
            file=path,
            worker=labels.worker,
            seconds=seconds,
            generated=generated,
            startup=self.startup,
            output_dir=settings.output_dir,
        )

    def _first_batch_done(self, seconds: float) -> None:
        """Record how soon this actor made images; then share what it compiled with the actors to come."""
        from workers.pipeline.compile_cache import save_artifacts

        self.startup = StartupTimings(
            pid=os.getpid(),
            first_batch_seconds=seconds,
            first_image_seconds=time.perf_counter() - self.created,
        )
        if self.compile.on:
            how = "with kernels from compile_cache" if self.info.compile_cache_hit else "compiling from scratch"
            logger.info("%s made its first micro-batch in %.1f s, %s", self.info.name, seconds, how)
        if self.save_compiled_to is not None:
            save_artifacts(self.save_compiled_to)
            self.save_compiled_to = None


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def _node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else ""
