"""One micro-batch on an actor's models: rows that share their settings in, each row's output out.

Rows are keyed by their position in the shard from start to finish, so no step re-maps them.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from workers.errors import InitImageError, describe
from workers.io.rows import RowSpec
from workers.models import families
from workers.pipeline import generation
from workers.pipeline.output import RowOutput

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
        self.step_cache = step_cache  # workers.pipeline.step_cache.StepCache; None: performance.cache is none
        self.adapters = adapters  # workers.pipeline.adapters.AdapterSwitch for model.adapters; None: none
        self.scorer = scorer  # None: no CLIP scores
        self.scorers = list(scorers)  # the `scores` section's (workers.scoring.scorers), each filling its own column
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

        Every step keys rows by their position in the shard, as `batch` does. A row that fails alone (a bad init
        image, a non-finite image) gets its error here; an exception means the whole batch failed. Each row's
        duration is its share of the batch's time."""
        started = time.perf_counter()
        outputs = {position: RowOutput() for position in batch}
        # 1. Read init images (image-to-image, reconstruct); a bad one fails only its row.
        init_images = self._init_images(batch, outputs)
        runnable = [position for position in batch if outputs[position].error is None]
        if not runnable:
            return _timed(BatchResult(outputs, []), started)
        images_in = None if init_images is None else [init_images[position] for position in runnable]

        # 2. Denoise and decode (or, in reconstruct mode, encode and decode), on the device: the images of the
        # runnable rows, in their order.
        if self.mode == "reconstruct":
            assert images_in is not None  # jobs.inputs.manifest refuses reconstruct rows without an init image
            latents = families.for_pipeline(self.pipeline).latents
            images, means, stds = generation.reconstruct(self.pipeline.vae, images_in, latents)
        else:
            images = self._generate([batch[position] for position in runnable], images_in)
            if self.step_cache is not None:  # the hook decides for the whole micro-batch: each row gets its count
                for position in runnable:
                    outputs[position].cache_skipped_steps = self.step_cache.skipped

        # 3. Check finite: an image with NaN or Inf fails its row, not as a black PNG.
        finite = dict(zip(runnable, generation.finite_rows(images)))
        all_pixels = generation.to_uint8(images)  # the exact pixels that are written, scored and measured
        pixels = dict(zip(runnable, all_pixels))
        kept = [position for position in runnable if finite[position]]
        for position in runnable:
            if not finite[position]:
                outputs[position].error = NON_FINITE

        # 4. Reconstruction errors: how far the round trip moved each image.
        if images_in is not None and self.mode == "reconstruct":
            metrics = dict(zip(runnable, generation.reconstruction_metrics(images_in, all_pixels, means, stds)))
            for position in kept:
                outputs[position].reconstruction = metrics[position]

        # 5. Score with CLIP against the prompts, and with the other scorers (PickScore, aesthetic).
        self._score(batch, pixels, kept, outputs)

        # 6. Hand the pixels to the encoder threads; run_shard collects the bytes later.
        host_pixels = dict(zip(runnable, all_pixels.cpu().numpy()))
        encoding = [(position, self.encoder.submit(host_pixels[position])) for position in kept]
        return _timed(BatchResult(outputs, encoding), started)

    def _init_images(self, batch: dict[int, RowSpec], outputs: dict[int, RowOutput]) -> dict[int, Any] | None:
        """Each row's init image (PIL), by position; None for rows without (whether a row has one is part of the
        batch key, so all rows have one or none do). A row whose image cannot be read gets its error."""
        from workers.pipeline.init_images import load_init_image

        if next(iter(batch.values())).init_image is None:
            return None
        init_images = {}
        for position, row in batch.items():
            assert row.init_image is not None
            try:
                init_images[position] = load_init_image(row.init_image, row.width, row.height, self.init_image_policy)
            except InitImageError as error:
                outputs[position].error = str(error)
        return init_images

    def _generate(self, rows: list[RowSpec], init_images: list | None):
        """Denoise and decode `rows` with their adapter (shared by the batch: it is in the batch key)."""
        if self.adapters is not None:
            self.adapters.use(rows[0].adapter)
        pipeline = self.pipeline if init_images is None else self._image_to_image()
        return generation.generate(
            pipeline, rows, pad_to=self.pad_to, init_images=init_images, step_cache=self.step_cache
        )

    def _score(
        self, batch: dict[int, RowSpec], pixels: dict[int, Any], kept: list[int], outputs: dict[int, RowOutput]
    ) -> None:
        """Fill the score columns of the `kept` rows; a score that needs a prompt skips rows without one
        (reconstruct rows may have none)."""
        prompted = [position for position in kept if batch[position].prompt]
        if self.scorer is not None and prompted:
            prompts = [batch[position].prompt for position in prompted]
            cosines = self.scorer.cosines(_stacked(pixels, prompted), prompts)
            truncated = self.scorer.truncated(prompts)
            for position, cosine, cut in zip(prompted, cosines, truncated):
                outputs[position].cosine, outputs[position].truncated = float(cosine), bool(cut)
        for extra in self.scorers:
            targets = prompted if extra.needs_prompt else kept
            if not targets:
                continue
            values = extra.score(_stacked(pixels, targets), [batch[position].prompt for position in targets])
            for position, value in zip(targets, values):
                outputs[position].scores[extra.column] = float(value)

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


def _stacked(pixels: dict[int, Any], positions: list[int]):
    """The images of the rows at `positions`, as one (N, H, W, 3) tensor."""
    import torch

    return torch.stack([pixels[position] for position in positions])


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
