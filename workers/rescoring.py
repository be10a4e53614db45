"""Rescoring a finished run's shards on an actor: new score columns from the stored images, nothing regenerated.

A rescored shard is the file a run with the new `scores` section would have written: the same rows, the
image bytes untouched, the score columns (columns.SCORES) last in their order, its footer carrying the new
job key. It is published whole, as every shard is (workers.io.writer), after the fence check, so a retried
or orphaned attempt cannot overwrite a later run's file.

The actor meets the driver's dispatcher (jobs.pool.dispatch) as a generation actor does: `ready()` gives a
WorkerInfo, and `run_shard(task)` streams the shard's outcome, here one RescoreResult.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workers.errors import ShardError, WorkerLoadError, describe
from workers.io import columns as C
from workers.io import layout, storage
from workers.io.fence import check_fence
from workers.io.writer import ShardFooter, read_footer, write_shard
from workers.models.loading import pick_device, quiet_hub
from workers.scoring.scorers import Scorer, build_scorers, score_columns
from workers.tasks import RescoreResult, RescoreSettings, RescoreTask, ScoreModels, WorkerInfo

logger = logging.getLogger(__name__)


class RescoreWorker:
    """One per actor: loads the scorers of the columns to recompute (each CLIP once) and rescores shards."""

    def __init__(self, settings: RescoreSettings, index: int):
        self.settings = settings
        self.index = index
        self.name = f"rescore-worker-{index}@{socket.gethostname()}"
        self.load_error: str | None = None
        try:
            self._load()
        except Exception as error:
            self.load_error = describe(error)
            logger.error("rescore worker-%d could not load its scorers: %s", index, self.load_error)
            logger.debug("traceback", exc_info=True)

    def _load(self) -> None:
        started = time.perf_counter()
        import torch

        quiet_hub()
        settings = self.settings
        if settings.num_threads:
            torch.set_num_threads(min(settings.num_threads, os.cpu_count() or 1))
        self.device = pick_device()
        on_device = settings.clip_preprocess == "device" or (
            settings.clip_preprocess == "auto" and self.device.type == "cuda"
        )
        self.scorers = build_scorers(only(settings.scores, settings.recompute), self.device, on_device=on_device)
        self.info = WorkerInfo(
            name=self.name,
            device=str(self.device),
            dtype="",  # scorers run in their checkpoints' own dtypes
            scheduler="",
            load_seconds=time.perf_counter() - started,
            pid=os.getpid(),  # the driver waits for this process to be gone before it lets go of the output lock
            node_id=_node_id(),
        )

    def ready(self) -> WorkerInfo:
        """The worker's description once its scorers are loaded; raises if they could not be."""
        if self.load_error is not None:
            raise WorkerLoadError(self.load_error)
        return self.info

    def run_shard(self, task: RescoreTask) -> Iterator[RescoreResult]:
        """The dispatcher's call: a generator, as GenerationWorker.run_shard is, so Ray streams its one result."""
        yield self.rescore_shard(task.index)

    def rescore_shard(self, index: int) -> RescoreResult:
        return rescore_shard(self.settings, index, self.scorers, self.name)


def rescore_shard(settings: RescoreSettings, index: int, scorers: list[Scorer], name: str) -> RescoreResult:
    """Rewrite shard `index` with the score columns of `settings`: those of `scorers` computed afresh, the others
    kept. Without scorers (columns dropped only) no image is read: the driver does this itself (jobs.run.rescore)."""
    started = time.perf_counter()
    path = layout.shard_path(settings.output_dir, index)
    footer = read_footer(path)
    fence = functools.partial(check_fence, settings.output_dir, settings.run_token)
    if footer is not None and footer.job_key == settings.new_key:
        # Rescored already: by an earlier rescore, or by an attempt of this one whose answer was lost
        # (its actor died after the write). Its images were scored: every ok row has one. The attempt
        # may have died before its stats file got the new key: status counts the shard only once it has.
        rekey_stats(settings.output_dir, index, settings.new_key, fence)
        scored = footer.ok if scorers else 0
        return _result(index, footer, path, name, started, scored=scored, skipped=True)
    if footer is None or footer.job_key != settings.old_key:
        raise ShardError(f"{path}: not a complete shard of the run being rescored")
    with storage.open_input(path) as handle:
        table = pq.read_table(handle)
    columns = score_columns(settings.scores)
    rescored, scored = rescored_table(table, scorers, columns, settings.batch_size)
    write_shard(rescored, settings.output_dir, replace(footer, job_key=settings.new_key), before_publish=fence)
    rekey_stats(settings.output_dir, index, settings.new_key, fence)
    return _result(index, footer, path, name, started, scored=scored)


