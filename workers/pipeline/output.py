"""Assembling a shard's output table from its manifest rows and what the worker made of them."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from workers.io import columns as C
from workers.io import layout, storage
from workers.io.rows import RowSpec
from workers.tasks import ShardTask


@dataclass
class RowOutput:
    """What became of one row: an encoded image and its score, or an error."""

    image_bytes: bytes | None = None
    sha256: str | None = None
    cosine: float | None = None
    truncated: bool | None = None
    duration_s: float = 0.0
    error: str | None = None
    reconstruction: dict | None = None  # mode: reconstruct: recon_mse, recon_psnr, latent_mean, latent_std
    scores: dict[str, float] = field(default_factory=dict)  # by column (columns.SCORES); absent: null
    cache_skipped_steps: int | None = None  # performance.cache: denoiser passes its micro-batch skipped


@dataclass(frozen=True)
class RunLabels:
    """Per-shard constants written on every row."""

    model: str
    clip_model: str | None
    scheduler: str
    worker: str


def build_output_table(
    manifest: pa.Table,
    ids: pa.Array,
    rows: list[RowSpec],
    outputs: list[RowOutput],
    labels: RunLabels,
    reconstruct: bool = False,
    scores: tuple[str, ...] = (),
    cache: bool = False,
) -> pa.Table:
    """`id`, then the manifest's own columns unchanged, then the generated columns (see columns.py),
    then, when `reconstruct`, the round-trip measurements, then the `scores` columns (columns.SCORES), then,
    with a step cache (`cache`), how many denoiser passes it skipped."""
    passthrough = [name for name in manifest.column_names if name not in C.REPLACED_INPUTS]
    arrays = {C.ID: ids}
    manifest = C.with_wide_offsets(manifest)
    arrays.update({name: manifest.column(name) for name in passthrough})
    generated = {
        C.IMAGE: [None if out.image_bytes is None else {"bytes": out.image_bytes, "path": None} for out in outputs],
        C.CLIP_SCORE: [None if out.cosine is None else 100.0 * max(out.cosine, 0.0) for out in outputs],
        C.CLIP_COSINE: [out.cosine for out in outputs],
        C.PROMPT_TRUNCATED: [out.truncated for out in outputs],
        C.SEED: [row.seed for row in rows],
        C.IMAGE_INDEX: [row.image_index for row in rows],
        C.STEPS: [row.steps for row in rows],
        C.GUIDANCE_SCALE: [row.guidance_scale for row in rows],
        C.WIDTH: [row.width for row in rows],
        C.HEIGHT: [row.height for row in rows],
        C.STRENGTH: [row.strength for row in rows],
        C.SCHEDULER: [labels.scheduler] * len(rows),
        C.MODEL: [labels.model] * len(rows),
        C.CLIP_MODEL: [labels.clip_model] * len(rows),
        C.WORKER: [labels.worker] * len(rows),
        C.DURATION_S: [out.duration_s for out in outputs],
        C.IMAGE_SHA256: [out.sha256 for out in outputs],
        C.STATUS: [C.STATUS_OK if out.error is None else C.STATUS_ERROR for out in outputs],
        C.ERROR: [out.error for out in outputs],
    }
    for name, values in generated.items():
        arrays[name] = pa.array(values, type=C.GENERATED[name])
    if reconstruct:
        for name, data_type in C.RECONSTRUCTION.items():
            values = [None if out.reconstruction is None else out.reconstruction[name] for out in outputs]
            arrays[name] = pa.array(values, type=data_type)
    for name in scores:
        arrays[name] = pa.array([out.scores.get(name) for out in outputs], type=C.SCORES[name])
    if cache:
        arrays[C.CACHE_SKIPPED_STEPS] = pa.array(
            [out.cache_skipped_steps for out in outputs], type=C.STEP_CACHE[C.CACHE_SKIPPED_STEPS]
        )
    return pa.table(arrays)


@dataclass(frozen=True)
class RowsToRun:
    """The shard positions a run generates: every row, or with --retry-failed only those whose status is error
    in the shard's existing file (`previous`), whose other rows are kept (`merged`)."""

    positions: list[int]
    previous: pa.Table | None = None

    @classmethod
    def of(cls, output_dir: str, task: ShardTask, rows: int) -> RowsToRun:
        """The rows of `task` to run; `rows`: the shard's output rows."""
        previous = _read_previous(output_dir, task) if task.retry_failed else None
        if previous is None:
            return cls(list(range(rows)))
        return cls(pc.indices_nonzero(pc.equal(previous.column(C.STATUS), C.STATUS_ERROR)).to_pylist(), previous)

    def merged(self, fresh: pa.Table) -> pa.Table:
        """The shard's table: `fresh`, or on a retry `previous` with its rows at `positions` replaced by the rows
        of `fresh`, in order."""
        if self.previous is None:
            return fresh
        source = list(range(self.previous.num_rows))
        for j, position in enumerate(self.positions):
            source[position] = self.previous.num_rows + j
        combined = pa.concat_tables([self.previous, fresh.cast(self.previous.schema)])
        return combined.take(source)


def _read_previous(output_dir: str, task: ShardTask) -> pa.Table | None:
    """The shard's existing output; None when there is none yet."""
    path = layout.shard_path(output_dir, task.index)
    if not storage.exists(path):
        return None
    with storage.open_input(path) as handle:
        table = pq.read_table(handle)
    return C.with_wide_offsets(table.replace_schema_metadata(None))  # as build_output_table's, for merged
