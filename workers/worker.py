"""The Ray actor: holds a whole text-to-image pipeline and a CLIP model, and turns shards into files."""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import datetime, timezone

from workers import columns as C
from workers.fence import check_fence
from workers.output import RowOutput, RunLabels, build_output_table, failed_positions, merge_retried, read_previous
from workers.provenance import device_description, pixel_versions
from workers.rows import RowSpec, expand_images, read_slice, resolve_rows, row_ids
from workers.shard_stats import ShardStats, write_shard_stats
from workers.tasks import BatchProgress, ShardResult, ShardTask, WorkerInfo, WorkerSettings
from workers.writer import ShardFooter, write_shard

logger = logging.getLogger(__name__)

NON_FINITE = "non-finite output: the image has NaN or Inf values"
# Micro-batches whose images may still be encoding while the next one generates.
MAX_BATCHES_ENCODING = 2


def micro_batches(rows: list[RowSpec], batch_size: int) -> list[list[int]]:
    """Row positions grouped by shared settings (in order of first appearance), cut to batch_size."""
    groups: dict[tuple, list[int]] = {}
    for position, row in enumerate(rows):
        groups.setdefault(row.batch_key, []).append(position)
    return [
        positions[i : i + batch_size] for positions in groups.values() for i in range(0, len(positions), batch_size)
    ]


class WorkerLoadError(RuntimeError):
    """The actor could not load its pipeline or CLIP model."""


