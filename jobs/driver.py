"""The job: validate, plan, resume, start actors, dispatch shards, record the outcome. Reads top to bottom."""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from jobs import cluster, fit, signals, worker_reuse
from jobs.actor_backend import RayBackend
from jobs.adapters import check_adapter_column
from jobs.config import JobConfig
from jobs.dispatch import Dispatcher, DispatchOutcome, JobHooks, describe_pool
from jobs.errors import EXIT_OK, EXIT_ROWS_FAILED, ConfigError, GenbatchError, OutputError, WorkerStartError, one_line
from jobs.jobfile import (
    JobCounts,
    JobRecord,
    ManifestRecord,
    WorkerRecord,
    identity_key,
    package_versions,
    read_job_file,
    utc_now,
    write_job_file,
)
from jobs.lock import OutputLock
from jobs.manifest import Manifest, read_manifest, seed_column_warning
from jobs.model_family import check_manifest, resolved_again
from jobs.planner import plan_shards
from jobs.preflight import check_before_start
from jobs.progress import Progress, announce
from jobs.resume import (
    ResumePlan,
    check_same_job,
    clear_output,
    count_on_disk,
    job_identity,
    plan_resume,
    shard_files_exist,
)
from jobs.settings import worker_settings
from jobs.versions import VersionGuard
from workers import layout, storage
from workers.tasks import ShardResult, WorkerInfo
from workers.writer import ShardFooter, remove_temp_files

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
            return 128 + signal.Signals[self.signal or "SIGINT"].value
        return EXIT_ROWS_FAILED if self.failed or self.not_run else EXIT_OK

    def as_dict(self) -> dict:
        record = asdict(self)
        record = {"rows": record.pop("images"), **record}  # the JSON summary says rows, as job.json does
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
    allow_version_change: bool = False,
) -> JobSummary:
    """Run a job, or finish one that an earlier run on the same output folder started.

    `progress` is "bar", "log" or "off" (see jobs.progress); `worker_class` replaces the actor class
    (benchmarks use a stub that skips the model). A stop signal (jobs.signals.Interrupted, or Ctrl-C's
    KeyboardInterrupt) once the output folder is locked ends the run cleanly: the summary says
    `interrupted`, and counts what is on disk."""
    started = time.perf_counter()
    hooks = hooks or JobHooks()
    if config.sweep:
        raise ConfigError("sweep: a sweep runs with jobs.sweep.run_sweep (genbatch run does), not run_job")
    # 1. Validate the whole manifest, and check that hub models can be had, before anything is written or started.
    manifest = read_manifest(config.manifest, config.mode)
    warnings = job_warnings(config, manifest)
    for warning in warnings:
        logger.warning("%s", warning)
    estimate = check_before_start(config)  # what one actor needs in GPU memory; None on CPUs
    config = resolved_again(config)  # a hub model's family is known now that its model_index.json is cached
    check_manifest(config, manifest)  # columns the model's family cannot use
    check_adapter_column(config, manifest)  # adapter names that model.adapters lacks
    shards = plan_shards(manifest, config.shard_size, config.generation.images_per_prompt)
    identity = job_identity(config, manifest)
    key = identity_key(identity)
    output = prepare_output(config.output.path)
    with OutputLock(output) as lock:
        # 2. Reuse what an earlier run of the same job completed; refuse to mix different jobs.
        if overwrite:
            clear_output(output)
        previous = read_job_file(output)
        remove_temp_files(output)
        if previous is not None and shard_files_exist(output):
            check_same_job(output, previous, identity)
        plan = plan_resume(output, shards, key, retry_failed)
        if previous is not None and not plan.has_shards:
            previous = None  # a folder without a complete shard belongs to no job: start afresh
        record = job_record(config, manifest, identity, len(shards), previous, warnings, estimate)
        if not plan.todo:
            # Every shard is already complete: start nothing; rewrite job.json only if it is lost or does
            # not say so yet (a run killed after its last shard).
            summary = summarize(manifest, shards, plan, DispatchOutcome(), {}, output, started)
            if previous is None or previous.status != "finished":
                record_end(output, record, "finished", summary, DispatchOutcome(), plan.versions)
            return summary
        # 3. Record what the job is, then start Ray and the actors (they load their models in parallel).
        guard = VersionGuard(output, plan.versions, allow_version_change)
        follow = Progress(total=plan.images_to_generate, mode=progress)
        dispatcher: Dispatcher | None = None
        interrupt: KeyboardInterrupt | None = None
        recorded = False  # job.json says this run is running
        try:
            write_job_file(output, record)
            recorded = True
            cluster.connect(address, forward_actor_logs, announce=lambda message: announce(message, progress))
            resources = cluster.actor_resources(config)
            fit.check_fit(config, estimate, cluster.live_nodes())  # before any actor loads the model
            settings = worker_settings(
                config, output, key, max(1, int(resources.num_cpus)), lock.token, plan.images_to_generate
            )

            def advance(images: int, failed: int) -> None:
                follow.advance(images, failed)
                if hooks.on_progress is not None:
                    hooks.on_progress(images, failed)

            def worker_ready(info: WorkerInfo) -> None:
                guard.check(info)
                follow.worker_ready(info.name, info.device, info.load_seconds)
                if hooks.on_worker_ready is not None:
                    hooks.on_worker_ready(info)

            # 4. Dispatch shards until each has an outcome.
            dispatcher = Dispatcher(
                backend=RayBackend(settings, resources, worker_class),
                workers=config.resources.worker_range(),
                shards=plan.todo,
                max_shard_retries=config.resources.max_shard_retries,
                on_progress=advance,
                on_workers=follow.workers,
                on_worker_ready=worker_ready,
                on_shard_done=hooks.on_shard_done,
                on_batch=hooks.on_batch,
            )
            workers = describe_pool(dispatcher.initial_size(), dispatcher.pool)
            announce(f"loading {config.model.id} on {workers}", progress)
            dispatcher.run()
        except KeyboardInterrupt as stop:
            signals.stopping()  # a second signal now would cut the tidying short
            interrupt = stop
            logger.warning("%s: stopping the workers; only complete shards are kept", signals.signal_name_of(stop))
        except BaseException:
            signals.stopping()
            stop_run(dispatcher, output, follow)
            if recorded:
                record_failure(output, record, dispatcher.outcome if dispatcher else DispatchOutcome(), guard.seen)
            raise
        signals.stopping()
        stop_run(dispatcher, output, follow, finished=interrupt is None)
        outcome = dispatcher.outcome if dispatcher is not None else DispatchOutcome()
        if interrupt is None and not outcome.workers and outcome.start_errors:
            # Nothing ran: job.json and the summary count this run's rows as not run, as the disk has them.
            summary = summarize(manifest, shards, plan, outcome, {}, output, started)
            record_failure(output, record, outcome, guard.seen, summary)
            raise WorkerStartError(f"no worker could load the models: {outcome.start_errors[0]}", summary)
        # 5. Record and return the outcome: for an interrupted run, what is on disk now.
        late = {}
        if interrupt is not None:
            accounted = {r.shard for r in outcome.results} | {f.shard.index for f in outcome.failures}
            late = count_on_disk(output, [s for s in plan.todo if s.index not in accounted], key)
        summary = summarize(manifest, shards, plan, outcome, late, output, started, interrupt)
        record_end(output, record, "interrupted" if interrupt else "finished", summary, outcome, guard.seen)
        return summary


