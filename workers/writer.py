"""Writing a shard's output table: under a temporary name first, renamed into place once complete."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

DATA_DIR = "data"
TEMP_SUFFIX = ".tmp"


def shard_file_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def write_shard(table: pa.Table, output_dir: str, index: int) -> str:
    """Write `table` as shard `index` and return its final path.

    A reader never sees a partial file under a `.parquet` name: the data is written and synced under
    a temporary name, then renamed, which is atomic on a local or POSIX filesystem.
    """
    data_dir = Path(output_dir) / DATA_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    final = data_dir / shard_file_name(index)
    temp = data_dir / f".{final.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}"
    try:
        with open(temp, "wb") as sink:
            pq.write_table(table, sink, compression="zstd")
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return str(final)


def remove_temp_files(output_dir: str) -> int:
    """Delete temporary files left by writers that were killed mid-write; returns how many."""
    data_dir = Path(output_dir) / DATA_DIR
    if not data_dir.is_dir():
        return 0
    leftovers = list(data_dir.glob(f".*{TEMP_SUFFIX}"))
    for path in leftovers:
        path.unlink(missing_ok=True)
    return len(leftovers)