class GenerationWorker:
    """One per actor. Heavy libraries are imported here, not in the driver."""

    def __init__(self, settings: WorkerSettings, index: int):
        _quiet_libraries()
        self.settings = settings
        self.index = index
        self.load_error: str | None = None
        try:
            self._load()
        except Exception as error:  # noqa: BLE001 - reported by ready(), as one line, to the driver
            self.load_error = f"{type(error).__name__}: {' '.join(str(error).split())}"
            logger.error("worker-%d could not load its models: %s", index, self.load_error)
            logger.debug("traceback", exc_info=True)

    def _load(self) -> None:
        import torch

        from workers.clip import ClipScorer
        from workers.fastpaths import apply_fast_paths
        from workers.images import ImageEncoder
        from workers.loading import load_clip, load_pipeline, pick_device, pick_dtype

        started = time.perf_counter()
        settings = self.settings
        if settings.num_threads:
            torch.set_num_threads(min(settings.num_threads, os.cpu_count() or 1))
        self.device = pick_device()
        dtype = pick_dtype(settings.dtype, self.device)
        self.pipeline = load_pipeline(
            settings.model, settings.revision, settings.scheduler, self.device, dtype, settings.variant
        )
        fast = settings.fast
        self.fast_paths = apply_fast_paths(self.pipeline, fast, self.device, settings.batch_size, settings.defaults)
        self.pad_to = settings.batch_size if fast.compile else None
        self._img2img = None
        self.scorer = None
        if settings.clip_model is not None:
            on_device = fast.clip_preprocess == "device" or (
                fast.clip_preprocess == "auto" and self.device.type == "cuda"
            )
            self.scorer = ClipScorer(*load_clip(settings.clip_model, self.device), self.device, on_device=on_device)
        threads = fast.writer_threads
        if threads == "auto":  # on CPU actors the model already uses every core the actor has
            threads = 2 if self.device.type == "cuda" else 0
        self.encoder = ImageEncoder(settings.encoding, threads)
        self.labels = RunLabels(
            model=settings.model,
            clip_model=settings.clip_model,
            scheduler=settings.scheduler or type(self.pipeline.scheduler).__name__,
            worker=f"worker-{self.index}@{socket.gethostname()}",
        )
        self.info = WorkerInfo(
            name=self.labels.worker,
            device=str(self.device),
            dtype=str(dtype).removeprefix("torch."),
            scheduler=self.labels.scheduler,
            load_seconds=time.perf_counter() - started,
            pid=os.getpid(),
            node_id=_node_id(),
            node_ip=_node_ip(),
            versions=pixel_versions(),
            device_name=device_description(self.device),
        )
        logger.info(
            "%s ready on %s in %.1fs (pid %d)", self.info.name, self.device, self.info.load_seconds, os.getpid()
        )

    def ready(self) -> WorkerInfo:
        """The worker's description once its models are loaded; raises if they could not be."""
        if self.load_error is not None:
            raise WorkerLoadError(self.load_error)
        return self.info

    def run_shard(self, task: ShardTask) -> Iterator[BatchProgress | ShardResult]:
        """Process one shard; yields progress after each micro-batch, then the ShardResult."""
        started = time.perf_counter()
        # 1. Read the shard's rows and resolve their settings.
        table = read_slice(task.file, task.start, task.stop)
        ids = row_ids(table, task)
        rows = resolve_rows(table, ids, self.settings.defaults, self.settings.job_seed)
        if task.images_per_row > 1:  # one output row per image, in manifest order
            table, ids, rows = expand_images(table, ids, rows, task.images_per_row)
        previous = read_previous(self.settings.output_dir, task) if task.retry_failed else None
        todo = failed_positions(previous) if previous is not None else list(range(len(rows)))
        # 2. Generate and score each micro-batch; encoding runs on CPU threads meanwhile.
        outputs: dict[int, RowOutput] = {}
        encoding: deque[list[tuple[int, Future]]] = deque()
        for batch in micro_batches([rows[p] for p in todo], self.settings.batch_size):
            positions = [todo[i] for i in batch]
            batch_outputs, futures = self._process_batch([rows[p] for p in positions])
            outputs.update(zip(positions, batch_outputs))
            encoding.append([(positions[i], future) for i, future in futures])
            while len(encoding) > MAX_BATCHES_ENCODING:  # bounded, so memory stays flat
                _collect(encoding.popleft(), outputs)
            failed = sum(out.error is not None for out in batch_outputs)
            yield BatchProgress(shard=task.index, rows=len(positions), failed=failed, finished_at=time.time())
        while encoding:
            _collect(encoding.popleft(), outputs)
        # 3. Write the shard file; only its path and counts go back to the driver.
        fresh = build_output_table(
            table.take(todo),
            ids.take(todo),
            [rows[p] for p in todo],
            [outputs[p] for p in todo],
            self.labels,
            reconstruct=self.settings.mode == "reconstruct",
        )
        output_table = fresh if previous is None else merge_retried(previous, fresh, todo)
        failed = output_table.column(C.STATUS).to_pylist().count(C.STATUS_ERROR)
        footer = ShardFooter(
            self.settings.job_key,
            task.index,
            len(rows),
            len(rows) - failed,
            failed,
            versions=self.info.versions,
            device=self.info.device_name,
        )
        fence = functools.partial(check_fence, self.settings.output_dir, self.settings.run_token)
        path = write_shard(output_table, self.settings.output_dir, footer, before_publish=fence)
        seconds = time.perf_counter() - started
        write_shard_stats(
            self.settings.output_dir,
            ShardStats(
                shard=task.index,
                rows=len(rows),
                ok=len(rows) - failed,
                failed=failed,
                generated=len(todo),
                seconds=round(seconds, 6),  # rounded coarser, a short shard's rate would not match its time
                images_per_s=round(len(todo) / seconds, 3) if seconds > 0 else 0.0,
                worker=self.labels.worker,
                node=self.info.node_id,
                node_ip=self.info.node_ip,
                pid=self.info.pid,
                finished_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                job_key=self.settings.job_key,
            ),
            before_publish=fence,
        )
        yield ShardResult(
            shard=task.index,
            rows=len(rows),
            ok=len(rows) - failed,
            failed=failed,
            file=path,
            worker=self.labels.worker,
            seconds=seconds,
            generated=len(todo),
        )

    def _process_batch(self, rows: list[RowSpec]) -> tuple[list[RowOutput], list[tuple[int, Future]]]:
        """Run a micro-batch; if it raises, run its rows one by one so only the culprit fails.

        Returns each row's output and, for the rows with an image, the future of its encoding."""
        try:
            return self._run_pipeline(rows)
        except Exception as error:  # noqa: BLE001 - becomes row data, and is logged
            if len(rows) > 1:
                logger.warning("batch of %d rows failed (%s); retrying rows one by one", len(rows), error)
                outputs, futures = [], []
                for i, row in enumerate(rows):
                    row_outputs, row_futures = self._process_batch([row])
                    outputs += row_outputs
                    futures += [(i, future) for _, future in row_futures]
                return outputs, futures
            logger.exception("row %r failed", rows[0].id)
            return [RowOutput(error=f"{type(error).__name__}: {error}")], []

    def _run_pipeline(self, rows: list[RowSpec]) -> tuple[list[RowOutput], list[tuple[int, Future]]]:
        started = time.perf_counter()
        outputs = [RowOutput() for _ in rows]
        # 1. Read init images (image-to-image, reconstruct); a bad one fails only its row.
        init = self._init_images(rows, outputs) if rows[0].init_image is not None else None
        runnable = [i for i in range(len(rows)) if outputs[i].error is None]
        futures = []
        if runnable:
            init_images = None if init is None else [init[i] for i in runnable]
            batch = [rows[i] for i in runnable]
            futures = self._generate_score_encode(batch, init_images, [outputs[i] for i in runnable])
            futures = [(runnable[j], future) for j, future in futures]
        per_row = (time.perf_counter() - started) / len(rows)
        for output in outputs:
            output.duration_s = per_row
        return outputs, futures

    def _init_images(self, rows: list[RowSpec], outputs: list[RowOutput]) -> dict[int, object]:
        from workers.init_images import InitImageError, load_init_image

        images = {}
        for i, row in enumerate(rows):
            try:
                images[i] = load_init_image(
                    row.init_image, row.width, row.height, self.settings.defaults.init_image_policy
                )
            except InitImageError as error:
                outputs[i].error = str(error)
        return images

    def _generate_score_encode(self, rows, images_in, outputs) -> list[tuple[int, Future]]:
        """Steps 2-4 for rows that can run; `images_in` are their init images (None: text-to-image)."""
        from workers.generation import finite_rows, generate, reconstruct, reconstruction_errors, to_uint8

        # 2. Denoise and decode (or, in reconstruct mode, encode and decode), on the device.
        if self.settings.mode == "reconstruct":
            images, means, stds = reconstruct(self.pipeline.vae, images_in)
        elif images_in is not None:
            images = generate(self._image_to_image(), rows, pad_to=self.pad_to, init_images=images_in)
        else:
            images = generate(self.pipeline, rows, pad_to=self.pad_to)
        finite = finite_rows(images)
        pixels = to_uint8(images)
        kept = [i for i, ok in enumerate(finite) if ok]
        for i, ok in enumerate(finite):
            if not ok:
                outputs[i].error = NON_FINITE
        if self.settings.mode == "reconstruct":
            import numpy as np
            import torch

            original = torch.from_numpy(np.stack([np.asarray(image) for image in images_in])).to(pixels.device)
            for i, (mse, psnr) in enumerate(reconstruction_errors(original, pixels)):
                if finite[i]:
                    outputs[i].reconstruction = {
                        C.RECON_MSE: mse,
                        C.RECON_PSNR: psnr,
                        C.LATENT_MEAN: means[i],
                        C.LATENT_STD: stds[i],
                    }
        # 3. Score against the prompts, from the exact pixels that are written.
        scored = [i for i in kept if rows[i].prompt]  # reconstruct rows may have no prompt
        if self.scorer is not None and scored:
            prompts = [rows[i].prompt for i in scored]
            cosines = self.scorer.cosines(pixels[scored], prompts)
            truncated = self.scorer.truncated(prompts)
            for j, i in enumerate(scored):
                outputs[i].cosine, outputs[i].truncated = float(cosines[j]), bool(truncated[j])
        # 4. Hand the pixels to the encoder threads.
        host_pixels = pixels.cpu().numpy()
        return [(i, self.encoder.submit(host_pixels[i])) for i in kept]

    def _image_to_image(self):
        """The image-to-image pipeline sharing this actor's modules (no second copy of the weights)."""
        if self._img2img is None:
            from diffusers import AutoPipelineForImage2Image

            self._img2img = AutoPipelineForImage2Image.from_pipe(self.pipeline)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img


def _collect(encoded: list[tuple[int, Future]], outputs: dict[int, RowOutput]) -> None:
    """Wait for a batch's encodings and put the bytes (or the error) into its rows' outputs."""
    for position, future in encoded:
        try:
            outputs[position].image_bytes, outputs[position].sha256 = future.result()
        except Exception as error:  # noqa: BLE001 - an image that cannot be encoded fails its row
            logger.exception("encoding row at %d failed", position)
            output = outputs[position]
            output.error, output.cosine, output.truncated = f"{type(error).__name__}: {error}", None, None


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def _node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address() if ray.is_initialized() else ""


def _quiet_libraries() -> None:
    """Library progress bars and advice would flood the driver's log with one line per actor."""
    from workers.loading import quiet_hub

    quiet_hub()
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
