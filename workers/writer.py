"""Writing a shard's output table: under a temporary name first, renamed into place once complete.

Each file's Parquet footer carries which job wrote it and its row counts, so a rerun can verify a
shard from its footer alone, without reading its images.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

DATA_DIR = "data"
TEMP_SUFFIX = ".tmp"
FOOTER_KEY = b"genbatch"
# Small row groups let readers (reports, datasets streaming) hold a few images at a time, not a shard's.
ROW_GROUP_ROWS = 64


class ShardWriteError(OSError):
    """A shard file could not be written (permission denied, disk full, ...)."""


@dataclass(frozen=True)
class ShardFooter:
    """What a shard file says about itself."""

    job_key: str
    shard: int
    rows: int
    ok: int
    failed: int


def shard_file_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def shard_path(output_dir: str, index: int) -> Path:
    return Path(output_dir) / DATA_DIR / shard_file_name(index)


def write_shard(table: pa.Table, output_dir: str, footer: ShardFooter) -> str:
    """Write `table` as shard `footer.shard` and return its final path.

    A reader never sees a partial file under a `.parquet` name: the data is written and synced under
    a temporary dot-name, then renamed, which is atomic on a local or POSIX filesystem.
    """
    final = shard_path(output_dir, footer.shard)
    temp = final.with_name(f".{final.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")
    metadata = dict(table.schema.metadata or {})
    metadata[FOOTER_KEY] = json.dumps(vars(footer)).encode()
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "wb") as sink:
            pq.write_table(
                table.replace_schema_metadata(metadata), sink, compression="zstd", row_group_size=ROW_GROUP_ROWS
            )
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temp, final)
    except OSError as error:
        temp.unlink(missing_ok=True)
        raise ShardWriteError(f"cannot write {final}: {error.strerror or error}") from error
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return str(final)


def read_footer(path: Path) -> ShardFooter | None:
    """The footer of a whole shard file written by genbatch; None if absent, partial or foreign."""
    try:
        metadata = pq.read_metadata(path)
        footer = ShardFooter(**json.loads(metadata.metadata[FOOTER_KEY]))
    except (OSError, pa.ArrowException, KeyError, TypeError, ValueError):
        return None
    return footer if footer.rows == metadata.num_rows else None


def remove_temp_files(output_dir: str) -> int:
    """Delete temporary files left by writers that were killed mid-write; returns how many."""
    data_dir = Path(output_dir) / DATA_DIR
    if not data_dir.is_dir():
        return 0
    leftovers = list(data_dir.glob(f".*{TEMP_SUFFIX}"))
    for path in leftovers:
        path.unlink(missing_ok=True)
    return len(leftovers)
