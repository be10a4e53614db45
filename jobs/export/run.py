"""One export, top to bottom: check the options, claim or resume the destination, stream the run into
shards, record `stats.json`.

    DEST/
      export.json                      what decides the export (written first; a rerun must match it)
      shard-000000.tar, .parquet, ...  webdataset (or shard-000000/ folders: imagefolder)
      .genbatch-export/shard-000000.json  written once the shard's files are published: it is complete
      stats.json                       rows in, filtered, duplicates, shards, bytes, seconds

Shard k holds kept samples k*N ... (k+1)*N-1 in run order, so a rerun of the same export finds the same
samples in the same shards: it skips the complete ones (without reading their images) and rewrites the
rest, byte for byte what an uninterrupted export writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol

import pyarrow as pa
import pyarrow.fs as pafs

from jobs.errors import OutputError, UsageError, one_line
from jobs.export.imagefolder import ImageFolderShard
from jobs.export.keys import sample_key
from jobs.export.source import EXTENSIONS, RunSource, ScanCounts, open_source
from jobs.export.webdataset import WebDatasetShard
from jobs.export.where import Where, check_columns, parse_where
from jobs.runfolder.resume import differences
from workers.io import columns as C
from workers.io import storage

logger = logging.getLogger(__name__)

Format = Literal["webdataset", "imagefolder"]
FORMATS: tuple[Format, ...] = ("webdataset", "imagefolder")
DEFAULT_SHARD_SIZE = 10_000  # samples per shard, as img2dataset writes them
EXPORT_FILE = "export.json"
STATS_FILE = "stats.json"
MARKER_DIR = ".genbatch-export"  # hidden: `datasets` and webdataset globs skip it
LAYOUT_VERSION = 1
_OURS = re.compile(r"^(shard-\d{6}(\.tar|\.parquet|/.*)|\.genbatch-export/.*|export\.json|stats\.json)$")
# Added to every sample's metadata by the export: a run column of the same name would be shadowed.
_EXPORT_COLUMNS = ("key", "file_name")


class ShardWriter(Protocol):
    shard: int
    rows: int

    def add(self, keys: list[str], rows: pa.Table, images: list[bytes]) -> None: ...
    def commit(self) -> dict[str, int]: ...
    def discard(self) -> None: ...


@dataclass
class ExportSummary:
    dest: str
    format: str
    rows_in: int
    rows_filtered: int
    rows_without_image: int
    duplicates: int
    rows_out: int
    shards: int
    shards_skipped: int  # complete from an earlier, interrupted run of the same export
    bytes: int
    seconds: float
    shards_left_out: list[str] = field(default_factory=list)  # the run's, with --partial: their rows not read

    @property
    def images_per_s(self) -> float:
        return self.rows_out / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "images_per_s": self.images_per_s}


def export_run(
    run: str,
    dest: str,
    format: Format,
    where: str | None = None,
    dedup: bool = False,
    shard_size: int = DEFAULT_SHARD_SIZE,
    overwrite: bool = False,
    partial: bool = False,
) -> ExportSummary:
    started = time.perf_counter()
    # 1. Check the options against the run, before anything is written.
    source, parsed = _open_checked(run, format, where, dedup, shard_size, partial)

    # 2. Claim the destination, or resume the same export there.
    dest = storage.normalized(dest)
    identity = {
        "layout": LAYOUT_VERSION,
        "format": format,
        "where": parsed.text if parsed is not None else None,
        "dedup": dedup,
        "shard_size": shard_size,
        "run": source.fingerprint,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    entries = destination_entries(dest)
    claim_destination(dest, identity, overwrite, entries)
    complete = complete_shards(dest, key, entries)
    if complete:
        logger.info("%s: %d shards already complete, resuming", dest, len(complete))

    # 3. Stream the run into shards.
    counts = ScanCounts()
    files = {shard: marker["files"] for shard, marker in complete.items()}
    extension = EXTENSIONS[source.image_format]
    rows_out = _write_shards(source, dest, format, parsed, dedup, shard_size, complete, counts, files, key, extension)

    # 4. Record what was done.
    summary = ExportSummary(
        dest=dest,
        format=format,
        rows_in=counts.rows_in,
        rows_filtered=counts.filtered,
        rows_without_image=counts.without_image,
        duplicates=counts.duplicates,
        rows_out=rows_out,
        shards=len(files),
        shards_skipped=len(complete),
        bytes=sum(sum(shard.values()) for shard in files.values()),
        seconds=time.perf_counter() - started,
        shards_left_out=source.left_out,
    )
    record = {**summary.as_dict(), "run": source.path, "where": identity["where"], "dedup": dedup}
    with _writing(dest):
        storage.write_bytes(storage.join(dest, STATS_FILE), (json.dumps(record, indent=2) + "\n").encode())
    return summary


def _open_checked(
    run: str, format: Format, where: str | None, dedup: bool, shard_size: int, partial: bool
) -> tuple[RunSource, Where | None]:
    """The run to export, with its `--where` filter parsed, once the options are checked against it."""
    if format not in FORMATS:
        raise UsageError(f"--format: {format!r} is not one of {', '.join(FORMATS)}")
    if shard_size < 1:
        raise UsageError(f"--shard-size: must be at least 1, got {shard_size}")
    source = open_source(run, partial)
    # Over the light columns: the filter runs before any image is read.
    light = pa.schema([f for f in source.schema if f.name != C.IMAGE])
    parsed = parse_where(where, light) if where is not None else None
    if dedup:
        check_columns(source.schema, [C.IMAGE_SHA256], "--dedup")
    check_columns(source.schema, [C.ID], "export")
    shadowed = [name for name in _EXPORT_COLUMNS if name in source.schema.names]
    if shadowed:
        raise UsageError(f"{source.path}: column {shadowed[0]!r} would be shadowed by the export's own {shadowed[0]!r}")
    return source, parsed


@contextlib.contextmanager
def _writing(dest: str) -> Iterator[None]:
    """A write that fails (disk full, no permission, a bucket gone) is one line naming the destination."""
    try:
        yield
    except OSError as error:
        raise OutputError(f"{dest}: cannot write ({error.strerror or one_line(error)})") from None


def _write_shards(
    source: RunSource,
    dest: str,
    format: Format,
    parsed,
    dedup: bool,
    shard_size: int,
    complete: dict[int, dict],
    counts: ScanCounts,
    files: dict[int, dict[str, int]],
    key: str,
    extension: str,
) -> int:
    """Kept samples into shards of `shard_size`, in run order; returns how many samples were kept."""
    writer: ShardWriter | None = None
    sample = 0  # kept samples so far: the next one's number
    try:
        for selection in source.selections(parsed.expression if parsed else None, dedup, counts):
            rows = selection.rows
            first, last = sample // shard_size, (sample + rows.num_rows - 1) // shard_size
            if all(shard in complete for shard in range(first, last + 1)):
                sample += rows.num_rows  # no need for these images: their shards are written
                continue
            images = selection.images()
            indices = rows.column(C.IMAGE_INDEX).to_pylist() if C.IMAGE_INDEX in rows.column_names else None
            ids = rows.column(C.ID).to_pylist()
            keys = [sample_key(row_id, indices[i] if indices else 0) for i, row_id in enumerate(ids)]
            offset = 0
            while offset < rows.num_rows:
                shard = (sample + offset) // shard_size
                take = min(rows.num_rows - offset, (shard + 1) * shard_size - (sample + offset))
                if shard not in complete:
                    with _writing(dest):
                        if writer is None:
                            writer = _open_writer(format, dest, shard, extension, source.metadata_columns)
                        writer.add(
                            keys[offset : offset + take], rows.slice(offset, take), images[offset : offset + take]
                        )
                        if writer.rows == shard_size:
                            files[shard] = _finish(dest, writer, key)
                            writer = None
                offset += take
            sample += rows.num_rows
        if writer is not None:
            with _writing(dest):
                files[writer.shard] = _finish(dest, writer, key)
            writer = None
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    return sample


def _open_writer(format: Format, dest: str, shard: int, extension: str, columns: list[str]) -> ShardWriter:
    if format == "webdataset":
        return WebDatasetShard(dest, shard, extension, columns)
    return ImageFolderShard(dest, shard, extension, columns)


def _finish(dest: str, writer: ShardWriter, key: str) -> dict[str, int]:
    """Publish a shard's files, then its marker: from then on a rerun skips it."""
    written = writer.commit()
    marker = {"export_key": key, "shard": writer.shard, "rows": writer.rows, "files": written}
    storage.write_bytes(marker_path(dest, writer.shard), json.dumps(marker).encode())
    logger.info("%s: shard %d written (%d samples, %d bytes)", dest, writer.shard, writer.rows, sum(written.values()))
    return written


