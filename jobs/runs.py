"""Reading a finished run's output for reports: light columns in full, images only for chosen rows.

Images are never all in memory: score columns are read without the image column, and a second pass
reads only the row groups that hold the images of the few rows a report shows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from jobs.errors import OutputError
from jobs.jobfile import JOB_FILE
from workers import columns as C
from workers.writer import DATA_DIR

_BATCH_ROWS = 8192


@dataclass
class Run:
    """A run folder: its job record and the light columns of every row."""

    path: Path
    job: dict
    table: pa.Table  # every output column except the image

    @property
    def clip_model(self) -> str | None:
        return (self.job.get("config") or {}).get("clip", {}).get("model")

    def scored(self) -> pa.Table:
        """Rows with status ok and a CLIP score."""
        mask = pc.and_(pc.equal(self.table[C.STATUS], C.STATUS_OK), pc.is_valid(self.table[C.CLIP_SCORE]))
        return self.table.filter(mask)


def open_run(path: str | Path, extra_columns: tuple[str, ...] = ()) -> Run:
    """Read a run's job.json and its rows' light columns (no images)."""
    path = Path(path)
    job_file = path / JOB_FILE
    if not job_file.is_file():
        raise OutputError(f"{path}: not a genbatch run folder (no {JOB_FILE})")
    job = json.loads(job_file.read_text(encoding="utf-8"))
    dataset = _dataset(path)
    names = [name for name in dataset.schema.names if name != C.IMAGE]
    batches = dataset.to_batches(columns=names, batch_size=_BATCH_ROWS)
    table = pa.Table.from_batches(list(batches), schema=pa.schema([dataset.schema.field(n) for n in names]))
    return Run(path=path, job=job, table=table)


def fetch_images(path: str | Path, ids: list) -> dict:
    """PNG bytes of the rows with these ids, reading only the row groups that hold them."""
    found: dict = {}
    wanted = set(ids)
    for file in _shard_files(Path(path)):
        parquet = pq.ParquetFile(file)
        file_ids = parquet.read(columns=[C.ID]).column(C.ID)
        hits = pc.indices_nonzero(pc.is_in(file_ids, value_set=pa.array(ids, file_ids.type))).to_pylist()
        if not hits:
            continue
        starts = np.cumsum([0] + [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)])
        for group in sorted({int(np.searchsorted(starts, hit, side="right")) - 1 for hit in hits}):
            # One row group (ROW_GROUP_ROWS images) at a time, synchronously: memory stays flat.
            rows = parquet.read_row_group(group, columns=[C.ID, C.IMAGE], use_threads=False)
            for row_id, image in zip(rows.column(C.ID).to_pylist(), rows.column(C.IMAGE).to_pylist()):
                if row_id in wanted and image is not None:
                    found[row_id] = image["bytes"]
    return found


def _shard_files(path: Path) -> list[str]:
    data = path / DATA_DIR
    files = sorted(str(p) for p in data.glob("shard-*.parquet")) if data.is_dir() else []
    if not files:
        raise OutputError(f"{path}: no shard files in {data}")
    return files


def _dataset(path: Path) -> ds.Dataset:
    return ds.dataset(_shard_files(path), format="parquet")
