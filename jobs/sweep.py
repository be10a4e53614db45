"""Sweeps: one config, many runs, one Ray job.

`sweep:` maps dotted config keys to lists of values. Every combination is an ordinary run in its own
folder, `OUTPUT/<key=value,...>/`, holding exactly what a standalone `genbatch run` of those settings
writes, job.json included: each run resumes on its own, and so does the sweep.

Runs whose actors would be alike (they differ only in generation settings, scheduler, seed, manifest
or shard size) form a group: one pool of actors loads the models once and serves all of them, the
shards of all its runs in one queue, each shard carrying its run's settings (workers.tasks.RunBinding).
Groups (another model, CLIP model, dtype, batch size, resources, ...) run one after another.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace

from jobs import cluster, fit, signals
from jobs.actor_backend import RayBackend
from jobs.adapters import check_adapter_column
from jobs.config import JobConfig
from jobs.dispatch import Dispatcher, DispatchOutcome, JobHooks, describe_pool
from jobs.driver import (
    JobSummary,
    job_record,
    job_warnings,
    prepare_output,
    record_end,
    record_failure,
    stop_run,
    summarize,
)
from jobs.errors import EXIT_OK, EXIT_ROWS_FAILED, OutputError, WorkerStartError
from jobs.jobfile import JobRecord, identity_key, read_job_file, write_job_file
from jobs.lock import OutputLock
from jobs.manifest import Manifest, read_manifest
from jobs.model_family import check_manifest, resolved_again
from jobs.planner import plan_shards
from jobs.preflight import check_before_start, estimate_memory
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
from jobs.sweep_plan import SweepRun, check_size, expand_sweep, read_sweep_file, sweep_record, write_sweep_file
from jobs.versions import VersionGuard
from workers import layout, storage
from workers.tasks import RunBinding, ShardTask, WorkerInfo
from workers.writer import remove_temp_files

logger = logging.getLogger(__name__)

# Config keys that may differ between runs served by the same actors (the rest decide what an actor loads).
_PER_RUN_KEYS = ("manifest", "output", "seed", "shard_size", "generation", "sweep")
_PER_RUN_MODEL_KEYS = ("scheduler",)
_PER_RUN_RESOURCE_KEYS = ("max_shard_retries",)


@dataclass
class _Run:
    """A run as the sweep's driver holds it, once its folder is locked and its resume is planned."""

    sweep: SweepRun
    manifest: Manifest
    shards: list[ShardTask]
    identity: dict
    key: str
    output: str
    lock: OutputLock
    plan: ResumePlan | None = None
    record: JobRecord = field(init=False)  # its job.json, once planned
    previous_status: str | None = None  # how its job.json said the run before ended
    guard: VersionGuard | None = None


@dataclass(frozen=True)
class SweepSummary:
    output: str
    runs: list[tuple[str, JobSummary]]  # (folder, its summary), in the sweep's order
    seconds: float
    groups: list[dict] = field(default_factory=list)  # per actor group: its model, runs and actors
    not_started: frozenset[str] = frozenset()  # runs of the groups a stop came before: their folders are as they were

    def _total(self, name: str) -> int:
        return sum(getattr(summary, name) for _, summary in self.runs)

    @property
    def images(self) -> int:
        return self._total("images")

    @property
    def ok(self) -> int:
        return self._total("ok")

    @property
    def failed(self) -> int:
        return self._total("failed")

    @property
    def not_run(self) -> int:
        return self._total("not_run")

    @property
    def shards_run(self) -> int:
        return self._total("shards_run")

    @property
    def signal(self) -> str | None:
        return next((summary.signal for _, summary in self.runs if summary.signal), None)

    @property
    def interrupted(self) -> bool:
        return any(summary.interrupted for _, summary in self.runs)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return next(summary.exit_code for _, summary in self.runs if summary.interrupted)
        return EXIT_ROWS_FAILED if self.failed or self.not_run else EXIT_OK

    def as_dict(self) -> dict:
        return {
            "output": self.output,
            "runs": [
                {"folder": folder, **summary.as_dict(), "not_started": folder in self.not_started}
                for folder, summary in self.runs
            ],
            "rows": self.images,
            "ok": self.ok,
            "failed": self.failed,
            "not_run": self.not_run,
            "seconds": round(self.seconds, 3),
            "groups": self.groups,
            "exit_code": self.exit_code,
            **({"signal": self.signal} if self.signal else {}),
        }


