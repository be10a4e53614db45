"""Writing a shard's output table, published whole: a reader sees all of it or none of it.

Each file's Parquet footer carries which job wrote it and its row counts, so a rerun can verify a
shard from its footer alone, without reading its images.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from workers.errors import FencedOut, ShardWriteError, one_line
from workers.io import columns as C
from workers.io import layout, storage
from workers.io.hf_features import HF_KEY, hf_features

FOOTER_KEY = b"genbatch"
# Small row groups let readers (reports, datasets streaming) hold a few images at a time, not a shard's.
ROW_GROUP_ROWS = 64


@dataclass(frozen=True)
class ShardFooter:
    """What a shard file says about itself."""

    job_key: str
    shard: int
    rows: int
    ok: int
    failed: int
    versions: dict | None = None  # library versions that decide pixels (workers.io.provenance); None: not recorded
    device: str | None = None  # what made the shard: `cpu`, or the GPU model and CUDA version


def write_shard(
    table: pa.Table, output_dir: str, footer: ShardFooter, before_publish: Callable[[], None] | None = None
) -> str:
    """Write `table` as shard `footer.shard` and return its final location.

    A reader never sees a partial file under a `.parquet` name: the file is built in memory and
    published whole (see `workers.io.storage.write_bytes`); `before_publish` may still refuse it (fencing).
    """
    final = layout.shard_path(output_dir, footer.shard)
    metadata = dict(table.schema.metadata or {})
    metadata[FOOTER_KEY] = json.dumps(vars(footer)).encode()
    schema, groups = C.stored_row_groups(table.replace_schema_metadata(metadata), ROW_GROUP_ROWS)
    features = hf_features(schema)
    if features is not None:
        metadata[HF_KEY] = json.dumps({"info": {"features": features}}).encode()
        schema = schema.with_metadata(metadata)
    raw = dictionary_columns(schema)
    buffer = pa.BufferOutputStream()
    with pq.ParquetWriter(
        buffer,
        schema,
        compression="zstd",
        use_dictionary=raw,
        write_statistics=raw,  # min/max of every image's bytes would be wasted work
        # Pages are cut between write batches: one value at a time keeps a page to about one image, where
        # Parquet's 32-bit page sizes cannot overflow (pages of small columns still fill up to 1 MB).
        write_batch_size=1,
    ) as parquet:
        for group in groups:  # one row group each
            parquet.write_table(group.replace_schema_metadata(metadata), row_group_size=ROW_GROUP_ROWS)
    try:
        storage.write_bytes(final, buffer.getvalue(), before_publish)
    except FencedOut:
        raise
    except OSError as error:
        raise ShardWriteError(f"cannot write {final}: {error.strerror or one_line(error)}") from error
    return final


def dictionary_columns(schema: pa.Schema) -> list[str]:
    """Every leaf column but raw bytes (images), for dictionaries and statistics: PNGs never repeat, nobody
    filters on their min/max, and a dictionary of a shard's images is one `binary` array, which cannot pass
    2 GiB whatever the column's own type."""
    buffer = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), buffer)
    parquet = pq.read_metadata(pa.BufferReader(buffer.getvalue())).schema
    return [
        parquet.column(i).path
        for i in range(len(parquet))
        if not (parquet.column(i).physical_type == "BYTE_ARRAY" and parquet.column(i).logical_type.type == "NONE")
    ]


def read_footer(location: str) -> ShardFooter | None:
    """The footer of a whole shard file written by genbatch; None if absent, partial or foreign."""
    try:
        with storage.open_input(location) as handle:
            metadata = pq.read_metadata(handle)
        footer = ShardFooter(**json.loads(metadata.metadata[FOOTER_KEY]))
    except (OSError, pa.ArrowException, KeyError, TypeError, ValueError):
        return None
    return footer if footer.rows == metadata.num_rows else None


def remove_temp_files(output_dir: str) -> int:
    """Delete temporary files left by writers that were killed mid-write; returns how many."""
    folders = [output_dir, *(storage.join(output_dir, folder) for folder in layout.FOLDERS)]
    return sum(storage.remove_temp_files(folder) for folder in folders)
