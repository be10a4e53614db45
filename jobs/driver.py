"""The job: validate, plan, resume, start actors, dispatch shards, record the outcome. Reads top to bottom."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from jobs import cluster
from jobs.config import JobConfig
from jobs.dispatch import Dispatcher, DispatchOutcome, JobHooks
from jobs.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_ROWS_FAILED, OutputError, WorkerStartError, one_line
from jobs.jobfile import package_versions, utc_now, write_job_file
from jobs.lock import OutputLock
from jobs.manifest import Manifest, read_manifest
from jobs.planner import plan_shards
from jobs.progress import Progress, announce
from jobs.resume import ResumePlan, check_same_job, clear_output, identity_key, job_identity, plan_resume, read_job_file
from workers import storage
from workers.shard_stats import STATS_DIR
from workers.tasks import FastPaths, GenerationDefaults, ImageEncoding, WorkerInfo, WorkerSettings
from workers.writer import DATA_DIR, remove_temp_files

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSummary:
    rows: int
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

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_ROWS_FAILED if self.failed or self.not_run else EXIT_OK

    def as_dict(self) -> dict:
        record = asdict(self)
        for key in ("seconds", "startup_seconds", "images_per_s"):
            record[key] = round(record[key], 3)
        return {**record, "exit_code": self.exit_code}


def run_job(
    config: JobConfig,
    address: str | None = None,
    progress: str = "bar",
    overwrite: bool = False,
    retry_failed: bool = False,
    hooks: JobHooks | None = None,
    worker_class=None,
    forward_actor_logs: bool = True,
) -> JobSummary:
    """Run a job, or finish one that an earlier run on the same output folder started.

    `progress` is "bar", "log" or "off" (see jobs.progress); `worker_class` replaces the actor class
    (benchmarks use a stub that skips the model)."""
    started = time.perf_counter()
    hooks = hooks or JobHooks()
    # 1. Validate the whole manifest before anything is written or started.
    manifest = read_manifest(config.manifest, config.mode)
    shards = plan_shards(manifest, config.shard_size, config.generation.images_per_prompt)
    identity = job_identity(config, manifest)
    key = identity_key(identity)
    output = prepare_output(config.output.path)
    with OutputLock(output):
        # 2. Reuse what an earlier run of the same job completed; refuse to mix different jobs.
        previous = read_job_file(output)
        if previous is not None and overwrite:
            clear_output(output)
            previous = None
        if previous is not None:
            check_same_job(output, previous, identity)
        remove_temp_files(output)
        plan = plan_resume(output, shards, key, retry_failed)
        if not plan.todo:
            # Every shard is already complete: rewrite nothing, start nothing.
            return summarize(manifest, shards, plan, DispatchOutcome(), output, started, interrupted=False)
        # 3. Record what the job is, then start Ray and the actors (they load their models in parallel).
        record = job_record(config, manifest, identity, len(shards), previous)
        write_job_file(output, record)
        cluster.connect(address, forward_actor_logs, announce=lambda message: announce(message, progress))
        resources = cluster.actor_resources(config)
        settings = worker_settings(config, output, resources, key)
        workers = config.resources.workers
        announce(f"loading {config.model.id} on {workers} worker{'s' if workers > 1 else ''}", progress)
        # 4. Dispatch shards until each has an outcome.
        follow = Progress(total=sum(s.outputs for s in plan.todo), mode=progress)

        def advance(rows: int, failed: int) -> None:
            follow.advance(rows, failed)
            if hooks.on_progress is not None:
                hooks.on_progress(rows, failed)

        def worker_ready(info: WorkerInfo) -> None:
            follow.worker_ready(info.name, info.device, info.load_seconds)
            if hooks.on_worker_ready is not None:
                hooks.on_worker_ready(info)

        dispatcher = Dispatcher(
            start_actor=lambda index: cluster.start_worker(settings, resources, index, worker_class),
            workers=config.resources.workers,
            shards=plan.todo,
            max_shard_retries=config.resources.max_shard_retries,
            on_progress=advance,
            on_workers=follow.workers,
            on_worker_ready=worker_ready,
            on_shard_done=hooks.on_shard_done,
            on_batch=hooks.on_batch,
        )
        interrupted = False
        try:
            outcome = dispatcher.run()
        except KeyboardInterrupt:
            interrupted = True
            dispatcher.abandon()
            outcome = dispatcher.outcome
        finally:
            follow.close()
            cluster.stop_workers(dispatcher.handles(), dispatcher.outcome.workers)
            remove_temp_files(output)
        if not outcome.workers and outcome.start_errors:
            _record_end(output, record, "failed", None, outcome)
            raise WorkerStartError(f"no worker could load the models: {outcome.start_errors[0]}")
        # 5. Record and return the outcome.
        summary = summarize(manifest, shards, plan, outcome, output, started, interrupted)
        _record_end(output, record, "interrupted" if interrupted else "finished", summary, outcome)
        return summary


def prepare_output(path: str) -> str:
    """Create the output folder (it may already hold this job's earlier output)."""
    if storage.is_remote(path):
        # Buckets have no folders to create (keys appear as shards are published): check the bucket is there.
        try:
            found = storage.exists(storage.bucket(path))
        except OSError as error:
            raise OutputError(f"{path}: cannot reach the output location ({one_line(error)})") from None
        if not found:
            raise OutputError(f"{path}: bucket {storage.bucket(path)} does not exist")
        return path.rstrip("/")
    output = Path(path)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{output}: cannot create the output folder ({error.strerror})") from None
    if not os.access(output, os.W_OK):
        raise OutputError(f"{output}: output folder is not writable")
    for name in (DATA_DIR, STATS_DIR):
        folder = output / name
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"{folder}: not a folder; genbatch writes its shard files there")
    return str(output.resolve())