def run_sweep(
    config: JobConfig,
    source: str,
    address: str | None = None,
    progress: str = "bar",
    overwrite: bool = False,
    retry_failed: bool = False,
    yes: bool = False,
    hooks: JobHooks | None = None,
    worker_class=None,
    forward_actor_logs: bool = True,
    allow_version_change: bool = False,
) -> SweepSummary:
    """Run (or resume) every combination of `config.sweep`; `source` names the config file in messages.
    The arguments are run_job's (jobs.driver), applied to every run."""
    started = time.perf_counter()
    hooks = hooks or JobHooks()
    # 1. Validate every combination, its manifest and its models before anything is written or started.
    sweep_runs = expand_sweep(config, source)
    check_size(len(sweep_runs), yes, source)
    manifests: dict[tuple[str, str], Manifest] = {}
    checked: set[str] = set()
    for sweep_run in sweep_runs:
        run_config = sweep_run.config
        where = (run_config.manifest, run_config.mode)
        if where not in manifests:
            manifests[where] = read_manifest(*where)
        loads = actor_key(run_config)  # models, scorers, quantization: what the checks look at
        if loads not in checked:
            check_before_start(run_config)
            checked.add(loads)
    # Hub models' families are known now that their model_index.json is cached: their defaults apply.
    sweep_runs = expand_sweep(resolved_again(config), source)
    for sweep_run in sweep_runs:
        run_manifest = manifests[(sweep_run.config.manifest, sweep_run.config.mode)]
        check_manifest(sweep_run.config, run_manifest)
        check_adapter_column(sweep_run.config, run_manifest)  # adapter names that model.adapters lacks
    output = prepare_output(config.output.path)
    if storage.exists(layout.job_file(output)):
        raise OutputError(f"{output}: holds a single job ({layout.JOB_FILE}); choose another output folder for a sweep")
    with ExitStack() as locks:
        # 2. Lock every run's folder and check what it holds; only then clear (--overwrite) or plan.
        runs = [_open(sweep_run, manifests, locks, overwrite) for sweep_run in sweep_runs]
        for run in runs:
            if overwrite:
                clear_output(run.output)
            _plan(run, retry_failed)
        record = sweep_record(config, sweep_runs, [sum(shard.images for shard in run.shards) for run in runs])
        before = read_sweep_file(output) or {}
        if {key: before.get(key) for key in record} != record or any(run.plan and run.plan.todo for run in runs):
            write_sweep_file(output, record)
        # 3. Finish the runs with nothing to do, then run the others, one group of alike actors at a time.
        summaries: dict[str, JobSummary] = {}
        for run in runs:
            if run.plan is not None and not run.plan.todo:
                summaries[run.sweep.folder] = _nothing_to_do(run, started)
        pending = [run for run in runs if run.sweep.folder not in summaries]
        groups = group_runs(pending)
        if groups:
            cluster.connect(address, forward_actor_logs, announce=lambda message: announce(message, progress))
        served: list[dict] = []
        interrupted = False
        not_started: set[str] = set()
        for number, group in enumerate(groups):
            if interrupted:  # the later groups did not start: their folders are as they were
                summaries.update({run.sweep.folder: _not_started(run, started) for run in group})
                not_started.update(run.sweep.folder for run in group)
                continue
            last = number == len(groups) - 1
            done, workers = _run_group(group, progress, hooks, worker_class, allow_version_change, last, started)
            summaries.update(done)
            folders = [run.sweep.folder for run in group]
            served.append({"model": group[0].sweep.config.model.id, "runs": folders, "workers": workers})
            interrupted = any(summary.interrupted for summary in done.values())
        if served:
            write_sweep_file(output, {**record, "groups": served})
        ordered = [(run.sweep.folder, summaries[run.sweep.folder]) for run in runs]
        return SweepSummary(
            output=output,
            runs=ordered,
            seconds=time.perf_counter() - started,
            groups=served,
            not_started=frozenset(not_started),
        )


def _open(sweep_run: SweepRun, manifests: dict[tuple[str, str], Manifest], locks: ExitStack, overwrite: bool) -> _Run:
    """A run's folder, locked, with what it held checked against the run as a standalone run checks it
    (with --overwrite, what it holds is to be cleared: nothing to check)."""
    config = sweep_run.config
    manifest = manifests[(config.manifest, config.mode)]
    shards = plan_shards(manifest, config.shard_size, config.generation.images_per_prompt)
    identity = job_identity(config, manifest)
    output = prepare_output(config.output.path)
    lock = locks.enter_context(OutputLock(output))
    previous = None if overwrite else read_job_file(output)
    remove_temp_files(output)
    if previous is not None and shard_files_exist(output):
        check_same_job(output, previous, identity)
    return _Run(sweep_run, manifest, shards, identity, identity_key(identity), output, lock)