def marker_path(dest: str, shard: int) -> str:
    return storage.join(dest, MARKER_DIR, f"shard-{shard:06d}.json")


def complete_shards(dest: str, key: str, entries: dict[str, pafs.FileInfo]) -> dict[int, dict]:
    """The shards of this export whose markers say they are complete and whose files are all there, whole."""
    complete = {}
    folders: dict[str, dict[str, int]] = {}  # a shard folder's files and sizes, listed once
    for path in storage.list_files(storage.join(dest, MARKER_DIR)):
        try:
            marker = json.loads(storage.read_bytes(path))
        except (OSError, ValueError):
            continue  # not a marker: its shard is redone
        if not (isinstance(marker, dict) and marker.get("export_key") == key and isinstance(marker.get("shard"), int)):
            continue
        if all(_present(dest, name, size, entries, folders) for name, size in marker["files"].items()):
            complete[marker["shard"]] = marker
    return complete


def _present(
    dest: str, name: str, size: int, entries: dict[str, pafs.FileInfo], folders: dict[str, dict[str, int]]
) -> bool:
    """Whether a file a marker lists is still there, whole: a tar or sidecar at the top, or one file of a shard
    folder. A marker that lists a folder without its files (written before they were listed) cannot tell a
    folder that lost an image: its shard is redone."""
    if "/" not in name:
        info = entries.get(name)
        return info is not None and info.type == pafs.FileType.File and info.size == size
    folder, _, member = name.partition("/")
    if not member or "/" in member:
        return False
    if folder not in folders:
        folders[folder] = _file_sizes(storage.join(dest, folder))
    return folders[folder].get(member) == size


