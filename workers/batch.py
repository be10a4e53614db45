"""One micro-batch on an actor's models: rows that share their settings in, each row's output out.

Rows are keyed by their position in the shard from start to finish, so no step re-maps them.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from workers import families, generation
from workers.errors import InitImageError, describe
from workers.output import RowOutput
from workers.rows import RowSpec

logger = logging.getLogger(__name__)

NON_FINITE = "non-finite output: the image has NaN or Inf values"


def micro_batches(rows: list[RowSpec], positions: list[int], batch_size: int) -> list[dict[int, RowSpec]]:
    """The rows at `positions`, grouped by shared settings (in order of first appearance), cut to batch_size.

    Each micro-batch maps a row's position in the shard to the row."""
    groups: dict[tuple, list[int]] = {}
    for position in positions:
        groups.setdefault(rows[position].batch_key, []).append(position)
    return [
        {position: rows[position] for position in group[i : i + batch_size]}
        for group in groups.values()
        for i in range(0, len(group), batch_size)
    ]


@dataclass
class BatchResult:
    """What a micro-batch made: each row's output, and the encodings still running, by shard position."""

    outputs: dict[int, RowOutput]
    encoding: list[tuple[int, Future]]  # (position, future of (image bytes, sha256)) for the rows with an image


class BatchRunner:
    """Runs micro-batches through an actor's pipeline, CLIP scorer and image encoder."""

    def __init__(
        self,
        pipeline,
        scorer,
        encoder,
        mode: str,
        pad_to: int | None,
        init_image_policy: str,
        scorers=(),
        step_cache=None,
        adapters=None,
    ):
        self.pipeline = pipeline
        self.step_cache = step_cache  # workers.step_cache.StepCache; None: performance.cache is none
        self.adapters = adapters  # workers.adapters.AdapterSwitch for model.adapters; None: none
        self.scorer = scorer  # None: no CLIP scores
        self.scorers = list(scorers)  # the `scores` section's (workers.scorers), each filling its own column
        self.encoder = encoder
        self.mode = mode
        self.pad_to = pad_to
        self.init_image_policy = init_image_policy
        self._img2img: Any = None  # made on first use

    def set_scheduler(self, scheduler) -> None:
        """Denoise with `scheduler` from now on, in the image-to-image pipeline too (a sweep's runs differ in it)."""
        self.pipeline.scheduler = scheduler
        if self._img2img is not None:
            self._img2img.scheduler = scheduler

    def run(self, batch: dict[int, RowSpec]) -> BatchResult:
        """Run a micro-batch; if it raises, run its rows one by one so only the culprit fails."""
        try:
            return self(batch)
        except Exception as error:  # noqa: BLE001 - becomes row data, and is logged
            if len(batch) == 1:
                return _failed_row(batch, error)
            logger.warning("batch of %d rows failed (%s); retrying rows one by one", len(batch), error)
        result = BatchResult({}, [])
        for position, row in batch.items():
            try:
                one = self({position: row})
            except Exception as error:  # noqa: BLE001 - becomes row data, and is logged
                one = _failed_row({position: row}, error)
            result.outputs.update(one.outputs)
            result.encoding += one.encoding
        return result

    def __call__(self, batch: dict[int, RowSpec]) -> BatchResult:
        """Generate, check, measure and score a micro-batch, and start encoding its images.

        A row that fails alone (a bad init image, a non-finite image) gets its error here; an exception
        means the whole batch failed. Each row's duration is its share of the batch's time."""
        from workers.init_images import load_init_image

        started = time.perf_counter()
        outputs = {position: RowOutput() for position in batch}
        # 1. Read init images (image-to-image, reconstruct); a bad one fails only its row.
        init_images = None
        if next(iter(batch.values())).init_image is not None:  # shared by the batch: it is in the batch key
            init_images = {}
            for position, row in batch.items():
                assert row.init_image is not None  # whether a row has one is part of the batch key
                try:
                    init_images[position] = load_init_image(
                        row.init_image, row.width, row.height, self.init_image_policy
                    )
                except InitImageError as error:
                    outputs[position].error = str(error)
        # From here on, row j of every tensor is the row at runnable[j].
        runnable = [position for position in batch if outputs[position].error is None]
        if not runnable:
            return _timed(BatchResult(outputs, []), started)
        rows = [batch[position] for position in runnable]
        images_in = None if init_images is None else [init_images[position] for position in runnable]

        # 2. Denoise and decode (or, in reconstruct mode, encode and decode), on the device, with the rows'
        # adapter (shared by the batch: it is in the batch key).
        if self.adapters is not None and self.mode != "reconstruct":
            self.adapters.use(rows[0].adapter)
        if self.mode == "reconstruct":
            latents = families.for_pipeline(self.pipeline).latents
            images, means, stds = generation.reconstruct(self.pipeline.vae, images_in, latents)
        else:
            pipeline = self.pipeline if images_in is None else self._image_to_image()
            images = generation.generate(
                pipeline, rows, pad_to=self.pad_to, init_images=images_in, step_cache=self.step_cache
            )
            if self.step_cache is not None:  # the hook decides for the whole micro-batch: each row gets its count
                for position in runnable:
                    outputs[position].cache_skipped_steps = self.step_cache.skipped

        # 3. Check finite: an image with NaN or Inf fails its row, not as a black PNG.
        finite = generation.finite_rows(images)
        pixels = generation.to_uint8(images)  # the exact pixels that are written, scored and measured
        kept = [j for j, ok in enumerate(finite) if ok]
        for j, ok in enumerate(finite):
            if not ok:
                outputs[runnable[j]].error = NON_FINITE

        # 4. Reconstruction errors: how far the round trip moved each image.
        if self.mode == "reconstruct":
            metrics = generation.reconstruction_metrics(images_in, pixels, means, stds)
            for j in kept:
                outputs[runnable[j]].reconstruction = metrics[j]

        # 5. Score with CLIP against the prompts.
        scored = [j for j in kept if rows[j].prompt]  # reconstruct rows may have no prompt
        if self.scorer is not None and scored:
            prompts = [rows[j].prompt for j in scored]
            cosines = self.scorer.cosines(pixels[scored], prompts)
            truncated = self.scorer.truncated(prompts)
            for k, j in enumerate(scored):
                output = outputs[runnable[j]]
                output.cosine, output.truncated = float(cosines[k]), bool(truncated[k])
        # 5b. The other scores (PickScore, aesthetic); one that needs a prompt skips rows without one.
        for extra in self.scorers:
            targets = scored if extra.needs_prompt else kept
            if not targets:
                continue
            values = extra.score(pixels[targets], [rows[j].prompt for j in targets])
            for k, j in enumerate(targets):
                outputs[runnable[j]].scores[extra.column] = float(values[k])

        # 6. Hand the pixels to the encoder threads; run_shard collects the bytes later.
        host_pixels = pixels.cpu().numpy()
        encoding = [(runnable[j], self.encoder.submit(host_pixels[j])) for j in kept]
        return _timed(BatchResult(outputs, encoding), started)

    def _image_to_image(self):
        """The image-to-image pipeline sharing the actor's modules (no second copy of the weights)."""
        if self._img2img is None:
            import diffusers

            family = families.for_pipeline(self.pipeline)
            if family.image_to_image is None:
                raise ValueError(f"{family.title} has no image-to-image pipeline: rows with an init_image cannot run")
            self._img2img = getattr(diffusers, family.image_to_image).from_pipe(self.pipeline)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img


def collect_encoded(encoding: list[tuple[int, Future]], outputs: dict[int, RowOutput]) -> None:
    """Wait for a batch's encodings and put the bytes (or the error) into its rows' outputs."""
    for position, future in encoding:
        try:
            outputs[position].image_bytes, outputs[position].sha256 = future.result()
        except Exception as error:
            logger.exception("encoding row at %d failed", position)
            output = outputs[position]
            output.error, output.cosine, output.truncated = describe(error), None, None
            output.scores = {}


def _timed(result: BatchResult, started: float) -> BatchResult:
    """`result`, each row's duration set to its share of the batch's time since `started`."""
    per_row = (time.perf_counter() - started) / len(result.outputs)
    for output in result.outputs.values():
        output.duration_s = per_row
    return result


def _failed_row(batch: dict[int, RowSpec], error: Exception) -> BatchResult:
    """A lone row whose run raised: its error, logged with the traceback (call it inside `except`)."""
    [(position, row)] = batch.items()
    logger.exception("row %r failed", row.id)
    return BatchResult({position: RowOutput(error=describe(error))}, [])
