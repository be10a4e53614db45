"""Sets of images for set-level metrics: a run folder, Parquet with an `image` column, or a folder of image files.

`open_image_set` finds out which kind a location is and checks what it can without decoding an image (the
shard files of a run, the Parquet schemas, that there are files at all); `ImageSet.images()` then yields
the images one at a time, decoded as they are read (a Parquet row group at a time), so no more than a
batch of them is ever held by whoever consumes it. Locations are local paths or object-store URIs
(`workers.io.storage`), as for runs.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from jobs.errors import UsageError, one_line, some_of
from jobs.runfolder.jobfile import read_job_file
from jobs.runfolder.shard_files import job_shard_files
from workers.errors import describe
from workers.io import columns as C
from workers.io import layout, storage
from workers.io.writer import read_footer

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
PARQUET_SUFFIX = ".parquet"
_READ_ROWS = 64  # rows read from Parquet at a time (a genbatch shard's row group)


@dataclass
class ImageSet:
    """Where the images are and how they are stored: `kind` is `run`, `parquet` or `images`."""

    location: str
    kind: str
    files: list[str]
    clip_model: str | None = None  # a run's `clip.model`: what CMMD embeds with unless told otherwise
    expected: int | None = None  # how many images the files say they hold (footers, file count)

    def images(self) -> Iterator:
        """Every image of the set as an RGB PIL image, decoded one at a time, in file order."""
        if self.kind == "images":
            for file in self.files:
                yield _decode(storage.read_bytes(file), file)
            return
        for file in self.files:
            yield from _parquet_images(file, ok_rows_only=self.kind == "run")


def open_image_set(location: str) -> ImageSet:
    """The image set at `location`; a location that holds no images is refused with one line naming it."""
    location = storage.normalized(location)
    try:
        kind = storage.file_type(location)
    except OSError as error:
        raise UsageError(f"{location}: cannot reach it ({one_line(error)})") from None
    if kind == pafs.FileType.NotFound:
        raise UsageError(f"{location}: no such file or folder")
    if kind == pafs.FileType.File:
        if not location.lower().endswith(PARQUET_SUFFIX):
            raise UsageError(f"{location}: not a Parquet file, a run folder or a folder of images")
        return _parquet_set(location, [location])
    job = read_job_file(location)
    if job is not None:
        clip = (job.config or {}).get("clip") or {}
        # A reference is read as it is: shards not whole or not its job's are left out with a warning.
        files = job_shard_files(location, job, partial=True).files
        ok_rows = sum(footer.ok for footer in map(read_footer, files) if footer is not None)
        return ImageSet(location, "run", files, clip.get("model"), ok_rows)
    files = [f for f in storage.list_files(location, recursive=True) if not storage.name(f).startswith(".")]
    parquet = [f for f in files if f.lower().endswith(PARQUET_SUFFIX)]
    if parquet:
        return _parquet_set(location, parquet)
    images = [f for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
    if not images:
        raise UsageError(
            f"{location}: no images in the folder (no {', '.join(IMAGE_SUFFIXES)} or {PARQUET_SUFFIX} files, "
            f"no {layout.JOB_FILE})"
        )
    return ImageSet(location, "images", images, expected=len(images))


def _parquet_set(location: str, files: list[str]) -> ImageSet:
    rows = 0
    for file in files:  # footers only: a file without images is refused before any work
        try:
            with storage.open_input(file) as source:
                parquet = pq.ParquetFile(source)
                schema, rows = parquet.schema_arrow, rows + parquet.metadata.num_rows
        except (OSError, pa.ArrowException) as error:
            raise UsageError(f"{file}: not a readable Parquet file ({one_line(error)})") from None
        if C.IMAGE not in schema.names:
            raise UsageError(f"{file}: no {C.IMAGE!r} column (columns: {', '.join(schema.names)})")
        kind = schema.field(C.IMAGE).type
        if not (_is_bytes(kind) or (pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0)):
            raise UsageError(f"{file}: column {C.IMAGE!r} is {kind}, not image bytes or a {{bytes, path}} struct")
    return ImageSet(location, "parquet", files, expected=rows)


def _is_bytes(kind: pa.DataType) -> bool:
    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def _parquet_images(file: str, ok_rows_only: bool) -> Iterator:
    columns = [C.IMAGE, C.STATUS] if ok_rows_only else [C.IMAGE]
    row = 0
    with storage.open_input(file) as source:
        parquet = pq.ParquetFile(source)
        for batch in _batches(parquet, columns):
            images = batch.column(0)
            if pa.types.is_struct(images.type):
                images = images.field("bytes")
            values = images.to_pylist()
            keep = batch.column(1).to_pylist() if ok_rows_only else [C.STATUS_OK] * len(values)
            missing = [str(row + i) for i, (v, s) in enumerate(zip(values, keep)) if v is None and s == C.STATUS_OK]
            if missing:
                raise UsageError(f"{file}: column {C.IMAGE!r}: no image bytes in rows {some_of(missing)}")
            for i, (data, status) in enumerate(zip(values, keep)):
                if status == C.STATUS_OK:
                    yield _decode(data, f"{file}: column {C.IMAGE!r}: row {row + i}")
            row += len(values)


def _batches(parquet: pq.ParquetFile, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """A row group at a time, synchronously (as `runs.fetch_images`): Arrow's reader would otherwise read
    ahead, holding much of the file's image bytes at once."""
    for group in range(parquet.num_row_groups):
        yield from parquet.read_row_group(group, columns=columns, use_threads=False).to_batches(_READ_ROWS)


def _decode(data: bytes, where: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise UsageError(f"{where}: not a decodable image ({describe(error)})") from None