def _result(
    index: int, footer: ShardFooter, path: str, name: str, started: float, scored: int = 0, skipped: bool = False
) -> RescoreResult:
    seconds = time.perf_counter() - started
    return RescoreResult(
        index, footer.rows, footer.ok, footer.failed, path, name, seconds, scored=scored, skipped=skipped
    )


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def only(models: ScoreModels, wanted: tuple[str, ...]) -> ScoreModels:
    """`models` with the scorers whose columns are not `wanted` left out."""
    keep_aesthetic = C.AESTHETIC in wanted
    return ScoreModels(
        pickscore=models.pickscore if C.PICKSCORE in wanted else None,
        aesthetic=models.aesthetic if keep_aesthetic else None,
        aesthetic_head=models.aesthetic_head if keep_aesthetic else None,
    )


def rescored_table(
    table: pa.Table, scorers: list[Scorer], columns: tuple[str, ...], batch_size: int
) -> tuple[pa.Table, int]:
    """`table` with its score columns replaced: `columns` last, in order; those of `scorers` computed from the
    stored images, the others kept from `table`. Returns the table and how many images were scored.

    Rows whose status is error get null, as in a run; a scorer that needs a prompt skips rows without one.
    Without `scorers` (columns dropped only) the images are not read."""
    values: dict[str, list[float | None]] = {scorer.column: [None] * table.num_rows for scorer in scorers}
    if not scorers:
        return _with_score_columns(table, columns, values), 0
    status = table.column(C.STATUS).to_pylist()
    images = table.column(C.IMAGE).to_pylist()
    prompts = table.column(C.PROMPT).to_pylist() if C.PROMPT in table.column_names else [None] * table.num_rows
    kept = [i for i in range(table.num_rows) if status[i] == C.STATUS_OK and images[i] is not None]
    for group in _same_size_batches(kept, images, batch_size):
        pixels = _decode([images[i] for i in group])
        for scorer in scorers:
            targets = [k for k, i in enumerate(group) if prompts[i]] if scorer.needs_prompt else range(len(group))
            targets = list(targets)
            if not targets:
                continue
            scores = scorer.score(pixels[targets], [prompts[group[k]] or "" for k in targets])
            for k, score in zip(targets, scores, strict=True):
                values[scorer.column][group[k]] = float(score)
    return _with_score_columns(table, columns, values), len(kept)


def _with_score_columns(table: pa.Table, columns: tuple[str, ...], values: dict[str, list[float | None]]) -> pa.Table:
    """`table` with `columns` last, in order: those in `values` from there, the others kept from `table`."""
    result = table.drop_columns([name for name in C.SCORES if name in table.column_names])
    for name in columns:
        array = pa.array(values[name], type=C.SCORES[name]) if name in values else table.column(name)
        result = result.append_column(pa.field(name, C.SCORES[name]), array)
    return result.replace_schema_metadata(None)


def _same_size_batches(rows: list[int], images: list[dict], batch_size: int) -> list[list[int]]:
    """Rows cut into batches of images of one size (rows may set their own width and height)."""
    from PIL import Image

    by_size: dict[tuple[int, int], list[int]] = {}
    for i in rows:
        with Image.open(io.BytesIO(images[i]["bytes"])) as image:
            by_size.setdefault(image.size, []).append(i)
    return [group[k : k + batch_size] for group in by_size.values() for k in range(0, len(group), batch_size)]


def _decode(images: list[dict]):
    """The stored images as a uint8 tensor (N, H, W, 3): for PNG, exactly the pixels the run scored."""
    import torch
    from PIL import Image

    arrays = []
    for image in images:
        with Image.open(io.BytesIO(image["bytes"])) as decoded:
            arrays.append(np.asarray(decoded.convert("RGB")))
    return torch.from_numpy(np.stack(arrays))


def rekey_stats(output_dir: str, index: int, key: str, before_publish) -> None:
    """The shard's stats file says which job it belongs to (genbatch status counts only the job's)."""
    location = layout.stats_path(output_dir, index)
    if not storage.exists(location):
        return
    try:
        stats = json.loads(storage.read_bytes(location))
        if isinstance(stats, dict) and stats.get("job_key") == key:
            return  # rekeyed already
        stats["job_key"] = key
    except (ValueError, TypeError) as error:  # not genbatch's stats: genbatch status ignores it as it is
        logger.warning("%s: not a stats record (%s); left as it is", location, describe(error))
        return
    storage.write_bytes(location, (json.dumps(stats) + "\n").encode(), before_publish)
