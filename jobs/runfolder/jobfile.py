"""`OUTPUT/job.json`: what a job was asked to do, with what, and how it went; written and read here only.

`JobRecord` is the file's one type. Reading checks every field it knows: job.json files are edited by hand,
copied between versions and cut short by full disks, and a field of the wrong type is one line naming the file
and the key (`OUTPUT/job.json: key 'counts.ok' should be a whole number >= 0, not "10"`), never a traceback.
Fields a file lacks stay absent when it is written back, and keys this version does not know are kept, so an
older job.json reads, and is rewritten, as it was.
"""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import datetime, timezone
from typing import Annotated, Any

import pyarrow.fs as pafs
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

from jobs.errors import OutputError, one_line
from jobs.runfolder.status_fields import COUNT, FLAG, LIST, NUMBER, OBJECT, POSITIVE, TEXT, TIME, Check, Fields, shown
from workers.io import layout, storage
from workers.io.provenance import installed_versions

_PACKAGES = ("genbatch", "torch", "diffusers", "transformers", "ray", "pyarrow", "pydantic", "pillow")


def _checked(check: Check, required: bool = False) -> BeforeValidator:
    """A field's check as status_fields words it; null is absent (an error only where the field is `required`)."""
    test, wanted = check

    def validate(value: Any) -> Any:
        if value is None:
            if required:
                raise PydanticCustomError("missing", "is missing")
            return None
        if not test(value):
            raise PydanticCustomError(
                "genbatch", "should be {wanted}, not {value}", {"wanted": wanted, "value": shown(value)}
            )
        return value

    return BeforeValidator(validate)


Count = Annotated[int, _checked(COUNT, required=True)]
OptionalCount = Annotated[int | None, _checked(COUNT)]
OptionalNumber = Annotated[int | float | None, _checked(NUMBER)]  # an int stays an int: values are written back as read
OptionalText = Annotated[str | None, _checked(TEXT)]
OptionalTime = Annotated[str | None, _checked(TIME)]
OptionalFlag = Annotated[bool | None, _checked(FLAG)]
OptionalObject = Annotated[dict | None, _checked(OBJECT)]
OptionalList = Annotated[list | None, _checked(LIST)]


class _Part(BaseModel):
    model_config = ConfigDict(extra="allow")  # keys of other versions are kept as they are


class ManifestRecord(_Part):
    source: OptionalText = None
    files: OptionalList = None  # [{path, rows}]
    rows: Count  # prompt rows (an output row is an image: see JobRecord.rows)
    fingerprint: OptionalText = None


class JobCounts(_Part):
    """Output rows (one per image) and shards as the run counted them when it ended."""

    rows: OptionalCount = None
    ok: Count
    failed: Count
    not_run: OptionalCount = None
    shards: OptionalCount = None
    shards_run: OptionalCount = None
    shards_failed: OptionalCount = None
    shard_retries: OptionalCount = None
    workers_replaced: OptionalCount = None


class WorkerRecord(_Part):
    """An actor of the last run: its WorkerInfo (workers.tasks), with how soon it made images."""

    name: OptionalText = None
    device: OptionalText = None
    dtype: OptionalText = None
    scheduler: OptionalText = None
    load_seconds: OptionalNumber = None
    compile: OptionalFlag = None
    compile_cache_hit: OptionalFlag = None
    first_batch_seconds: OptionalNumber = None  # null for an actor that wrote no shard
    first_image_seconds: OptionalNumber = None


class RescoringRecord(_Part):
    """A `genbatch rescore` under way (or stopped before it finished): the job key its shards get."""

    job_key: Annotated[str, _checked(TEXT, required=True)]
    started_at: OptionalTime = None
    set: OptionalList = None  # the --set overrides


_PART = (lambda value: isinstance(value, dict | _Part), OBJECT[1])  # as read, or as built by the writer
OptionalManifest = Annotated[ManifestRecord | None, _checked(_PART)]
OptionalCounts = Annotated[JobCounts | None, _checked(_PART)]
OptionalRescoring = Annotated[RescoringRecord | None, _checked(_PART)]
Workers = Annotated[list[Annotated[WorkerRecord, _checked(_PART, required=True)]] | None, _checked(LIST)]

# Written only when they say something (absent, not null, otherwise).
_ABSENT_WHEN_NULL = ("worker_start_errors", "signal", "rescoring")


class JobRecord(_Part):
    """job.json, in the order its keys are written. `identity` and `shards` are what make it a genbatch record."""

    status: OptionalText = None  # running, finished, interrupted or failed
    identity: dict  # everything that changes the job's images or scores (jobs.runfolder.resume.job_identity)
    config: OptionalObject = None  # the JobConfig, as JSON (read back as a JobConfig by rescore)
    manifest: OptionalManifest = None
    shards: Count
    warnings: OptionalList = None
    estimate: OptionalObject = None  # what one actor needs in GPU memory (jobs.config.fit); null for CPU actors
    versions: OptionalObject = None  # the driver's packages
    started_at: OptionalTime = None
    resumed_at: OptionalTime = None
    finished_at: OptionalTime = None
    counts: OptionalCounts = None  # recorded when a run ends
    workers: Workers = None
    pixel_versions: OptionalList = None  # the library versions that decided the shards' pixels
    first_image_seconds: OptionalList = None
    failed_shards: OptionalList = None
    worker_start_errors: OptionalList = None
    signal: OptionalText = None  # what interrupted the run
    seconds: OptionalNumber = None
    startup_seconds: OptionalNumber = None
    images_per_s: OptionalNumber = None
    rescoring: OptionalRescoring = None
    rescores: OptionalList = None  # each rescore: when, its --set, columns computed and dropped

    @property
    def key(self) -> str:
        return identity_key(self.identity)

    def images_per_prompt(self, path: str) -> int:
        """config.generation.images_per_prompt (1 where the config does not say); `path` names job.json in errors."""
        return Fields(path, self.config or {}, "config.").get("generation.images_per_prompt", POSITIVE, 1)

    def to_json(self) -> str:
        absent = {name for name in _ABSENT_WHEN_NULL if getattr(self, name) is None}
        record = self.model_dump(exclude_unset=True, exclude=absent)
        return json.dumps(record, indent=2, default=str) + "\n"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    return {"python": platform.python_version(), **installed_versions(_PACKAGES)}


def identity_key(identity: dict) -> str:
    """The key of a job's `identity` (see `jobs.runfolder.resume.job_identity`); each shard's footer carries it."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def write_job_file(output_dir: str, record: JobRecord) -> None:
    """Replace job.json whole, so a reader never sees half a record."""
    text = record.to_json()
    location = layout.job_file(output_dir)
    try:
        storage.write_bytes(location, text.encode("utf-8"))
    except OSError as error:
        raise OutputError(f"{location}: cannot write ({error.strerror or one_line(error)})") from None


def read_run_record(path: str) -> JobRecord:
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


def read_job_file(output_dir: str) -> JobRecord | None:
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
    try:
        return JobRecord.model_validate(record)
    except ValidationError as error:
        first = error.errors()[0]
        problem = "is missing" if first["type"] == "missing" else first["msg"]
        raise OutputError(f"{path}: key '{_dotted(first['loc'])}' {problem}") from None


def _dotted(loc: tuple) -> str:
    """A pydantic error's location as the messages name keys: `workers[0].load_seconds`."""
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else f".{part}" if key else str(part)
    return key


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
