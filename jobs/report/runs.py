"""Reading a finished run's output for reports: light columns in full, images only for chosen rows.

A run is a local folder or an object-store prefix (`s3://bucket/runs/a`), read through `workers.storage`.
Images are never all in memory: score columns are read without the image column, and a second pass
reads only the row groups that hold the images of the few rows a report shows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from jobs.errors import OutputError, one_line, some_of
from jobs.jobfile import identity_key, read_job_file
from workers import columns as C
from workers import layout, storage
from workers.writer import read_footer

_BATCH_ROWS = 8192

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """A run folder (or prefix): its job record and the light columns of every row."""

    path: str
    job: dict
    table: pa.Table  # every output column except the image
    files: list[str]  # the job's own shard files (see `job_shard_files`)

    @property
    def clip_model(self) -> str | None:
        return (self.job.get("config") or {}).get("clip", {}).get("model")

    def scored(self) -> pa.Table:
        """Rows with status ok and a CLIP score."""
        mask = pc.and_(pc.equal(self.table[C.STATUS], C.STATUS_OK), pc.is_valid(self.table[C.CLIP_SCORE]))
        return self.table.filter(mask)


def open_run(path: str | Path) -> Run:
    """Read a run's job.json and its rows' light columns (no images)."""
    path = storage.normalized(path) if storage.is_remote(str(path)) else str(Path(path))
    try:
        job = read_job_file(path)
    except OSError as error:  # the location itself cannot be reached (no bucket, no network)
        raise OutputError(f"{path}: cannot reach the run ({one_line(error)})") from None
    if job is None:
        raise OutputError(f"{path}: not a genbatch run folder (no {layout.JOB_FILE})")
    files = job_shard_files(path, job)
    dataset = _dataset(files)
    names = [name for name in dataset.schema.names if name != C.IMAGE]
    batches = dataset.to_batches(columns=names, batch_size=_BATCH_ROWS)
    table = pa.Table.from_batches(list(batches), schema=pa.schema([dataset.schema.field(n) for n in names]))
    return Run(path=path, job=job, table=table, files=files)


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


def job_shard_files(path: str, job: dict) -> list[str]:
    """The shard files in `data/` that belong to the job: a shard it planned, written by it (footer).

    Anything else there (another job's shard, a stray copy) is left out with a warning, never counted."""
    data = layout.data_dir(path)
    key, planned = identity_key(job["identity"]), {layout.shard_file_name(i) for i in range(job["shards"])}
    files, others = [], []
    for file in storage.list_files(data):
        name = storage.name(file)
        if not layout.is_shard_file(name):
            continue
        footer = read_footer(file) if name in planned else None
        if footer is not None and footer.job_key == key and layout.shard_file_name(footer.shard) == name:
            files.append(file)
        else:
            others.append(name)
    if others:
        shown = some_of(others)
        logger.warning("%s: %d shard files are not part of this job, left out: %s", data, len(others), shown)
    if not files:
        raise OutputError(f"{path}: no shard files of this job in {data}")
    return files


def _dataset(files: list[str]) -> ds.Dataset:
    filesystem, _ = storage.resolve(files[0])
    return ds.dataset([storage.resolve(f)[1] for f in files], format="parquet", filesystem=filesystem)
