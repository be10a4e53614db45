"""Local paths and object-store URIs behind one small API.

A location is a local path or a URI: `s3://bucket/prefix`, `gs://bucket/prefix`, or anything else that
pyarrow.fs or fsspec resolves (`memory://`, `abfs://`, ...). Credentials come from the usual environment
of whichever process touches the location (AWS_*, GOOGLE_APPLICATION_CREDENTIALS, instance roles):
the driver reads manifests and job.json, each actor reads its rows and writes its shards itself.

Writes are published whole: local files are written under a temporary name, synced and renamed;
objects are uploaded under a temporary key and then moved (a server-side copy) to their final key, so
no reader ever sees a half object under a final name.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from workers import layout  # the module, not its names: layout joins its paths with this one's `join`

logger = logging.getLogger(__name__)


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


def write_bytes(location: str, data: bytes | pa.Buffer, before_publish: Callable[[], None] | None = None) -> None:
    """Publish `data` at `location` whole, or not at all (see the module's docstring).

    `before_publish` runs after the data is stored under its temporary name and before it takes its
    final one; if it raises, nothing is published."""
    temp = join(parent(location), layout.temp_name(name(location)))
    if is_remote(location):
        filesystem, final_path = resolve(location)
        _, temp_path = resolve(temp)
        try:
            with filesystem.open_output_stream(temp_path) as sink:
                sink.write(data)
            if before_publish is not None:
                before_publish()
            filesystem.move(temp_path, final_path)
        except BaseException:
            _delete_quietly(filesystem, temp_path)
            raise
        return
    path, temp = local_path(location), local_path(temp)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        with open(temp, "wb") as sink:
            sink.write(memoryview(data))
            sink.flush()
            os.fsync(sink.fileno())
        os.chmod(temp, 0o644)
        if before_publish is not None:
            before_publish()
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def delete(location: str) -> None:
    """Delete a file or object; a missing one is fine."""
    filesystem, path = resolve(location)
    if filesystem.get_file_info(path).type == pafs.FileType.File:
        filesystem.delete_file(path)


def remove_temp_files(folder: str) -> int:
    """Delete temporary files left by writers that were killed mid-write; returns how many."""
    leftovers = [f for f in list_files(folder) if layout.is_temp_file(name(f))]
    for location in leftovers:
        delete(location)
    return len(leftovers)


def _delete_quietly(filesystem: pafs.FileSystem, path: str) -> None:
    """Delete if present. Used on error paths too, so its own failure is logged, not raised over the first."""
    try:
        if filesystem.get_file_info(path).type == pafs.FileType.File:
            filesystem.delete_file(path)
    except OSError as error:
        logger.warning("could not delete %s: %s", path, error)
