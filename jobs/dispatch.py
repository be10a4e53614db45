"""Feeding shards to the actor pool and following their progress until every shard has an outcome."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from workers.tasks import BatchProgress, ShardResult, ShardTask, WorkerInfo

logger = logging.getLogger(__name__)

# Shards queued per actor: one running and one waiting, so an actor never idles between shards.
SHARDS_IN_FLIGHT_PER_ACTOR = 2
_WAIT_SECONDS = 1.0


@dataclass
class ShardFailure:
    shard: ShardTask
    error: str


@dataclass
class DispatchOutcome:
    results: list[ShardResult] = field(default_factory=list)
    failures: list[ShardFailure] = field(default_factory=list)
    workers: list[WorkerInfo] = field(default_factory=list)
    start_errors: list[str] = field(default_factory=list)
    first_ready_at: float | None = None


@dataclass
class _Actor:
    handle: object
    ready_ref: object | None
    running: list = field(default_factory=list)  # ObjectRefGenerators
    alive: bool = True


class Dispatcher:
    """Runs shards on actors; `on_progress(rows, failed)` is called as micro-batches finish."""

    def __init__(self, actors: list, shards: list[ShardTask], on_progress=None, on_workers=None):
        self.actors = [_Actor(handle=a, ready_ref=a.ready.remote()) for a in actors]
        self.pending = deque(shards)
        self.on_progress = on_progress or (lambda rows, failed: None)
        self.on_workers = on_workers or (lambda ready, total: None)
        self.outcome = DispatchOutcome()
        self._tasks: dict = {}  # generator -> (actor, shard)
        self._reported: dict = {}  # generator -> rows already passed to on_progress

    def run(self) -> DispatchOutcome:
        import ray

        while self.pending or self._tasks:
            waitables = [a.ready_ref for a in self.actors if a.alive and a.ready_ref is not None]
            waitables += list(self._tasks)
            if not waitables:
                self._fail_pending("no worker is alive")
                break
            ready, _ = ray.wait(waitables, num_returns=1, timeout=_WAIT_SECONDS)
            for item in ready:
                if item in self._tasks:
                    self._advance(item)
                else:
                    self._worker_ready(item)
            self._submit()
        return self.outcome

    def abandon(self) -> None:
        """Stop following running shards; the caller stops the actors that run them."""
        self._tasks.clear()
        self._reported.clear()

    def _worker_ready(self, ref) -> None:
        import ray

        actor = next(a for a in self.actors if a.ready_ref == ref)
        actor.ready_ref = None
        try:
            info = ray.get(ref)
        except Exception as error:  # noqa: BLE001 - a worker that cannot start is reported, not fatal
            actor.alive = False
            self.outcome.start_errors.append(_describe(error))
            logger.error("a worker failed to start: %s", _describe(error))
        else:
            self.outcome.workers.append(info)
            if self.outcome.first_ready_at is None:
                self.outcome.first_ready_at = time.perf_counter()
        self.on_workers(len(self.outcome.workers), len(self.actors))

    def _advance(self, generator) -> None:
        import ray

        actor, shard = self._tasks[generator]
        try:
            value = ray.get(next(generator))
        except StopIteration:
            self._finish(generator)
            return
        except ray.exceptions.RayActorError as error:
            actor.alive = False
            self._fail(generator, f"worker died: {_describe(error)}")
            return
        except Exception as error:  # noqa: BLE001 - a shard that raises fails alone
            self._fail(generator, _describe(error))
            return
        if isinstance(value, BatchProgress):
            self._reported[generator] += value.rows
            self.on_progress(value.rows, value.failed)
        elif isinstance(value, ShardResult):
            self.outcome.results.append(value)

    def _finish(self, generator) -> None:
        actor, _ = self._tasks.pop(generator)
        self._reported.pop(generator)
        actor.running.remove(generator)

    def _fail(self, generator, error: str) -> None:
        actor, shard = self._tasks[generator]
        logger.error("shard %d failed: %s", shard.index, error)
        self.outcome.failures.append(ShardFailure(shard=shard, error=error))
        unreported = shard.rows - self._reported[generator]
        self.on_progress(unreported, unreported)
        self._finish(generator)

    def _submit(self) -> None:
        for actor in self.actors:
            if not actor.alive or actor.ready_ref is not None:
                continue
            while self.pending and len(actor.running) < SHARDS_IN_FLIGHT_PER_ACTOR:
                shard = self.pending.popleft()
                generator = actor.handle.run_shard.remote(shard)
                actor.running.append(generator)
                self._tasks[generator] = (actor, shard)
                self._reported[generator] = 0

    def _fail_pending(self, error: str) -> None:
        while self.pending:
            shard = self.pending.popleft()
            self.outcome.failures.append(ShardFailure(shard=shard, error=error))
            self.on_progress(shard.rows, shard.rows)


def _describe(error: BaseException) -> str:
    """One line: the remote exception itself, not Ray's wrapper and traceback."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    if type(error).__name__ == "WorkerLoadError":
        text = " ".join(str(error).split())  # already "ExceptionType: message"
    else:
        text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= 500 else text[:497] + "..."
