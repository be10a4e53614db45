"""Local paths and object-store URIs behind one small API.

A location is a local path or a URI: `s3://bucket/prefix`, `gs://bucket/prefix`, or anything else that
pyarrow.fs or fsspec resolves (`memory://`, `abfs://`, ...). Credentials come from the usual environment
of whichever process touches the location (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, instance roles):
the driver reads manifests and job.json, each actor reads its rows and writes its shards itself.

Writes are published whole (`AtomicFile`, `write_bytes`): local files are written under a temporary
name, synced and renamed; objects are uploaded under a temporary key and then moved (a server-side copy)
to their final key, so no reader ever sees a half object under a final name. The temporary name is
`.NAME.<uuid>.tmp` (`temp_name`), which a reader or a rerun never takes for output.
"""

from __future__ import annotations

import functools
import logging
import os
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"


def is_remote(location: str | os.PathLike) -> bool:
    location = os.fspath(location)
    return "://" in location and not location.startswith("file://")


def normalized(location: str | os.PathLike) -> str:
    """A location as genbatch keeps it: a URI without trailing slashes (`s3://b/run/` is `s3://b/run`),
    a local path as given. The one place URIs are normalised."""
    location = os.fspath(location)
    return location.rstrip("/") if is_remote(location) else location


def local_path(location: str | os.PathLike) -> str:
    return os.fspath(location).removeprefix("file://")


def join(base: str, *names: str) -> str:
    if is_remote(base):
        return "/".join([base.rstrip("/"), *names])
    return os.path.join(local_path(base), *names)


def bucket(location: str) -> str:
    """`s3://bucket` of `s3://bucket/prefix/key`."""
    parts = urlsplit(location)
    return f"{parts.scheme}://{parts.netloc}"


def parent(location: str) -> str:
    if is_remote(location):
        return location.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(local_path(location))


def name(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1]


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem that holds `location` and the path within it."""
    if not is_remote(location):
        return pafs.LocalFileSystem(), os.path.abspath(local_path(location))
    parts = urlsplit(location)
    filesystem = _filesystem(parts.scheme, parts.netloc)
    return filesystem, f"{parts.netloc}{parts.path}".rstrip("/")


@functools.lru_cache(maxsize=32)
def _filesystem(scheme: str, netloc: str) -> pafs.FileSystem:
    """One client per bucket, reused: building an S3 client looks up the bucket's region."""
    root = f"{scheme}://{netloc}"
    try:
        filesystem, _ = pafs.FileSystem.from_uri(root)
        return filesystem
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        pass  # not a scheme pyarrow knows natively: ask fsspec
    import fsspec

    try:
        fsspec_fs, _ = fsspec.core.url_to_fs(root)
    except (ImportError, ValueError) as error:
        raise ValueError(f"{root}: no filesystem for scheme {scheme!r} ({error})") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fsspec_fs))


def _location(template: str, path: str) -> str:
    """A path from `resolve(template)`'s filesystem, spelled the way `template` is."""
    if not is_remote(template):
        return path
    return f"{urlsplit(template).scheme}://{path}"


def file_type(location: str) -> pafs.FileType:
    filesystem, path = resolve(location)
    return filesystem.get_file_info(path).type


def exists(location: str) -> bool:
    return file_type(location) != pafs.FileType.NotFound


def is_file(location: str) -> bool:
    return file_type(location) == pafs.FileType.File


def list_files(location: str, recursive: bool = False) -> list[str]:
    """Files below a folder (or prefix), sorted; empty if it does not exist."""
    filesystem, path = resolve(location)
    selector = pafs.FileSelector(path, recursive=recursive, allow_not_found=True)
    infos = filesystem.get_file_info(selector)
    return sorted(_location(location, info.path) for info in infos if info.type == pafs.FileType.File)


def open_input(location: str) -> pa.NativeFile:
    """A random-access file, for Parquet readers."""
    filesystem, path = resolve(location)
    return filesystem.open_input_file(path)