def _plan(run: _Run, retry_failed: bool) -> None:
    config = run.sweep.config
    previous = read_job_file(run.output)  # None after --overwrite cleared it
    run.plan = plan_resume(run.output, run.shards, run.key, retry_failed)
    if previous is not None and not run.plan.has_shards:
        previous = None  # a folder without a complete shard belongs to no job: start afresh
    warnings = job_warnings(config, run.manifest)
    for warning in warnings:
        logger.warning("%s: %s", run.sweep.folder, warning)
    estimate = estimate_memory(config)
    run.record = job_record(config, run.manifest, run.identity, len(run.shards), previous, warnings, estimate)
    run.previous_status = previous.status if previous else None


def _nothing_to_do(run: _Run, started: float) -> JobSummary:
    """A complete run: job.json is rewritten only if it is lost or does not say `finished` yet."""
    assert run.plan is not None
    summary = summarize(run.manifest, run.shards, run.plan, DispatchOutcome(), {}, run.output, started)
    if run.previous_status != "finished":
        record_end(run.output, run.record, "finished", summary, DispatchOutcome(), run.plan.versions)
    return summary


def _not_started(run: _Run, started: float) -> JobSummary:
    assert run.plan is not None
    summary = summarize(run.manifest, run.shards, run.plan, DispatchOutcome(), {}, run.output, started)
    return replace(summary, shards_run=0)


def actor_key(config: JobConfig) -> str:
    """What the actors serving a run load and how they are set up: the config without the keys that may
    differ between the runs one actor serves (generation settings, scheduler, seed, manifest, shards, paths)."""
    settings = config.model_dump(mode="json", exclude=set(_PER_RUN_KEYS))
    for key in _PER_RUN_MODEL_KEYS:
        settings["model"].pop(key)
    for key in _PER_RUN_RESOURCE_KEYS:
        settings["resources"].pop(key)
    settings["output"] = config.output.model_dump(mode="json", exclude={"path"})  # image encoding stays
    return json.dumps(settings, sort_keys=True)


def group_runs(runs: list[_Run]) -> list[list[_Run]]:
    """Runs that the same actors can serve, in groups ordered by their first run in the sweep."""
    groups: dict[str, list[_Run]] = {}
    for run in runs:
        groups.setdefault(actor_key(run.sweep.config), []).append(run)
    return list(groups.values())