def stop_run(dispatcher: Dispatcher | None, output: str, follow: Progress, finished: bool = False) -> None:
    """Stop following, stop the actors (and wait until they are gone), then tidy temporary files.

    A job that `finished` inside `worker_reuse.keep_workers()` parks its loaded actors instead."""
    follow.close()
    if dispatcher is not None:
        dispatcher.abandon()
        parked: list[tuple[int, object, WorkerInfo]] = []
        backend = dispatcher.backend
        if finished and worker_reuse.keeping() and isinstance(backend, RayBackend):
            parked = dispatcher.ready_actors()
            worker_reuse.park(backend.reuse_key, parked)
        kept = {id(handle) for _, handle, _ in parked}
        kept_pids = {(info.node_id, info.pid) for _, _, info in parked}
        leaving = [handle for handle in dispatcher.handles() if id(handle) not in kept]
        # Only the stopped actors' processes are waited for: a parked one lives on.
        processes = [info for info in dispatcher.outcome.workers if (info.node_id, info.pid) not in kept_pids]
        cluster.stop_workers(leaving, processes)
    remove_temp_files(output)


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
        return storage.normalized(path)
    output = Path(path)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"{output}: cannot create the output folder ({error.strerror})") from None
    if not os.access(output, os.W_OK):
        raise OutputError(f"{output}: output folder is not writable")
    for name in layout.FOLDERS:
        folder = output / name
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"{folder}: not a folder; genbatch writes its shard files there")
    return str(output.resolve())


