"""Reading a run for an export, one Parquet row group at a time, so memory stays flat at any run size.

For each row group the light columns (everything but the image) are read first; the `--where` filter,
rows without an image and `--dedup` decide which rows are kept; only then, and only if the caller needs
them, are the kept rows' image bytes read. Rows come in run order: shard files in order, rows in order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.errors import OutputError, one_line
from jobs.export.digests import DigestSet
from jobs.runfolder.jobfile import JobRecord, read_run_record
from jobs.runfolder.shard_files import job_shard_files
from workers.io import columns as C
from workers.io import storage
from workers.io.writer import FOOTER_KEY

logger = logging.getLogger(__name__)

_POSITION = "\x00position"  # a helper column no run has
# The extension a sample's image gets, by the run's `output.image_format`.
EXTENSIONS = {"png": "png", "webp": "webp", "jpeg": "jpg"}


@dataclass
class ScanCounts:
    rows_in: int = 0
    filtered: int = 0  # left out by --where
    without_image: int = 0  # failed rows: nothing to export
    duplicates: int = 0  # left out by --dedup


@dataclass
class Selection:
    """The kept rows of one row group: their light columns, and a way to read their images."""

    rows: pa.Table
    parquet: pq.ParquetFile
    group: int
    positions: pa.Array  # of the kept rows within the row group

    file: str = ""

    def images(self) -> list[bytes]:
        """The kept rows' image bytes, in order (read now, from this row group only)."""
        with _reading(self.file):
            table = self.parquet.read_row_group(self.group, columns=[C.IMAGE], use_threads=False)
        return image_bytes(table.column(C.IMAGE)).take(self.positions).to_pylist()


def image_bytes(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """The bytes of an image column: a `datasets` image struct (binary or large_binary bytes) or plain bytes."""
    if pa.types.is_struct(column.type):
        return pc.struct_field(column, "bytes")
    return column


@dataclass
class RunSource:
    """A finished (or partly written) run: its job record, its shard files and their common schema."""

    path: str
    job: JobRecord
    files: list[str]
    schema: pa.Schema
    fingerprint: str  # changes when any shard file is added, rewritten or retried
    image_format: str
    left_out: list[str] = field(default_factory=list)  # planned shards not read (--partial)
    _seen: DigestSet = field(default_factory=DigestSet)

    @property
    def metadata_columns(self) -> list[str]:
        """What a sample's json and sidecar carry: every column but the image and other byte columns."""
        return [f.name for f in self.schema if f.name != C.IMAGE and not _is_bytes(f.type)]

    def selections(self, where: pc.Expression | None, dedup: bool, counts: ScanCounts) -> Iterator[Selection]:
        light = [f.name for f in self.schema if f.name != C.IMAGE]
        light_schema = pa.schema([self.schema.field(name) for name in light])
        for file in self.files:
            with _reading(file), storage.open_input(file) as handle:
                parquet = pq.ParquetFile(handle)
                for group in range(parquet.num_row_groups):
                    rows = parquet.read_row_group(group, columns=light, use_threads=False)
                    if rows.schema != light_schema:
                        rows = _conform(rows, light_schema)
                    selection = self._select(parquet, group, rows, where, dedup, counts)
                    if selection is not None:
                        selection.file = file
                        yield selection

    def _select(
        self, parquet: pq.ParquetFile, group: int, rows: pa.Table, where, dedup: bool, counts: ScanCounts
    ) -> Selection | None:
        counts.rows_in += rows.num_rows
        rows = rows.append_column(_POSITION, pa.array(range(rows.num_rows), pa.int32()))
        if where is not None:
            kept = rows.filter(where)
            counts.filtered += rows.num_rows - kept.num_rows
            rows = kept
        has_image = self._has_image(parquet, group, rows)
        counts.without_image += rows.num_rows - pc.sum(has_image).as_py() if rows.num_rows else 0
        rows = rows.filter(has_image)
        if dedup and rows.num_rows:
            first = self._seen.first_seen([bytes.fromhex(d) for d in rows.column(C.IMAGE_SHA256).to_pylist()])
            counts.duplicates += first.count(False)
            rows = rows.filter(pa.array(first, pa.bool_()))
        if rows.num_rows == 0:
            return None
        positions = rows.column(_POSITION).combine_chunks()
        return Selection(rows=rows.drop_columns([_POSITION]), parquet=parquet, group=group, positions=positions)

    def _has_image(self, parquet: pq.ParquetFile, group: int, rows: pa.Table) -> pa.Array:
        """Which rows have an image: from `image_sha256` (null exactly when the image is), else the images."""
        if C.IMAGE_SHA256 in rows.column_names:
            return pc.is_valid(rows.column(C.IMAGE_SHA256)).combine_chunks()
        images = image_bytes(parquet.read_row_group(group, columns=[C.IMAGE], use_threads=False).column(C.IMAGE))
        return pc.is_valid(images.take(rows.column(_POSITION))).combine_chunks()


def open_source(path: str, partial: bool = False) -> RunSource:
    """The run at `path` (a folder or URI): refused with one line if it is not a genbatch run, or if a shard is
    not whole or not its job's, unless `partial` (see `jobs.runfolder.shard_files.job_shard_files`)."""
    path = storage.normalized(path)
    job = read_run_record(path)
    if job.status != "finished":
        logger.warning("%s: the run is %s: exporting its shards written so far", path, job.status or "unknown")
    shards = job_shard_files(path, job, partial)
    files = shards.files
    footers, schemas = [], []
    for file in files:
        with storage.open_input(file) as handle:
            metadata = pq.read_metadata(handle)
        footer = json.loads(metadata.metadata[FOOTER_KEY])  # job_shard_files kept only files with this job's footer
        footers.append([storage.name(file), footer["rows"], footer["ok"], footer["failed"]])
        schemas.append(metadata.schema.to_arrow_schema().remove_metadata())
    # One schema for all: a column that is all null in one file (type null) has its type in another.
    schema = pa.unify_schemas(schemas)
    fingerprint = hashlib.sha256(json.dumps({"job": job.key, "shards": footers}).encode()).hexdigest()
    image_format = ((job.config or {}).get("output") or {}).get("image_format", "png")
    return RunSource(
        path=path,
        job=job,
        files=files,
        schema=schema,
        fingerprint=fingerprint,
        image_format=image_format if image_format in EXTENSIONS else "png",
        left_out=shards.left_out,
    )


@contextlib.contextmanager
def _reading(file: str) -> Iterator[None]:
    """A shard file that cannot be read (gone, truncated, a network error) is one line naming it."""
    try:
        yield
    except (OSError, pa.ArrowException) as error:
        raise OutputError(f"{file}: cannot read ({one_line(error)})") from None


def _conform(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """A row group's columns in the run's common schema (a column missing from this file is all null)."""
    columns = [
        rows.column(f.name).cast(f.type) if f.name in rows.column_names else pa.nulls(rows.num_rows, f.type)
        for f in schema
    ]
    return pa.table(columns, schema=schema)


def _is_bytes(data_type: pa.DataType) -> bool:
    """Image-like columns (an `init_image`, say): bytes, or a `datasets` image struct."""
    if pa.types.is_struct(data_type):
        return data_type.get_field_index("bytes") >= 0
    return pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type)
