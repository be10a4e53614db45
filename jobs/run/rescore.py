"""`genbatch rescore RUN --set scores...`: new score columns for a finished run's images, nothing regenerated.

Reads top to bottom: the run's record and its new config, the shards to rescore (verified from their
footers), Ray actors that rescore them shard by shard (workers.rescoring), then job.json with the new
identity, so that `genbatch run` with the new `scores` section finds nothing to do; until then job.json's
`rescoring` names the new job key (genbatch status shows the rescore, not the finished run). The actors go
through the lifecycle a run's do (jobs.run.lifecycle.drive), fed by the same dispatcher
(jobs.pool.dispatch): a shard that fails, or whose actor dies, is retried up to
`resources.max_shard_retries` times, and a dead actor is replaced. An interrupted or failed rescore
leaves each shard either as it was or rescored whole; rerun the same command to finish it (the shards
already carrying the new job key are skipped).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from pydantic import ValidationError

from jobs.config.preflight import check_score_models
from jobs.config.schema import JobConfig, apply_override, describe_validation_error
from jobs.errors import ConfigError, OutputError, RescoreError, WorkerStartError
from jobs.pool import cluster
from jobs.pool.actor_backend import RescoreBackend
from jobs.pool.dispatch import Dispatcher, DispatchOutcome, JobHooks, describe_pool
from jobs.run.lifecycle import drive, new_dispatcher, stop_pool
from jobs.runfolder.jobfile import JobRecord, RescoringRecord, identity_key, read_job_file, utc_now, write_job_file
from jobs.runfolder.lock import OutputLock
from jobs.runfolder.resume import scores_identity
from jobs.runfolder.settings import score_models
from jobs.runfolder.shard_files import shard_file
from workers.io import columns as C
from workers.io import layout, storage
from workers.io.writer import remove_temp_files
from workers.rescoring import rescore_shard
from workers.tasks import RescoreResult, RescoreSettings, RescoreTask

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RescoreSummary:
    output: str
    shards: int  # the run's
    rescored: int  # shards this rescore rewrote (the others already had the new scores when it began)
    rows: int  # rows of the rewritten shards
    images_scored: int
    columns: tuple[str, ...]  # score columns computed afresh
    dropped: tuple[str, ...]  # score columns removed (their scorer was set to null)
    seconds: float
    retries: int = 0  # shard attempts that failed and were run again (jobs.pool.dispatch)
    replaced_workers: int = 0  # actors that died and were replaced

    def as_dict(self) -> dict:
        """The summary as `genbatch rescore --log-format json` prints it."""
        return {**asdict(self), "seconds": round(self.seconds, 3)}


def rescore_run(
    run: str,
    overrides: Sequence[str],
    address: str | None = None,
    forward_actor_logs: bool = True,
    hooks: JobHooks | None = None,
) -> RescoreSummary:
    """Give a finished run the score columns of its config changed by `overrides` (`scores.*` keys only).

    `hooks` follow the actors and shards as in run_job (tests kill an actor from on_worker_ready)."""
    started = time.perf_counter()
    # 1. The run's record, and its config with the new scores; nothing else may change (it would change images).
    output = storage.normalized(run)
    record = read_job_file(output)
    if record is None:
        raise OutputError(f"{output}: no {layout.JOB_FILE}: not the output folder of a genbatch run")
    config = rescored_config(layout.job_file(output), record, overrides)
    check_score_models(config)
    old_identity = record.identity
    new_identity = {key: value for key, value in old_identity.items() if key != "scores"} | scores_identity(config)
    old_key, new_key = identity_key(old_identity), identity_key(new_identity)
    recompute, dropped = changed_columns(old_identity.get("scores", {}), new_identity.get("scores", {}))
    if old_key == new_key:  # the run already has these scores
        return RescoreSummary(output, record.shards, 0, 0, 0, (), (), time.perf_counter() - started)
    with OutputLock(output) as lock:
        # 2. Every shard must be complete, as this run or as the rescored run wrote it.
        remove_temp_files(output)
        todo, rows = shards_to_rescore(output, record.shards, old_key, new_key)
        # 3. Rescore them on actors, shard by shard.
        outcome = DispatchOutcome()
        if todo:
            # Until the end, job.json says a rescore is under way: `genbatch status` shows it (and how far it
            # got, by the shards' footers) instead of the finished run, also after an interruption.
            record.rescoring = RescoringRecord(job_key=new_key, started_at=utc_now(), set=list(overrides))
            write_job_file(output, record)
            settings = _rescore_settings(config, recompute, output, old_key, new_key, lock.token)
            if recompute:
                outcome = score_on_actors(config, settings, todo, address, forward_actor_logs, hooks or JobHooks())
            else:  # columns dropped only: no scorer to load, no image to read; rewritten here, shard by shard
                outcome = drop_columns(settings, todo)
        # 4. Record the new identity: a run with the new scores config is this job, complete.
        _record_rescored(output, record, new_identity, config, overrides, recompute, dropped)
    results = [result for result in outcome.results if isinstance(result, RescoreResult)]
    return RescoreSummary(
        output=output,
        shards=record.shards,
        rescored=len(results),  # every result is a shard that had the old key when this rescore began
        rows=rows,
        images_scored=sum(result.scored for result in results),
        columns=recompute,
        dropped=dropped,
        seconds=time.perf_counter() - started,
        retries=outcome.retries,
        replaced_workers=outcome.replaced_workers,
    )


def _rescore_settings(
    config: JobConfig, recompute: tuple[str, ...], output: str, old_key: str, new_key: str, token: str | None
) -> RescoreSettings:
    return RescoreSettings(
        scores=score_models(config),
        recompute=recompute,
        batch_size=config.resources.batch_size,
        clip_preprocess=config.performance.clip_preprocess,
        output_dir=output,
        old_key=old_key,
        new_key=new_key,
        num_threads=None,  # set by score_on_actors from the actors' CPUs
        run_token=token,
    )


def _record_rescored(
    output: str,
    record: JobRecord,
    identity: dict,
    config: JobConfig,
    overrides: Sequence[str],
    recompute: tuple[str, ...],
    dropped: tuple[str, ...],
) -> None:
    """job.json after a rescore: the new identity and config (a run with them is this job, complete), and
    one more entry in its list of rescores."""
    record.rescoring = None
    record.identity, record.config = identity, config.model_dump(mode="json")
    entry = {"at": utc_now(), "set": list(overrides), "columns": list(recompute), "dropped": list(dropped)}
    record.rescores = [*(record.rescores or []), entry]
    write_job_file(output, record)


def rescored_config(job_file: str, record: JobRecord, overrides: Sequence[str]) -> JobConfig:
    """The run's config (from job.json) with the `scores.*` overrides applied, validated."""
    for override in overrides:
        key = override.partition("=")[0].strip()
        if key != "scores" and not key.startswith("scores."):
            raise ConfigError(
                f"--set {override!r}: rescore changes only scores.* keys; other settings change the images "
                "(run the job again with genbatch run)"
            )
    raw = copy.deepcopy(record.config)
    if not isinstance(raw, dict):
        raise OutputError(f"{job_file}: has no config; it was not written by this genbatch")
    # job.json spells an unset scorer null; `--set scores.pickscore.model=...` needs a section to set it in.
    raw["scores"] = {name: value for name, value in (raw.get("scores") or {}).items() if value is not None}
    for override in overrides:
        apply_override(raw, override, Path(job_file))
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{job_file}: {describe_validation_error(error)}") from None