def job_warnings(config: JobConfig, manifest: Manifest) -> list[str]:
    """Settings of the config that the manifest overrides, said once at start and kept in job.json."""
    seeds = seed_column_warning(manifest, config.seed) if config.mode == "generate" else None
    return [seeds] if seeds else []


def job_record(
    config: JobConfig,
    manifest: Manifest,
    identity: dict,
    shards: int,
    previous: JobRecord | None,
    warnings: list[str],
    estimate: fit.Estimate | None = None,
) -> JobRecord:
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
        # What one actor needs in GPU memory (jobs.fit), before it loaded anything; null for CPU actors.
        estimate=estimate.record() if estimate is not None else None,
        versions=package_versions(),
        started_at=(previous.started_at if previous else None) or utc_now(),
        resumed_at=utc_now() if previous else None,
        finished_at=None,
        counts=None,
    )


def summarize(
    manifest: Manifest,
    shards: list,
    plan: ResumePlan,
    outcome: DispatchOutcome,
    late: dict[int, ShardFooter],
    output: str,
    started: float,
    interrupt: KeyboardInterrupt | None = None,
) -> JobSummary:
    """Counts of what is on disk: complete shards from before, this run's results, and (`late`) shards
    that were completed while the run was being stopped."""
    ended = time.perf_counter()
    footers = [*plan.complete.values(), *late.values()]
    # A retry that did not finish left its shard's earlier file in place: that file is what is on disk.
    done = {r.shard for r in outcome.results} | set(late)
    footers += [footer for index, footer in plan.retrying.items() if index not in done]
    ok = sum(f.ok for f in footers) + sum(r.ok for r in outcome.results)
    failed = sum(f.failed for f in footers) + sum(r.failed for r in outcome.results)
    failed += sum(f.shard.images for f in outcome.failures if f.shard.index not in plan.retrying)
    generated = sum(result.generated for result in outcome.results)
    first_ready = outcome.first_ready_at or ended
    return JobSummary(
        images=sum(shard.images for shard in shards),
        ok=ok,
        failed=failed,
        not_run=sum(shard.images for shard in shards) - ok - failed,
        shards=len(shards),
        shards_run=len(plan.todo),
        shards_failed=len(outcome.failures),
        seconds=ended - started,
        startup_seconds=first_ready - started,
        images_per_s=generated / (ended - first_ready) if ended > first_ready else 0.0,
        output=output,
        interrupted=interrupt is not None,
        retries=outcome.retries,
        replaced_workers=outcome.replaced_workers,
        signal=None if interrupt is None else signals.signal_name_of(interrupt),
    )


def record_end(
    output: str,
    record: JobRecord,
    status: str,
    summary: JobSummary | None,
    outcome: DispatchOutcome,
    versions: list[dict | None],
) -> None:
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
