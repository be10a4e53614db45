"""The one lifecycle of a group of actors (`drive`), which every command that drives actors goes through: a
run is a group of one run (jobs.run.driver), a sweep runs one group per kind of actor (jobs.run.sweep),
and a rescore is a group of scoring actors (jobs.run.rescore). The runs come opened and planned
(jobs.run.planning).

Step by step: the work is recorded as under way, Ray and the pool start; the shards go through one
dispatcher; a stop signal ends dispatching cleanly, a failure is recorded; the actors are stopped (or
parked, jobs.pool.worker_reuse) and temporary files removed; if no actor could load, that is recorded and
raised; the end is recorded. A group of runs (`run_group`) records each step in each run's job.json, with
the counts of what is on disk.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from jobs import signals
from jobs.config import fit
from jobs.config.schema import JobConfig
from jobs.errors import WorkerStartError
from jobs.pool import cluster, worker_reuse
from jobs.pool.actor_backend import ActorBackend, RayBackend
from jobs.pool.dispatch import Dispatcher, DispatchOutcome, JobHooks, describe_pool
from jobs.run.planning import Run
from jobs.run.progress import Progress, announce
from jobs.run.records import JobSummary, record_end, record_failure
from jobs.runfolder.jobfile import write_job_file
from jobs.runfolder.resume import count_on_disk
from jobs.runfolder.settings import worker_settings
from jobs.runfolder.versions import VersionGuard
from workers.io.writer import ShardFooter, remove_temp_files
from workers.tasks import RescoreTask, RunBinding, ShardResult, ShardTask, WorkerInfo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    """How the runs of a group are driven: run_job's arguments (jobs.run.driver), the same for every run of a sweep."""

    address: str | None = None
    progress: str = "bar"  # "bar", "log" or "off" (jobs.run.progress)
    hooks: JobHooks = field(default_factory=JobHooks)
    worker_class: Any = None  # replaces the actor class (benchmarks use a stub that skips the model)
    forward_actor_logs: bool = True
    allow_version_change: bool = False


@dataclass(frozen=True)
class GroupResult:
    summaries: list[JobSummary]  # one per run, in the group's order
    workers: list[WorkerInfo]  # the pool's actors


# 1. The lifecycle of a group of actors, and a group of runs served by one pool of them.

Result = TypeVar("Result", covariant=True)


class ActorGroup(Protocol[Result]):
    """What a command does at each step of the one lifecycle (`drive`)."""

    def start(self) -> None:
        """Record that the work is under way, then connect to Ray and start the pool (actors load in parallel)."""

    def dispatch(self) -> None:
        """Run the shards until each has an outcome."""

    def fail(self) -> None:
        """On the way out of an error: stop the actors, and record the failure."""

    def stop(self, finished: bool) -> DispatchOutcome:
        """Stop the actors (or park them, if `finished`), wait until they are gone, tidy the folders."""

    def record_not_started(self, outcome: DispatchOutcome) -> None:
        """No actor could load: record it, and raise WorkerStartError."""

    def end(self, outcome: DispatchOutcome, interrupt: KeyboardInterrupt | None) -> Result:
        """Record the end (of work stopped by `interrupt`, if any); what the command returns."""


def drive(group: ActorGroup[Result], last: bool = True) -> Result:
    """Take `group` through the lifecycle. A stop signal (jobs.signals.Interrupted, or Ctrl-C's
    KeyboardInterrupt) ends dispatching cleanly and is handed to `end`; any other error stops the actors,
    is recorded, and is raised. A group that is not the `last` (of a sweep) leaves stop signals live for
    the next."""
    interrupt: KeyboardInterrupt | None = None
    try:
        # 1. Record the work, then start Ray and the actors.
        group.start()
        # 2. Dispatch shards until each has an outcome.
        group.dispatch()
    except KeyboardInterrupt as stop:
        signals.stopping()  # a second signal now would cut the tidying short
        interrupt = stop
        logger.warning("%s: stopping the workers; only complete shards are kept", signals.signal_name_of(stop))
    except BaseException:
        signals.stopping()
        group.fail()
        raise
    # 3. Stop the actors (park them if kept) and tidy the folders.
    if last:
        signals.stopping()
    outcome = group.stop(finished=interrupt is None)
    # 4. If no actor could load, nothing ran: recorded and raised.
    if interrupt is None and nothing_started(outcome):
        group.record_not_started(outcome)
    # 5. Record the end: for interrupted work, what is on disk now.
    return group.end(outcome, interrupt)


