"""Opening and planning a run, before any actor starts: its output folder prepared and locked, what the
folder already holds checked against the run (`open_run`), then what is left to do and its job.json drafted
(`plan_run`). A run of its own (jobs.run.driver) and each run of a sweep (jobs.run.sweep) are opened and
planned here, then handed to the group lifecycle (jobs.run.lifecycle).
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from jobs.config import fit
from jobs.config.schema import JobConfig
from jobs.errors import OutputError, one_line
from jobs.inputs.manifest import Manifest, seed_column_warning
from jobs.inputs.planner import plan_shards
from jobs.run.records import job_record
from jobs.runfolder.jobfile import JobRecord, identity_key, read_job_file
from jobs.runfolder.lock import OutputLock
from jobs.runfolder.resume import ResumePlan, check_same_job, job_identity, plan_resume
from jobs.runfolder.shard_files import shard_files_exist
from workers.io import layout, storage
from workers.io.writer import remove_temp_files
from workers.tasks import ShardTask


@dataclass
class LockedRun:
    """A run whose output folder is locked, and checked against what it already holds (`open_run`)."""

    config: JobConfig
    manifest: Manifest
    shards: list[ShardTask]
    identity: dict
    key: str
    output: str
    lock: OutputLock
    folder: str  # its folder's name in a sweep; "" for a run of its own


@dataclass
class Run(LockedRun):
    """A locked run with its resume planned and its job.json drafted (`plan_run`)."""

    plan: ResumePlan
    record: JobRecord  # its job.json
    previous_status: str | None  # how its job.json said the run before ended
    estimate: fit.Estimate | None  # what one of its actors needs in GPU memory; None on CPUs


def open_run(config: JobConfig, manifest: Manifest, folder: str, locks: ExitStack, overwrite: bool) -> LockedRun:
    """A run's folder, locked (until `locks` closes), with what it holds checked against the run (with
    --overwrite, what it holds is to be cleared: nothing to check)."""
    shards = plan_shards(manifest, config.shard_size, config.generation.images_per_prompt)
    identity = job_identity(config, manifest)
    output = prepare_output(config.output.path)
    lock = locks.enter_context(OutputLock(output))
    previous = None if overwrite else read_job_file(output)
    remove_temp_files(output)
    if previous is not None and shard_files_exist(output):
        check_same_job(output, previous, identity)
    return LockedRun(config, manifest, shards, identity, identity_key(identity), output, lock, folder)


def plan_run(run: LockedRun, retry_failed: bool, warnings: list[str], estimate: fit.Estimate | None) -> Run:
    """What is left to do of `run` (what an earlier run completed is reused), and its job.json."""
    previous = read_job_file(run.output)  # None after --overwrite cleared it
    plan = plan_resume(run.output, run.shards, run.key, retry_failed)
    if previous is not None and not plan.has_shards:
        previous = None  # a folder without a complete shard belongs to no job: start afresh
    record = job_record(run.config, run.manifest, run.identity, len(run.shards), previous, warnings, estimate)
    previous_status = previous.status if previous else None
    return Run(**vars(run), plan=plan, record=record, previous_status=previous_status, estimate=estimate)


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
