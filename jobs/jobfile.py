"""`OUTPUT/job.json`: what a job was asked to do, with what, and how it went."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone

from jobs.errors import OutputError, one_line
from workers import layout, storage
from workers.provenance import installed_versions

_PACKAGES = ("genbatch", "torch", "diffusers", "transformers", "ray", "pyarrow", "pydantic", "pillow")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    return {"python": platform.python_version(), **installed_versions(_PACKAGES)}


def write_job_file(output_dir: str, record: dict) -> None:
    """Replace job.json whole, so a reader never sees half a record."""
    text = json.dumps(record, indent=2, default=str) + "\n"
    location = layout.job_file(output_dir)
    try:
        storage.write_bytes(location, text.encode("utf-8"))
    except OSError as error:
        raise OutputError(f"{location}: cannot write ({error.strerror or one_line(error)})") from None