def run_group(
    runs: list[Run], options: RunOptions, started: float, sweep: bool = False, last: bool = True
) -> GroupResult:
    """Run the shards left to do of `runs` on one pool of actors, in one queue (run by run).

    In a `sweep`, each run says it finished as soon as its shards are written and has its own images/s.
    A stop signal ends the runs cleanly: their summaries say `interrupted`, and count what is on disk."""
    return drive(_Group(runs, options, started, sweep), last)


class _Group:
    """A group of runs (an ActorGroup): the state its steps and the dispatcher's callbacks share."""

    def __init__(self, runs: list[Run], options: RunOptions, started: float, sweep: bool):
        self.runs, self.options, self.started, self.sweep = runs, options, started, sweep
        self.follow = Progress(total=sum(run.plan.images_to_generate for run in runs), mode=options.progress)
        self.guards = {
            run.output: VersionGuard(run.output, run.plan.versions, options.allow_version_change) for run in runs
        }
        self.by_output = {run.output: run for run in runs}
        self.recorded: list[Run] = []  # runs whose job.json says running
        self.dispatcher: Dispatcher | None = None
        self.spans: dict[str, list[float]] = {}  # run output -> [its first shard's start, its last shard's end]
        self.finished: set[str] = set()  # runs of a sweep whose every shard is written

    def start(self) -> None:
        # Each run's job.json says it is running before anything starts.
        for run in self.runs:
            write_job_file(run.output, run.record)
            self.recorded.append(run)
        first, options = self.runs[0].config, self.options
        cluster.connect(
            options.address, options.forward_actor_logs, announce=lambda message: announce(message, options.progress)
        )
        resources = cluster.actor_resources(first)
        # The group's actors serve every run of it: the run that needs most memory (resolution, batch) decides.
        estimate = max((run.estimate for run in self.runs), key=lambda e: e.need_bytes if e else 0)
        fit.check_fit(first, estimate, cluster.live_nodes())  # before any actor loads the model
        threads, images = max(1, int(resources.num_cpus)), self.follow.total
        settings = [
            worker_settings(run.config, run.output, run.key, threads, run.lock.token, images) for run in self.runs
        ]
        # Each shard carries its run's settings: one actor serves every run of the group.
        tasks = [replace(shard, run=RunBinding.of(s)) for run, s in zip(self.runs, settings) for shard in run.plan.todo]
        backend = RayBackend(settings[0], resources, options.worker_class)
        self.dispatcher = new_dispatcher(backend, first, tasks, self._hooks(), self.follow.workers)
        pool = describe_pool(self.dispatcher.initial_size(), self.dispatcher.pool)
        count = len(self.runs)
        for_runs = f" for {count} run{'s' if count != 1 else ''}" if self.sweep else ""
        announce(f"loading {first.model.id} on {pool}{for_runs}", options.progress)

    def dispatch(self) -> None:
        assert self.dispatcher is not None
        self.dispatcher.run()

    def _hooks(self) -> JobHooks:
        hooks = self.options.hooks

        def advance(images: int, failed: int) -> None:
            self.follow.advance(images, failed)
            if hooks.on_progress is not None:
                hooks.on_progress(images, failed)

        def worker_ready(info: WorkerInfo) -> None:
            for guard in self.guards.values():
                guard.check(info)
            self.follow.worker_ready(info.name, info.device, info.load_seconds)
            if hooks.on_worker_ready is not None:
                hooks.on_worker_ready(info)

        def shard_done(result: ShardResult) -> None:
            if self.sweep:
                self._note_shard(result)
            if hooks.on_shard_done is not None:
                hooks.on_shard_done(result)

        return replace(hooks, on_progress=advance, on_worker_ready=worker_ready, on_shard_done=shard_done)

    def _note_shard(self, result: ShardResult) -> None:
        """A sweep's run whose every shard is written says so at once (status, reports), not when the pool ends."""
        assert self.dispatcher is not None
        now = time.perf_counter()
        span = self.spans.setdefault(result.output_dir, [math.inf, -math.inf])
        span[0], span[1] = min(span[0], now - result.seconds), max(span[1], now)
        run = self.by_output[result.output_dir]
        mine = self.outcome_of(run, self.dispatcher.outcome)
        if not mine.failures and len({r.shard for r in mine.results}) == len(run.plan.todo):
            summary = self.summary(run, mine, {}, None)
            record_end(run.output, run.record, "finished", summary, mine, self.guards[run.output].seen)
            self.finished.add(run.output)

    def fail(self) -> None:
        """On the way out of an error: stop the actors, and record each run that said running as failed."""
        outcome = self.stop()
        for run in self.recorded:
            record_failure(run.output, run.record, self.outcome_of(run, outcome), self.guards[run.output].seen)

    def stop(self, finished: bool = False) -> DispatchOutcome:
        stop_pool(self.dispatcher, [run.output for run in self.runs], self.follow, park=finished)
        return self.dispatcher.outcome if self.dispatcher is not None else DispatchOutcome()

    def record_not_started(self, outcome: DispatchOutcome) -> None:
        # A run of its own says in job.json and its summary that its rows were not run, as the disk has them.
        summary = None if self.sweep else summarize(self.runs[0], outcome, {}, self.started)
        for run in self.runs:
            record_failure(run.output, run.record, outcome, self.guards[run.output].seen, summary)
        raise WorkerStartError(f"no worker could load the models: {outcome.start_errors[0]}", summary)

    def end(self, outcome: DispatchOutcome, interrupt: KeyboardInterrupt | None) -> GroupResult:
        return GroupResult([self.end_run(run, outcome, interrupt) for run in self.runs], outcome.workers)

    def end_run(self, run: Run, outcome: DispatchOutcome, interrupt: KeyboardInterrupt | None) -> JobSummary:
        mine = self.outcome_of(run, outcome)
        stopped = interrupt if run.output not in self.finished else None  # a finished run was not interrupted
        late: dict[int, ShardFooter] = {}
        if stopped is not None:
            accounted = {r.shard for r in mine.results} | {f.shard.index for f in mine.failures}
            late = count_on_disk(run.output, [s for s in run.plan.todo if s.index not in accounted], run.key)
        summary = self.summary(run, mine, late, stopped)
        status = "interrupted" if stopped else "finished"
        record_end(run.output, run.record, status, summary, mine, self.guards[run.output].seen)
        return summary

    def summary(
        self, run: Run, outcome: DispatchOutcome, late: dict, interrupt: KeyboardInterrupt | None
    ) -> JobSummary:
        """A sweep's run has its own images/s: its images over the time from its first shard's start to its
        last shard's end (the pool served other runs before and after)."""
        summary = summarize(run, outcome, late, self.started, interrupt)
        if not self.sweep:
            return summary
        generated = sum(result.generated for result in outcome.results)
        begin, end = self.spans.get(run.output, [0.0, 0.0])
        return replace(summary, images_per_s=generated / (end - begin) if end > begin else 0.0)

    def outcome_of(self, run: Run, outcome: DispatchOutcome) -> DispatchOutcome:
        """The group's outcome as a sweep's run sees it: its own shards' results and failures, the pool's actors."""
        if not self.sweep:
            return outcome
        return replace(
            outcome,
            results=[result for result in outcome.results if result.output_dir == run.output],
            failures=[f for f in outcome.failures if f.shard.run is not None and f.shard.run.output_dir == run.output],
        )


