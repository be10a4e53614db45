"""A run of its own: validate, open and plan it (jobs.run.planning), then the lifecycle of a group of one run
(jobs.run.lifecycle). Reads top to bottom."""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack

from jobs.config.adapters import check_adapter_column
from jobs.config.model_family import check_manifest, resolved_again
from jobs.config.preflight import check_before_start
from jobs.config.schema import JobConfig
from jobs.errors import ConfigError
from jobs.inputs.manifest import read_manifest
from jobs.pool.dispatch import JobHooks
from jobs.run.lifecycle import RunOptions, finish_complete, run_group
from jobs.run.planning import job_warnings, open_run, plan_run
from jobs.run.records import JobSummary
from jobs.runfolder.resume import clear_output

logger = logging.getLogger(__name__)


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

    `progress` is "bar", "log" or "off" (see jobs.run.progress); `worker_class` replaces the actor class
    (benchmarks use a stub that skips the model). A stop signal (jobs.signals.Interrupted, or Ctrl-C's
    KeyboardInterrupt) once the output folder is locked ends the run cleanly: the summary says
    `interrupted`, and counts what is on disk."""
    started = time.perf_counter()
    if config.sweep:
        raise ConfigError("sweep: a sweep runs with jobs.run.sweep.run_sweep (genbatch run does), not run_job")
    # 1. Validate the whole manifest, and check that hub models can be had, before anything is written or started.
    manifest = read_manifest(config.manifest, config.mode)
    warnings = job_warnings(config, manifest)
    for warning in warnings:
        logger.warning("%s", warning)
    estimate = check_before_start(config)  # what one actor needs in GPU memory; None on CPUs
    config = resolved_again(config)  # a hub model's family is known now that its model_index.json is cached
    check_manifest(config, manifest)  # columns the model's family cannot use
    check_adapter_column(config, manifest)  # adapter names that model.adapters lacks
    with ExitStack() as locks:
        # 2. Lock the output folder; reuse what an earlier run of the same job completed, refuse to mix jobs.
        locked = open_run(config, manifest, "", locks, overwrite)
        if overwrite:
            clear_output(locked.output)
        run = plan_run(locked, retry_failed, warnings, estimate)
        if not run.plan.todo:
            return finish_complete(run, started)  # every shard is already complete: start nothing
        # 3. Run it: a group of one run (start the actors, dispatch, stop them, record the outcome).
        options = RunOptions(
            address, progress, hooks or JobHooks(), worker_class, forward_actor_logs, allow_version_change
        )
        return run_group([run], options, started).summaries[0]