def _run_group(
    group: list[_Run],
    progress: str,
    hooks: JobHooks,
    worker_class,
    allow_version_change: bool,
    last: bool,
    started: float,
) -> tuple[dict[str, JobSummary], list[dict]]:
    """One pool of actors for every run of the group, the shards of all its runs in one queue (run by run).
    Returns each run's summary, and the pool's actors as sweep.json records them."""
    first = group[0].sweep.config
    images = sum(run.plan.images_to_generate for run in group if run.plan)
    follow = Progress(total=images, mode=progress)
    for run in group:
        assert run.plan is not None
        run.guard = VersionGuard(run.output, run.plan.versions, allow_version_change)
    spans: dict[str, list[float]] = {}  # run output -> [its first shard's start, its last shard's end]
    by_output = {run.output: run for run in group}
    finished: set[str] = set()  # runs whose every shard is written
    dispatcher: Dispatcher | None = None
    interrupt: KeyboardInterrupt | None = None
    recorded: list[_Run] = []  # runs whose job.json says running
    try:
        for run in group:
            write_job_file(run.output, run.record)
            recorded.append(run)
        resources = cluster.actor_resources(first)
        # The group's actors serve every run of it: the run that needs most memory (resolution, batch) decides.
        estimates = [estimate_memory(run.sweep.config) for run in group]
        fit.check_fit(first, max(estimates, key=lambda e: e.need_bytes if e else 0), cluster.live_nodes())
        threads = max(1, int(resources.num_cpus))
        settings = [
            worker_settings(run.sweep.config, run.output, run.key, threads, run.lock.token, images) for run in group
        ]
        tasks = [replace(shard, run=RunBinding.of(s)) for run, s in zip(group, settings) for shard in run.plan.todo]  # type: ignore[union-attr]

        def advance(done: int, failed: int) -> None:
            follow.advance(done, failed)
            if hooks.on_progress is not None:
                hooks.on_progress(done, failed)

        def worker_ready(info: WorkerInfo) -> None:
            for run in group:
                run.guard.check(info)  # type: ignore[union-attr]
            follow.worker_ready(info.name, info.device, info.load_seconds)
            if hooks.on_worker_ready is not None:
                hooks.on_worker_ready(info)

        def shard_done(result) -> None:
            now = time.perf_counter()
            span = spans.setdefault(result.output_dir, [math.inf, -math.inf])
            span[0], span[1] = min(span[0], now - result.seconds), max(span[1], now)
            # A run whose every shard is written says so at once (status, reports), not when the pool ends.
            run = by_output[result.output_dir]
            mine = _outcome_of(run, dispatcher.outcome)  # type: ignore[union-attr]
            if not mine.failures and len({r.shard for r in mine.results}) == len(run.plan.todo):  # type: ignore[union-attr]
                summary = _run_summary(run, mine, {}, spans, started, None)
                record_end(run.output, run.record, "finished", summary, mine, run.guard.seen)  # type: ignore[union-attr]
                finished.add(run.output)
            if hooks.on_shard_done is not None:
                hooks.on_shard_done(result)

        dispatcher = Dispatcher(
            backend=RayBackend(settings[0], resources, worker_class),
            workers=first.resources.worker_range(),
            shards=tasks,
            max_shard_retries=first.resources.max_shard_retries,
            on_progress=advance,
            on_workers=follow.workers,
            on_worker_ready=worker_ready,
            on_shard_done=shard_done,
            on_batch=hooks.on_batch,
        )
        pool = describe_pool(dispatcher.initial_size(), dispatcher.pool)
        runs = f"{len(group)} run{'s' if len(group) != 1 else ''}"
        announce(f"loading {first.model.id} on {pool} for {runs}", progress)
        dispatcher.run()
    except KeyboardInterrupt as stop:
        signals.stopping()  # a second signal now would cut the tidying short
        interrupt = stop
        logger.warning("%s: stopping the workers; only complete shards are kept", signals.signal_name_of(stop))
    except BaseException:
        signals.stopping()
        stop_run(dispatcher, group[0].output, follow)
        outcome = dispatcher.outcome if dispatcher else DispatchOutcome()
        for run in recorded:
            remove_temp_files(run.output)
            record_failure(run.output, run.record, _outcome_of(run, outcome), run.guard.seen)  # type: ignore[union-attr]
        raise
    if last:
        signals.stopping()
    stop_run(dispatcher, group[0].output, follow, finished=interrupt is None)
    outcome = dispatcher.outcome if dispatcher is not None else DispatchOutcome()
    for run in group:
        remove_temp_files(run.output)
    if interrupt is None and not outcome.workers and outcome.start_errors:
        for run in group:
            record_failure(run.output, run.record, outcome, run.guard.seen)  # type: ignore[union-attr]
        raise WorkerStartError(f"no worker could load the models: {outcome.start_errors[0]}")
    summaries = {}
    for run in group:
        assert run.plan is not None and run.guard is not None
        mine = _outcome_of(run, outcome)
        late = {}
        stopped = interrupt if run.output not in finished else None  # a finished run was not interrupted
        if stopped is not None:
            accounted = {r.shard for r in mine.results} | {f.shard.index for f in mine.failures}
            late = count_on_disk(run.output, [s for s in run.plan.todo if s.index not in accounted], run.key)
        summary = _run_summary(run, mine, late, spans, started, stopped)
        record_end(run.output, run.record, "interrupted" if stopped else "finished", summary, mine, run.guard.seen)
        summaries[run.sweep.folder] = summary
    workers = [
        {"name": info.name, "pid": info.pid, "node_ip": info.node_ip, "load_seconds": round(info.load_seconds, 3)}
        for info in outcome.workers
    ]
    return summaries, workers


def _run_summary(
    run: _Run,
    outcome: DispatchOutcome,
    late: dict,
    spans: dict[str, list[float]],
    started: float,
    interrupt: KeyboardInterrupt | None,
) -> JobSummary:
    """The run's summary as a standalone run's, but with its own images/s: its images over the time from
    its first shard's start to its last shard's end (the pool served other runs before and after)."""
    assert run.plan is not None
    summary = summarize(run.manifest, run.shards, run.plan, outcome, late, run.output, started, interrupt)
    generated = sum(result.generated for result in outcome.results)
    begin, end = spans.get(run.output, [0.0, 0.0])
    return replace(summary, images_per_s=generated / (end - begin) if end > begin else 0.0)


def _outcome_of(run: _Run, outcome: DispatchOutcome) -> DispatchOutcome:
    """The group's outcome as one run sees it: its own shards' results and failures, the pool's actors."""
    return replace(
        outcome,
        results=[result for result in outcome.results if result.output_dir == run.output],
        failures=[f for f in outcome.failures if f.shard.run is not None and f.shard.run.output_dir == run.output],
    )