# 2. The pool of actors, as the groups of run, sweep and rescore start and stop it.


def new_dispatcher(
    backend: ActorBackend,
    config: JobConfig,
    shards: Sequence[ShardTask | RescoreTask],
    hooks: JobHooks,
    on_workers: Callable[[int, int], None] = lambda ready, alive: None,
    workers: int | None = None,
) -> Dispatcher:
    """A dispatcher of `shards` over the `resources.workers` pool (or `workers` actors), with the config's retries;
    `on_workers` is told how many actors are ready and alive."""
    return Dispatcher(
        backend=backend,
        workers=config.resources.worker_range() if workers is None else workers,
        shards=shards,
        max_shard_retries=config.resources.max_shard_retries,
        on_progress=hooks.on_progress or (lambda images, failed: None),
        on_workers=on_workers,
        on_worker_ready=hooks.on_worker_ready,
        on_shard_done=hooks.on_shard_done,
        on_batch=hooks.on_batch,
    )


def stop_pool(
    dispatcher: Dispatcher | None, outputs: list[str], follow: Progress | None = None, park: bool = False
) -> None:
    """Stop following, stop the actors (and wait until they are gone), then remove what killed attempts left
    half-written in `outputs`. With `park` (a job that finished) inside `worker_reuse.keep_workers()`, the
    loaded actors are parked instead."""
    if follow is not None:
        follow.close()
    if dispatcher is not None:
        dispatcher.abandon()
        parked: list[tuple[int, object, WorkerInfo]] = []
        backend = dispatcher.backend
        if park and worker_reuse.keeping() and isinstance(backend, RayBackend):
            parked = dispatcher.ready_actors()
            worker_reuse.park(backend.reuse_key, parked)
        kept = {id(handle) for _, handle, _ in parked}
        kept_pids = {(info.node_id, info.pid) for _, _, info in parked}
        leaving = [handle for handle in dispatcher.handles() if id(handle) not in kept]
        # Only the stopped actors' processes are waited for: a parked one lives on.
        processes = [info for info in dispatcher.outcome.workers if (info.node_id, info.pid) not in kept_pids]
        cluster.stop_workers(leaving, processes)
    for output in outputs:
        remove_temp_files(output)


