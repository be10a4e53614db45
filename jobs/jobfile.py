"""`OUTPUT/job.json`: what a job was asked to do, with what, and how it went."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

JOB_FILE = "job.json"
_PACKAGES = ("genbatch", "torch", "diffusers", "transformers", "ray", "pyarrow", "pydantic", "pillow")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def write_job_file(output_dir: str | Path, record: dict) -> None:
    """Replace job.json atomically, so a reader never sees half a record."""
    target = Path(output_dir) / JOB_FILE
    fd, temp = tempfile.mkstemp(prefix=".job.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2, default=str)
            handle.write("\n")
        os.chmod(temp, 0o644)  # mkstemp creates 0600; job.json is for everyone who reads the output
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
