"""Reading a finished run's output for reports: light columns in full, images only for chosen rows.

A run is a local folder or an object-store prefix (`s3://bucket/runs/a`), read through `workers.io.storage`.
Images are never all in memory: score columns are read without the image column, and a second pass
reads only the row groups that hold the images of the few rows a report shows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from jobs.runfolder.jobfile import JobRecord, read_run_record
from jobs.runfolder.shard_files import job_shard_files
from workers.io import columns as C
from workers.io import storage

_BATCH_ROWS = 8192

logger = logging.getLogger(__name__)


@dataclass
class RunFiles:
    """A run folder (or prefix): its job record and its shard files, nothing read from them yet."""

    path: str
    job: JobRecord
    files: list[str]  # the job's own shard files (see `job_shard_files`)
    columns: list[str]  # the output's columns (the first file's)
    file_rows: list[int] | None = None  # rows per file, once known (see `scan`)
    left_out: list[str] = field(default_factory=list)  # planned shards not read (`--partial`; see `job_shard_files`)

    @property
    def clip_model(self) -> str | None:
        return (self.job.config or {}).get("clip", {}).get("model")


@dataclass
class Run(RunFiles):
    """A run with the light columns of every row in memory (for comparisons, which pair rows by id)."""

    table: pa.Table = field(default_factory=pa.table)  # every output column except the image

    def scored(self) -> pa.Table:
        """Rows with status ok and a CLIP score."""
        mask = pc.and_(pc.equal(self.table[C.STATUS], C.STATUS_OK), pc.is_valid(self.table[C.CLIP_SCORE]))
        return self.table.filter(mask)


def locate_run(path: str | Path, partial: bool = False) -> RunFiles:
    """A run's job.json and the files of its job, without reading them; `partial`: see `job_shard_files`."""
    path = storage.normalized(path) if storage.is_remote(str(path)) else str(Path(path))
    job = read_run_record(path)
    shards = job_shard_files(path, job, partial)
    with storage.open_input(shards.files[0]) as source:
        columns = pq.ParquetFile(source).schema_arrow.names
    return RunFiles(path=path, job=job, files=shards.files, columns=columns, left_out=shards.left_out)


def open_run(path: str | Path, partial: bool = False) -> Run:
    """Read a run's job.json and its rows' light columns (no images)."""
    located = locate_run(path, partial)
    dataset = _dataset(located.files)
    names = [name for name in dataset.schema.names if name != C.IMAGE]
    batches = dataset.to_batches(columns=names, batch_size=_BATCH_ROWS)
    table = pa.Table.from_batches(list(batches), schema=pa.schema([dataset.schema.field(n) for n in names]))
    return Run(**vars(located), table=table)


def scan(run: RunFiles, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """`columns` of every row, in row order (file by file), a batch at a time: memory stays flat at any size.

    Records each file's row count in `run.file_rows`, for `fetch_rows`."""
    file_rows = []
    for file in run.files:
        with storage.open_input(file) as source:
            parquet = pq.ParquetFile(source)
            file_rows.append(parquet.metadata.num_rows)
            yield from parquet.iter_batches(batch_size=_BATCH_ROWS, columns=columns, use_threads=False)
    run.file_rows = file_rows


def fetch_rows(run: RunFiles, positions: list[int], columns: list[str]) -> dict[int, dict]:
    """The rows at these positions (0-based, in row order across the run's files), as {position: row}, reading
    only the files and row groups that hold them, one row group at a time."""
    if run.file_rows is None:
        run.file_rows = [_rows_of(file) for file in run.files]
    starts = np.cumsum([0, *run.file_rows])
    wanted = [name for name in columns if name in run.columns]
    found: dict[int, dict] = {}
    by_file: dict[int, list[int]] = {}
    for position in sorted(set(positions)):
        by_file.setdefault(int(np.searchsorted(starts, position, side="right")) - 1, []).append(position)
    for index, in_file in by_file.items():
        with storage.open_input(run.files[index]) as source:
            parquet = pq.ParquetFile(source)
            groups = np.cumsum([0] + [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)])
            by_group: dict[int, list[int]] = {}
            for position in in_file:
                group = int(np.searchsorted(groups, position - starts[index], side="right")) - 1
                by_group.setdefault(group, []).append(position)
            for group, in_group in by_group.items():
                rows = parquet.read_row_group(group, columns=wanted, use_threads=False)
                offsets = [int(position - starts[index] - groups[group]) for position in in_group]
                found.update(zip(in_group, rows.take(offsets).to_pylist()))
    return found


def _rows_of(file: str) -> int:
    with storage.open_input(file) as source:
        return pq.ParquetFile(source).metadata.num_rows


def fetch_images(run: Run, ids: list) -> dict:
    """PNG bytes of the rows with these ids, reading only the row groups that hold them."""
    found: dict = {}
    for file in run.files:
        with storage.open_input(file) as source:
            _images_in_file(pq.ParquetFile(source), ids, found)
    return found


def _images_in_file(parquet: pq.ParquetFile, ids: list, found: dict) -> None:
    file_ids = parquet.read(columns=[C.ID]).column(C.ID)
    hits = pc.indices_nonzero(pc.is_in(file_ids, value_set=pa.array(ids, file_ids.type))).to_pylist()
    if not hits:
        return
    wanted = set(ids)
    starts = np.cumsum([0] + [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)])
    for group in sorted({int(np.searchsorted(starts, hit, side="right")) - 1 for hit in hits}):
        # One row group (ROW_GROUP_ROWS images) at a time, synchronously: memory stays flat.
        rows = parquet.read_row_group(group, columns=[C.ID, C.IMAGE], use_threads=False)
        for row_id, image in zip(rows.column(C.ID).to_pylist(), rows.column(C.IMAGE).to_pylist()):
            if row_id in wanted and image is not None:
                found[row_id] = image["bytes"]


def _dataset(files: list[str]) -> ds.Dataset:
    filesystem, _ = storage.resolve(files[0])
    return ds.dataset([storage.resolve(f)[1] for f in files], format="parquet", filesystem=filesystem)