def open_stream(location: str) -> pa.NativeFile:
    """A sequential read, for whole-file reads (no seeks)."""
    filesystem, path = resolve(location)
    return filesystem.open_input_stream(path)


def read_bytes(location: str) -> bytes:
    with open_input(location) as handle:
        return handle.read()


def temp_name(name: str) -> str:
    """A temporary name for a file about to be published as `name`, unique to this write."""
    return f".{name}.{uuid.uuid4().hex}{TEMP_SUFFIX}"


def is_temp_file(name: str) -> bool:
    """Whether a file name is a temporary one (see `temp_name`), left by a writer killed mid-write."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


class AtomicFile:
    """A file published whole (see the module's docstring), written as a stream so that it need not be held in
    memory (an export's tar shard of 10,000 images): `write()` bytes, then `commit()` to publish or
    `discard()` to leave nothing behind."""

    def __init__(self, location: str, sync: bool = True):
        self.location = location
        self.bytes = 0
        self._sync = sync  # fsync a local file before its rename
        self._temp = join(parent(location), temp_name(name(location)))
        if is_remote(location):
            self._filesystem, self._temp_path = resolve(self._temp)
            self._sink = self._filesystem.open_output_stream(self._temp_path)
        else:
            os.makedirs(os.path.dirname(local_path(location)) or ".", exist_ok=True)
            self._sink = open(local_path(self._temp), "wb")  # closed in commit() or discard()

    def write(self, data: bytes | pa.Buffer) -> int:
        self._sink.write(data)
        self.bytes += len(data)
        return len(data)

    def commit(self, before_publish: Callable[[], None] | None = None) -> None:
        """Publish the file. `before_publish` runs once the data is stored under its temporary name, before it
        takes its final one; if it raises, nothing is published (the caller then discards)."""
        if is_remote(self.location):
            self._sink.close()
            if before_publish is not None:
                before_publish()
            _, final_path = resolve(self.location)
            self._filesystem.move(self._temp_path, final_path)
            return
        temp = local_path(self._temp)
        self._sink.flush()
        if self._sync:
            os.fsync(self._sink.fileno())
        self._sink.close()
        os.chmod(temp, 0o644)
        if before_publish is not None:
            before_publish()
        os.replace(temp, local_path(self.location))

    def discard(self) -> None:
        """Close and delete the temporary file. Used on error paths, so its own failure is logged, not raised
        over the first."""
        try:
            self._sink.close()
            if is_remote(self.location):
                if self._filesystem.get_file_info(self._temp_path).type == pafs.FileType.File:
                    self._filesystem.delete_file(self._temp_path)
            elif os.path.exists(local_path(self._temp)):
                os.unlink(local_path(self._temp))
        except OSError as error:
            logger.warning("could not delete %s: %s", self._temp, error)


def write_bytes(
    location: str,
    data: bytes | pa.Buffer,
    before_publish: Callable[[], None] | None = None,
    sync: bool = True,
) -> int:
    """Publish `data` at `location` whole, or not at all (an `AtomicFile` written at once); returns its size.

    `before_publish` runs after the data is stored under its temporary name and before it takes its
    final one; if it raises, nothing is published."""
    sink = AtomicFile(location, sync=sync)
    try:
        sink.write(data)
        sink.commit(before_publish)
    except BaseException:
        sink.discard()
        raise
    return len(data) if isinstance(data, bytes) else data.size


def delete(location: str) -> None:
    """Delete a file or object; a missing one is fine."""
    filesystem, path = resolve(location)
    if filesystem.get_file_info(path).type == pafs.FileType.File:
        filesystem.delete_file(path)


def remove_temp_files(folder: str) -> int:
    """Delete temporary files left by writers that were killed mid-write; returns how many."""
    leftovers = [f for f in list_files(folder) if is_temp_file(name(f))]
    for location in leftovers:
        delete(location)
    return len(leftovers)
