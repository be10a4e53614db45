"""`OUTPUT/job.json`: what a job was asked to do, with what, and how it went."""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import datetime, timezone

import pyarrow.fs as pafs

from jobs.errors import OutputError, one_line
from workers import layout, storage
from workers.provenance import installed_versions

_PACKAGES = ("genbatch", "torch", "diffusers", "transformers", "ray", "pyarrow", "pydantic", "pillow")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    return {"python": platform.python_version(), **installed_versions(_PACKAGES)}


def identity_key(identity: dict) -> str:
    """The key of a job's `identity` (see `jobs.resume.job_identity`); each shard's footer carries it."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def write_job_file(output_dir: str, record: dict) -> None:
    """Replace job.json whole, so a reader never sees half a record."""
    text = json.dumps(record, indent=2, default=str) + "\n"
    location = layout.job_file(output_dir)
    try:
        storage.write_bytes(location, text.encode("utf-8"))
    except OSError as error:
        raise OutputError(f"{location}: cannot write ({error.strerror or one_line(error)})") from None


def read_run_record(path: str) -> dict:
    """The job record of the finished or partial run at `path`, for commands that read runs (report,
    export): one line when the location cannot be reached or holds no run."""
    try:
        if storage.file_type(path) == pafs.FileType.File:
            raise OutputError(f"{path}: a file, not a run folder; give the run's output folder")
        record = read_job_file(path)
    except OSError as error:  # the location itself cannot be reached (no bucket, no network)
        raise OutputError(f"{path}: cannot reach the run ({one_line(error)})") from None
    if record is None:
        raise OutputError(f"{path}: not a genbatch run folder (no {layout.JOB_FILE})")
    return record


def read_job_file(output_dir: str) -> dict | None:
    """The folder's job record; None if there is none. One that is not a genbatch record is an error."""
    path = layout.job_file(output_dir)
    kind = storage.file_type(path)
    if kind == pafs.FileType.NotFound:
        return None
    if kind != pafs.FileType.File:
        raise OutputError(f"{path}: not a file; rerun with --overwrite to start over")
    try:
        record = json.loads(storage.read_bytes(path))
    except (OSError, ValueError) as error:
        raise OutputError(f"{path}: unreadable ({one_line(error)}); rerun with --overwrite to start over") from None
    if not (isinstance(record, dict) and isinstance(record.get("identity"), dict) and _is_count(record.get("shards"))):
        raise OutputError(f"{path}: not a genbatch job record; rerun with --overwrite to start over")
    return record


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