def _file_sizes(folder: str) -> dict[str, int]:
    filesystem, path = storage.resolve(folder)
    infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    return {info.base_name: info.size for info in infos if info.type == pafs.FileType.File}


def destination_entries(dest: str) -> dict[str, pafs.FileInfo]:
    """What the destination holds at its top level, by name (one listing)."""
    try:
        filesystem, path = storage.resolve(dest)
        infos = filesystem.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    except OSError as error:
        raise OutputError(f"{dest}: cannot use the destination ({error.strerror or one_line(error)})") from None
    return {info.base_name: info for info in infos}


def claim_destination(dest: str, identity: dict, overwrite: bool, entries: dict[str, pafs.FileInfo]) -> None:
    """Record the export's identity in `DEST/export.json`; refuse a destination that holds anything else."""
    location = storage.join(dest, EXPORT_FILE)
    if EXPORT_FILE in entries:
        try:
            previous = json.loads(storage.read_bytes(location)).get("identity")
        except (OSError, ValueError, AttributeError):
            previous = None
        changes = (
            differences(previous, identity, {"run": "the run changed (its shards differ)"})
            if isinstance(previous, dict)
            else ["not a genbatch export record"]
        )
        if changes and not overwrite:
            raise OutputError(
                f"{dest}: holds an export with other settings ({'; '.join(changes)}); "
                "rerun with --overwrite to replace it, or choose another destination"
            )
        if changes:
            _clear(dest)
            entries.clear()
    elif any(not storage.is_temp_file(name) for name in entries):
        raise OutputError(f"{dest}: not empty and not a genbatch export (no {EXPORT_FILE}); choose another destination")
    storage.remove_temp_files(dest)
    storage.remove_temp_files(storage.join(dest, MARKER_DIR))
    record = {"identity": identity}
    try:
        storage.write_bytes(location, (json.dumps(record, indent=2) + "\n").encode())
    except OSError as error:
        raise OutputError(f"{location}: cannot write ({error.strerror or one_line(error)})") from None


def _clear(dest: str) -> None:
    """--overwrite: remove what an export wrote, nothing else the destination may hold."""
    existing = storage.list_files(dest, recursive=True)
    relative = [_relative(dest, path) for path in existing]
    for path, name in zip(existing, relative):
        if _OURS.match(name) or storage.is_temp_file(storage.name(name)):
            storage.delete(path)
    if not storage.is_remote(dest):
        for name in sorted({name.split("/")[0] for name in relative if "/" in name}, reverse=True):
            folder = os.path.join(storage.local_path(dest), name)
            ours = re.fullmatch(r"shard-\d{6}|\.genbatch-export", name)
            if ours and os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)


def _relative(dest: str, path: str) -> str:
    if storage.is_remote(dest):
        _, root = storage.resolve(dest)
        _, inner = storage.resolve(path)
        return inner[len(root) :].lstrip("/")
    return os.path.relpath(storage.local_path(path), os.path.abspath(storage.local_path(dest))).replace(os.sep, "/")
