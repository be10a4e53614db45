"""What a run says of itself when it ends: the summary the CLI prints (JobSummary) and its job.json
(jobs.runfolder.jobfile.JobRecord), drafted when it starts and completed when it ends."""

from __future__ import annotations

import logging
import signal
from dataclasses import asdict, dataclass

from jobs import signals
from jobs.config import fit
from jobs.config.schema import JobConfig
from jobs.errors import EXIT_OK, EXIT_ROWS_FAILED, GenbatchError, one_line
from jobs.inputs.manifest import Manifest
from jobs.pool.dispatch import DispatchOutcome
from jobs.runfolder.jobfile import (
    JobCounts,
    JobRecord,
    ManifestRecord,
    WorkerRecord,
    package_versions,
    utc_now,
    write_job_file,
)
from workers.tasks import ShardResult, WorkerInfo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSummary:
    """Counts of output rows (one per image, so `images`), as the shard files on disk hold them."""

    images: int
    ok: int
    failed: int
    not_run: int
    shards: int
    shards_run: int  # shards this run processed; the rest were already complete
    shards_failed: int
    seconds: float
    startup_seconds: float
    images_per_s: float
    output: str
    interrupted: bool = False
    retries: int = 0
    replaced_workers: int = 0
    signal: str | None = None  # what interrupted the run: SIGINT, SIGTERM or SIGHUP

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return signals.exit_code(signal.Signals[self.signal or "SIGINT"].value)
        return EXIT_ROWS_FAILED if self.failed or self.not_run else EXIT_OK

    def as_dict(self) -> dict:
        record = asdict(self)
        record = {"rows": record.pop("images"), **record}  # the JSON summary says rows, as job.json does
        for key in ("seconds", "startup_seconds", "images_per_s"):
            record[key] = round(record[key], 3)
        return {**record, "exit_code": self.exit_code}


def job_record(
    config: JobConfig,
    manifest: Manifest,
    identity: dict,
    shards: int,
    previous: JobRecord | None,
    warnings: list[str],
    estimate: fit.Estimate | None = None,
) -> JobRecord:
    """A run's job.json as it starts: what the job is, and when it started (a resumed run keeps its first start)."""
    return JobRecord(
        status="running",
        identity=identity,
        config=config.model_dump(mode="json"),
        manifest=ManifestRecord(
            source=manifest.source,
            files=[{"path": f.path, "rows": f.rows} for f in manifest.files],
            rows=manifest.rows,
            fingerprint=manifest.fingerprint,
        ),
        shards=shards,
        warnings=warnings,
        # What one actor needs in GPU memory (jobs.config.fit), before it loaded anything; null for CPU actors.
        estimate=estimate.record() if estimate is not None else None,
        versions=package_versions(),
        started_at=(previous.started_at if previous else None) or utc_now(),
        resumed_at=utc_now() if previous else None,
        finished_at=None,
        counts=None,
    )


def record_failure(
    output: str,
    record: JobRecord,
    outcome: DispatchOutcome,
    versions: list[dict | None],
    summary: JobSummary | None = None,
) -> None:
    """Mark the run failed (with its counts, when they are known); on the way out of an error, so a failure
    here is logged, not raised over it."""
    try:
        record_end(output, record, "failed", summary, outcome, versions)
    except (OSError, GenbatchError) as error:
        logger.warning("could not record the failure in %s: %s", output, one_line(error))


def record_end(
    output: str,
    record: JobRecord,
    status: str,
    summary: JobSummary | None,
    outcome: DispatchOutcome,
    versions: list[dict | None],
) -> None:
    """Complete `record` with how the run ended, its actors and (when known) its counts, and write it."""
    record.status, record.finished_at = status, utc_now()
    record.workers = [_worker_record(info, outcome.results) for info in outcome.workers]
    record.pixel_versions = versions
    record.first_image_seconds = [round(seconds, 3) for seconds in outcome.first_image_seconds]
    record.failed_shards = [{"shard": f.shard.index, "error": f.error} for f in outcome.failures]
    if outcome.start_errors:
        record.worker_start_errors = outcome.start_errors
    if summary is not None:
        if summary.signal:
            record.signal = summary.signal
        record.counts = JobCounts(
            rows=summary.images,  # output rows: one per image
            ok=summary.ok,
            failed=summary.failed,
            not_run=summary.not_run,
            shards=summary.shards,
            shards_run=summary.shards_run,
            shards_failed=summary.shards_failed,
            shard_retries=summary.retries,
            workers_replaced=summary.replaced_workers,
        )
        record.seconds = round(summary.seconds, 3)
        record.startup_seconds = round(summary.startup_seconds, 3)
        record.images_per_s = round(summary.images_per_s, 3)
    write_job_file(output, record)


def _worker_record(info: WorkerInfo, results: list[ShardResult]) -> WorkerRecord:
    """An actor's WorkerInfo (load time, compile choice) with how soon it made images, which only its shard
    results know; null for an actor that wrote no shard."""
    startup = next(
        (r.startup for r in results if r.startup and r.worker == info.name and r.startup.pid == info.pid), None
    )
    return WorkerRecord(
        **vars(info),
        first_batch_seconds=None if startup is None else round(startup.first_batch_seconds, 3),
        first_image_seconds=None if startup is None else round(startup.first_image_seconds, 3),
    )
