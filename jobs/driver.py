"""The job: validate, plan, start actors, dispatch shards, record the outcome. Reads top to bottom."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from jobs import cluster
from jobs.config import JobConfig
from jobs.dispatch import Dispatcher, DispatchOutcome
from jobs.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_ROWS_FAILED, OutputError, WorkerStartError
from jobs.jobfile import JOB_FILE, package_versions, utc_now, write_job_file
from jobs.manifest import Manifest, read_manifest
from jobs.planner import plan_shards
from jobs.progress import Progress
from workers.tasks import GenerationDefaults, ShardTask, WorkerSettings
from workers.writer import remove_temp_files

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSummary:
    rows: int
    ok: int
    failed: int
    not_run: int
    shards: int
    shards_failed: int
    seconds: float
    startup_seconds: float
    images_per_s: float
    output: str
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_ROWS_FAILED if self.failed else EXIT_OK


def run_job(config: JobConfig, address: str | None = None, show_progress: bool = True, on_progress=None) -> JobSummary:
    """Run a whole job. `on_progress(rows, failed)`, if given, is called as micro-batches finish."""
    started = time.perf_counter()
    # 1. Validate the whole manifest before anything is written or started.
    manifest = read_manifest(config.manifest)
    shards = plan_shards(manifest, config.shard_size)
    # 2. Claim the output folder and record what the job is.
    output = prepare_output(config.output)
    record = job_record(config, manifest, shards)
    write_job_file(output, record)
    # 3. Start Ray and the actors; they load their models in parallel.
    cluster.connect(address)
    resources = cluster.actor_resources(config)
    actors = cluster.start_workers(worker_settings(config, output, resources), resources, config.resources.workers)
    # 4. Dispatch shards until each has an outcome.
    progress = Progress(total=manifest.rows, enabled=show_progress)

    def advance(rows: int, failed: int) -> None:
        progress.advance(rows, failed)
        if on_progress is not None:
            on_progress(rows, failed)

    dispatcher = Dispatcher(actors, shards, on_progress=advance, on_workers=progress.workers)
    interrupted = False
    try:
        outcome = dispatcher.run()
    except KeyboardInterrupt:
        interrupted = True
        dispatcher.abandon()
        outcome = dispatcher.outcome
    finally:
        progress.close()
        cluster.stop_workers(actors)
        remove_temp_files(output)
    if not outcome.workers and outcome.start_errors:
        _record_end(output, record, "failed", None, outcome)
        raise WorkerStartError(f"no worker could load the models: {outcome.start_errors[0]}")
    # 5. Record and return the outcome.
    summary = summarize(manifest, shards, outcome, output, started, interrupted)
    _record_end(output, record, "interrupted" if interrupted else "finished", summary, outcome)
    return summary


def prepare_output(path: str) -> str:
    """Create the output folder; refuse one that already holds a job, so nothing is mixed or lost."""
    output = Path(path)
    if (output / JOB_FILE).exists():
        raise OutputError(f"{output}: already holds a job ({JOB_FILE}); choose a new output folder or remove it")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{output}: cannot create the output folder ({error.strerror})") from None
    if not os.access(output, os.W_OK):
        raise OutputError(f"{output}: output folder is not writable")
    return str(output.resolve())


def worker_settings(config: JobConfig, output: str, resources: cluster.ActorResources) -> WorkerSettings:
    generation = config.generation
    return WorkerSettings(
        model=config.model.id,
        revision=config.model.revision,
        scheduler=config.model.scheduler,
        dtype=config.model.dtype,
        clip_model=config.clip.model,
        batch_size=config.resources.batch_size,
        job_seed=config.seed,
        defaults=GenerationDefaults(
            steps=generation.steps,
            guidance_scale=generation.guidance_scale,
            width=generation.width,
            height=generation.height,
            negative_prompt=generation.negative_prompt,
        ),
        output_dir=output,
        num_threads=max(1, int(resources.num_cpus)),
    )


def job_record(config: JobConfig, manifest: Manifest, shards: list[ShardTask]) -> dict:
    return {
        "status": "running",
        "config": config.model_dump(mode="json"),
        "manifest": {
            "source": manifest.source,
            "files": [{"path": f.path, "rows": f.rows} for f in manifest.files],
            "rows": manifest.rows,
            "fingerprint": manifest.fingerprint,
        },
        "shards": len(shards),
        "versions": package_versions(),
        "started_at": utc_now(),
        "finished_at": None,
        "counts": None,
    }


def summarize(
    manifest: Manifest, shards: list, outcome: DispatchOutcome, output: str, started: float, interrupted: bool
) -> JobSummary:
    ended = time.perf_counter()
    ok = sum(result.ok for result in outcome.results)
    done = sum(result.rows for result in outcome.results)
    failed = done - ok + sum(failure.shard.rows for failure in outcome.failures)
    first_ready = outcome.first_ready_at or ended
    return JobSummary(
        rows=manifest.rows,
        ok=ok,
        failed=failed,
        not_run=manifest.rows - ok - failed,
        shards=len(shards),
        shards_failed=len(outcome.failures),
        seconds=ended - started,
        startup_seconds=first_ready - started,
        images_per_s=done / (ended - first_ready) if ended > first_ready else 0.0,
        output=output,
        interrupted=interrupted,
    )


def _record_end(output: str, record: dict, status: str, summary: JobSummary | None, outcome: DispatchOutcome) -> None:
    record.update(status=status, finished_at=utc_now())
    record["workers"] = [vars(info) for info in outcome.workers]
    record["failed_shards"] = [{"shard": f.shard.index, "error": f.error} for f in outcome.failures]
    if outcome.start_errors:
        record["worker_start_errors"] = outcome.start_errors
    if summary is not None:
        record["counts"] = {
            "rows": summary.rows,
            "ok": summary.ok,
            "failed": summary.failed,
            "not_run": summary.not_run,
            "shards": summary.shards,
            "shards_failed": summary.shards_failed,
        }
        record["seconds"] = round(summary.seconds, 3)
        record["startup_seconds"] = round(summary.startup_seconds, 3)
        record["images_per_s"] = round(summary.images_per_s, 3)
    write_job_file(output, record)
