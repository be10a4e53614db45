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
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace

from jobs.config.adapters import check_adapter_column
from jobs.config.model_family import check_manifest, resolved_again
from jobs.config.preflight import check_before_start, estimate_memory
from jobs.config.schema import JobConfig
from jobs.config.sweep_plan import SweepRun, check_size, expand_sweep, read_sweep_file, sweep_record, write_sweep_file
from jobs.errors import EXIT_OK, EXIT_ROWS_FAILED, OutputError
from jobs.inputs.manifest import Manifest, read_manifest
from jobs.pool import cluster
from jobs.pool.dispatch import DispatchOutcome, JobHooks
from jobs.run.lifecycle import RunOptions, finish_complete, run_group, summarize
from jobs.run.planning import LockedRun, Run, job_warnings, open_run, plan_run, prepare_output
from jobs.run.progress import announce
from jobs.run.records import JobSummary
from jobs.runfolder.resume import clear_output
from workers.io import layout, storage

logger = logging.getLogger(__name__)

# Config keys that may differ between runs served by the same actors (the rest decide what an actor loads).
_PER_RUN_KEYS = ("manifest", "output", "seed", "shard_size", "generation", "sweep")
_PER_RUN_MODEL_KEYS = ("scheduler",)
_PER_RUN_RESOURCE_KEYS = ("max_shard_retries",)


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
    The arguments are run_job's (jobs.run.driver), applied to every run."""
    started = time.perf_counter()
    options = RunOptions(
        address=address,
        progress=progress,
        hooks=hooks or JobHooks(),
        worker_class=worker_class,
        forward_actor_logs=forward_actor_logs,
        allow_version_change=allow_version_change,
    )
    # 1. Validate every combination, its manifest and its models before anything is written or started.
    sweep_runs, manifests = _checked_runs(config, source, yes)
    output = prepare_output(config.output.path)
    if storage.exists(layout.job_file(output)):
        raise OutputError(f"{output}: holds a single job ({layout.JOB_FILE}); choose another output folder for a sweep")
    with ExitStack() as locks:
        # 2. Lock every run's folder and check what it holds; only then clear (--overwrite) or plan.
        locked = [
            open_run(each.config, manifests[(each.config.manifest, each.config.mode)], each.folder, locks, overwrite)
            for each in sweep_runs
        ]
        runs = []
        for run in locked:
            if overwrite:
                clear_output(run.output)
            runs.append(_plan(run, retry_failed))
        record = sweep_record(config, sweep_runs, [sum(shard.images for shard in run.shards) for run in runs])
        before = read_sweep_file(output) or {}
        if {key: before.get(key) for key in record} != record or any(run.plan.todo for run in runs):
            write_sweep_file(output, record)
        # 3. Finish the runs with nothing to do, then run the others, one group of alike actors at a time.
        summaries = {run.folder: finish_complete(run, started) for run in runs if not run.plan.todo}
        groups = group_runs([run for run in runs if run.folder not in summaries])
        if groups:
            cluster.connect(address, forward_actor_logs, announce=lambda message: announce(message, progress))
        served, not_started = _run_groups(groups, options, started, summaries)
        if served:
            write_sweep_file(output, {**record, "groups": served})
        ordered = [(run.folder, summaries[run.folder]) for run in runs]
        return SweepSummary(output, ordered, time.perf_counter() - started, served, frozenset(not_started))


def _checked_runs(config: JobConfig, source: str, yes: bool) -> tuple[list[SweepRun], dict[tuple[str, str], Manifest]]:
    """Every combination, checked with its manifest and models as a standalone run checks them; and the manifests."""
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
    return sweep_runs, manifests


def _plan(run: LockedRun, retry_failed: bool) -> Run:
    warnings = job_warnings(run.config, run.manifest)
    planned = plan_run(run, retry_failed, warnings, estimate_memory(run.config))
    for warning in warnings:
        logger.warning("%s: %s", run.folder, warning)
    return planned


def _run_groups(
    groups: list[list[Run]], options: RunOptions, started: float, summaries: dict[str, JobSummary]
) -> tuple[list[dict], set[str]]:
    """Run the groups one after another, each run's summary added to `summaries`. Returns each group's
    model, runs and actors as sweep.json records them, and the runs of the groups a stop came before."""
    served: list[dict] = []
    not_started: set[str] = set()
    interrupted = False
    for number, group in enumerate(groups):
        folders = [run.folder for run in group]
        if interrupted:  # the later groups did not start: their folders are as they were
            summaries.update({run.folder: _not_started(run, started) for run in group})
            not_started.update(folders)
            continue
        done = run_group(group, options, started, sweep=True, last=number == len(groups) - 1)
        summaries.update(zip(folders, done.summaries))
        workers = [
            {"name": info.name, "pid": info.pid, "node_ip": info.node_ip, "load_seconds": round(info.load_seconds, 3)}
            for info in done.workers
        ]
        served.append({"model": group[0].config.model.id, "runs": folders, "workers": workers})
        interrupted = any(summary.interrupted for summary in done.summaries)
    return served, not_started


def _not_started(run: Run, started: float) -> JobSummary:
    summary = summarize(run, DispatchOutcome(), {}, started)
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


def group_runs(runs: list[Run]) -> list[list[Run]]:
    """Runs that the same actors can serve, in groups ordered by their first run in the sweep."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(actor_key(run.config), []).append(run)
    return list(groups.values())