def changed_columns(old: dict, new: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(columns to compute afresh: set now, and not as before; columns to drop: set before, not now)."""
    recompute = tuple(name for name in C.SCORES if name in new and new[name] != old.get(name))
    dropped = tuple(name for name in C.SCORES if name in old and name not in new)
    return recompute, dropped


def shards_to_rescore(output: str, shards: int, old_key: str, new_key: str) -> tuple[list[RescoreTask], int]:
    """The shards still complete under the old job key, and their rows; a shard must be complete under the old
    key or the new one (jobs.runfolder.shard_files): any other state is refused."""
    todo: list[RescoreTask] = []
    rows = 0
    for index in range(shards):
        file = shard_file(output, index)
        footer = file.verified(old_key)
        if footer is not None:
            todo.append(RescoreTask(index=index, images=footer.rows))
            rows += footer.rows
        elif file.footer is None:
            raise OutputError(
                f"{file.path}: missing or incomplete; rescore needs a finished run (finish it with genbatch run first)"
            )
        elif file.verified(new_key) is None:
            raise OutputError(f"{file.path}: written by another job than {layout.job_file(output)} describes")
    return todo, rows


def drop_columns(settings: RescoreSettings, todo: list[RescoreTask]) -> DispatchOutcome:
    """Rewrite the shards in `todo` without the dropped score columns, on the driver: no actor is started."""
    return DispatchOutcome(results=[rescore_shard(settings, task.index, [], "driver") for task in todo])


def score_on_actors(
    config: JobConfig,
    settings: RescoreSettings,
    todo: list[RescoreTask],
    address: str | None,
    forward_actor_logs: bool,
    hooks: JobHooks,
) -> DispatchOutcome:
    """Rescore `todo` on the `resources.workers` pool (a fixed one: at most one actor per shard) through the
    one actor lifecycle (jobs.run.lifecycle.drive), as a run's shards are: retried up to
    `resources.max_shard_retries` times, dead actors replaced.

    A shard that still fails fails the rescore once the others are done: those are kept, a rerun goes on from them.
    A stop signal is raised again once the actors are stopped: job.json still says a rescore is under way."""
    return drive(_RescoreGroup(config, settings, todo, address, forward_actor_logs, hooks))


class _RescoreGroup:
    """A rescore's actors, as an ActorGroup of the lifecycle. job.json already says a rescore is under way
    (rescore_run), and keeps saying so if the rescore fails or is stopped, so that a rerun goes on."""

    def __init__(
        self,
        config: JobConfig,
        settings: RescoreSettings,
        todo: list[RescoreTask],
        address: str | None,
        forward_actor_logs: bool,
        hooks: JobHooks,
    ):
        self.config, self.settings, self.todo, self.hooks = config, settings, todo, hooks
        self.address, self.forward_actor_logs = address, forward_actor_logs
        self.dispatcher: Dispatcher | None = None

    def start(self) -> None:
        cluster.connect(self.address, self.forward_actor_logs)
        resources = cluster.actor_resources(self.config)
        settings = replace(self.settings, num_threads=max(1, int(resources.num_cpus)))  # known once Ray is connected
        pool = self.config.resources.worker_range()
        workers = None if pool.elastic else min(pool.min, len(self.todo))  # an elastic pool sizes itself to the shards
        backend = RescoreBackend(settings, resources)
        dispatcher = new_dispatcher(backend, self.config, self.todo, self.hooks, workers=workers)
        pool_text = describe_pool(dispatcher.initial_size(), dispatcher.pool)
        logger.info("rescoring %d shards on %s", len(self.todo), pool_text)
        self.dispatcher = dispatcher

    def dispatch(self) -> None:
        assert self.dispatcher is not None
        self.dispatcher.run()

    def fail(self) -> None:
        self.stop(finished=False)

    def stop(self, finished: bool) -> DispatchOutcome:
        # Stopped, and their processes gone, before the lock is let go: no attempt can still be writing.
        stop_pool(self.dispatcher, [self.settings.output_dir])
        return self.dispatcher.outcome if self.dispatcher is not None else DispatchOutcome()

    def record_not_started(self, outcome: DispatchOutcome) -> None:
        raise WorkerStartError(f"no worker could load the scorers: {outcome.start_errors[0]}")

    def end(self, outcome: DispatchOutcome, interrupt: KeyboardInterrupt | None) -> DispatchOutcome:
        if interrupt is not None:
            raise interrupt
        if outcome.failures:
            failed = sorted(outcome.failures, key=lambda failure: failure.shard.index)
            others = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise RescoreError(
                f"shard {failed[0].shard.index}{others} could not be rescored: {failed[0].error}; the "
                f"{len(outcome.results)} shards rescored are kept: rerun to go on"
            )
        return outcome