def nothing_started(outcome: DispatchOutcome) -> bool:
    """No actor could load its models (or scorers): nothing ran."""
    return not outcome.workers and bool(outcome.start_errors)


# 3. A run's summary, and the end of a run with nothing left to do.


def summarize(
    run: Run,
    outcome: DispatchOutcome,
    late: dict[int, ShardFooter],
    started: float,
    interrupt: KeyboardInterrupt | None = None,
) -> JobSummary:
    """Counts of what is on disk: complete shards from before, this run's results, and (`late`) shards
    that were completed while the run was being stopped."""
    plan, ended = run.plan, time.perf_counter()
    footers = [*plan.complete.values(), *late.values()]
    # A retry that did not finish left its shard's earlier file in place: that file is what is on disk.
    done = {r.shard for r in outcome.results} | set(late)
    footers += [footer for index, footer in plan.retrying.items() if index not in done]
    ok = sum(f.ok for f in footers) + sum(r.ok for r in outcome.results)
    failed = sum(f.failed for f in footers) + sum(r.failed for r in outcome.results)
    failed += sum(f.shard.images for f in outcome.failures if f.shard.index not in plan.retrying)
    generated = sum(result.generated for result in outcome.results)
    first_ready = outcome.first_ready_at or ended
    images = sum(shard.images for shard in run.shards)
    return JobSummary(
        images=images,
        ok=ok,
        failed=failed,
        not_run=images - ok - failed,
        shards=len(run.shards),
        shards_run=len(plan.todo),
        shards_failed=len(outcome.failures),
        seconds=ended - started,
        startup_seconds=first_ready - started,
        images_per_s=generated / (ended - first_ready) if ended > first_ready else 0.0,
        output=run.output,
        interrupted=interrupt is not None,
        retries=outcome.retries,
        replaced_workers=outcome.replaced_workers,
        signal=None if interrupt is None else signals.signal_name_of(interrupt),
    )


def finish_complete(run: Run, started: float) -> JobSummary:
    """A run with nothing left to do starts nothing: job.json is rewritten only if it is lost or does not
    say `finished` yet (a run killed after its last shard)."""
    summary = summarize(run, DispatchOutcome(), {}, started)
    if run.previous_status != "finished":
        record_end(run.output, run.record, "finished", summary, DispatchOutcome(), run.plan.versions)
    return summary