def worker_settings(config: JobConfig, output: str, resources: cluster.ActorResources, key: str) -> WorkerSettings:
    generation = config.generation
    return WorkerSettings(
        model=config.model.id,
        revision=config.model.revision,
        variant=config.model.variant,
        mode=config.mode,
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
            strength=generation.strength,
            init_image_policy=generation.init_image_policy,
        ),
        output_dir=output,
        job_key=key,
        num_threads=max(1, int(resources.num_cpus)),
        encoding=ImageEncoding(
            format=config.output.image_format,
            png_compress_level=config.output.png_compress_level,
            quality=config.output.quality,
        ),
        fast=FastPaths(**config.performance.model_dump()),
    )


def job_record(config: JobConfig, manifest: Manifest, identity: dict, shards: int, previous: dict | None) -> dict:
    return {
        "status": "running",
        "identity": identity,
        "config": config.model_dump(mode="json"),
        "manifest": {
            "source": manifest.source,
            "files": [{"path": f.path, "rows": f.rows} for f in manifest.files],
            "rows": manifest.rows,
            "fingerprint": manifest.fingerprint,
        },
        "shards": shards,
        "versions": package_versions(),
        "started_at": (previous or {}).get("started_at") or utc_now(),
        "resumed_at": utc_now() if previous else None,
        "finished_at": None,
        "counts": None,
    }


def summarize(
    manifest: Manifest,
    shards: list,
    plan: ResumePlan,
    outcome: DispatchOutcome,
    output: str,
    started: float,
    interrupted: bool,
) -> JobSummary:
    ended = time.perf_counter()
    footers = list(plan.complete.values())
    ok = sum(f.ok for f in footers) + sum(r.ok for r in outcome.results)
    failed = sum(f.failed for f in footers) + sum(r.failed for r in outcome.results)
    failed += sum(failure.shard.outputs for failure in outcome.failures)
    done = sum(result.rows for result in outcome.results)
    first_ready = outcome.first_ready_at or ended
    return JobSummary(
        rows=sum(shard.outputs for shard in shards),
        ok=ok,
        failed=failed,
        not_run=sum(shard.outputs for shard in shards) - ok - failed,
        shards=len(shards),
        shards_run=len(plan.todo),
        shards_failed=len(outcome.failures),
        seconds=ended - started,
        startup_seconds=first_ready - started,
        images_per_s=done / (ended - first_ready) if ended > first_ready else 0.0,
        output=output,
        interrupted=interrupted,
        retries=outcome.retries,
        replaced_workers=outcome.replaced_workers,
    )


def _record_end(output: str, record: dict, status: str, summary: JobSummary | None, outcome: DispatchOutcome) -> None:
    record.update(status=status, finished_at=utc_now())
    record["workers"] = [vars(info) for info in outcome.workers]
    record["first_image_seconds"] = [round(seconds, 3) for seconds in outcome.first_image_seconds]
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
            "shards_run": summary.shards_run,
            "shards_failed": summary.shards_failed,
            "shard_retries": summary.retries,
            "workers_replaced": summary.replaced_workers,
        }
        record["seconds"] = round(summary.seconds, 3)
        record["startup_seconds"] = round(summary.startup_seconds, 3)
        record["images_per_s"] = round(summary.images_per_s, 3)
    write_job_file(output, record)
