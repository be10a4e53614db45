"""Feeding shards to the actor pool and following them until every shard has an outcome.

A shard whose actor dies, or that raises, goes back to the queue until it has failed
`max_shard_retries + 1` times; a dead actor is replaced so the pool keeps its size.

The pool is fixed (`resources.workers: N`: N actors, always) or elastic (`auto`, `{min, max}`): it holds
as many actors as the cluster's capacity allows, within [min, max], and re-reads the capacity every
CAPACITY_CHECK_SECONDS and when an actor dies. A node that joins gets new actors; a dead actor is
replaced only while the cluster has room for it (or to keep min), and when the capacity drops below
the pool, actors still starting are stopped, newest first (such as a replacement started before Ray
saw its node go, which cannot be placed). Ready actors are never stopped: they go with their nodes. An actor
that dies while loading after the cluster lost room (Ray placed it on a node it had not yet seen fail) went
with its node, and is treated as a ready one lost with its node would be, in either kind of pool.
The pool grows only once an actor has loaded, and an actor that fails to start is not replaced (it
would most likely fail again): its slot stays empty for the run, in either kind of pool.
The actors are reached through an ActorBackend (jobs.pool.actor_backend): Ray in a job, fakes in tests.
Shards are a run's ShardTasks, or the RescoreTasks of `genbatch rescore` (jobs.run.rescore): the dispatcher
reads only their index, run and size, and takes any ShardResult (RescoreResult is one) as a shard's outcome.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from jobs import signals
from jobs.config.schema import WorkerRange
from jobs.pool.actor_backend import ActorBackend, ActorDied
from workers.errors import WorkerLoadError, describe, one_line
from workers.tasks import BatchProgress, RescoreTask, ShardResult, ShardTask, WorkerInfo

logger = logging.getLogger(__name__)

# Shards queued per actor: one running and one waiting, so an actor never idles between shards.
SHARDS_IN_FLIGHT_PER_ACTOR = 2
_WAIT_SECONDS = 1.0
_STALL_WARNING_SECONDS = 60.0
CAPACITY_CHECK_SECONDS = 10.0  # how often an elastic pool re-reads the cluster's capacity

Shard = ShardTask | RescoreTask


@dataclass
class ShardFailure:
    shard: Shard
    error: str


@dataclass
class DispatchOutcome:
    results: list[ShardResult] = field(default_factory=list)
    failures: list[ShardFailure] = field(default_factory=list)
    workers: list[WorkerInfo] = field(default_factory=list)
    start_errors: list[str] = field(default_factory=list)
    retries: int = 0
    replaced_workers: int = 0
    first_ready_at: float | None = None
    first_image_seconds: list[float] = field(default_factory=list)  # per actor: creation to first image


@dataclass
class JobHooks:
    """Callbacks for a caller that wants to follow the job (progress bars, benchmarks, tests)."""

    on_progress: Callable[[int, int], None] | None = None  # (rows, failed rows) per micro-batch
    on_batch: Callable[[BatchProgress], None] | None = None  # each micro-batch as the actor reported it
    on_worker_ready: Callable[[WorkerInfo], None] | None = None
    on_shard_done: Callable[[ShardResult], None] | None = None  # after the shard's file is written


@dataclass
class _Actor:
    index: int
    handle: object
    ready_ref: object | None
    running: list = field(default_factory=list)  # streams, in the order the actor runs them
    alive: bool = True
    running_at_death: object | None = None  # the stream the actor was running when it died
    created_at: float = field(default_factory=time.perf_counter)
    produced: bool = False
    info: WorkerInfo | None = None  # once its ready call answered
    replacement: bool = False  # started in place of a dead actor
    room_at_start: int | None = None  # the cluster's capacity as last read when it started (see _went_with_a_node)


class Dispatcher:
    def __init__(
        self,
        backend: ActorBackend,
        workers: int | WorkerRange,
        shards: Sequence[Shard],
        max_shard_retries: int,
        on_progress: Callable[[int, int], None],
        on_workers: Callable[[int, int], None],
        on_worker_ready: Callable[[WorkerInfo], None] | None = None,
        on_shard_done: Callable[[ShardResult], None] | None = None,
        on_batch: Callable[[BatchProgress], None] | None = None,
    ):
        self.backend = backend
        self.pool = workers if isinstance(workers, WorkerRange) else WorkerRange(min=workers, max=workers)
        self.actors: list[_Actor] = []  # started by run(), so a stop during start-up still finds them
        self.pending: deque[Shard] = deque(shards)
        self.max_shard_retries = max_shard_retries
        self.on_progress = on_progress
        self.on_workers = on_workers
        self.on_worker_ready = on_worker_ready or (lambda info: None)
        self.on_shard_done = on_shard_done or (lambda result: None)
        self.on_batch = on_batch or (lambda batch: None)
        self.outcome = DispatchOutcome()
        self._attempts: dict[tuple[str, int], int] = {}  # (run, shard index) -> failed attempts
        self._tasks: dict = {}  # stream -> (actor, shard)
        self._reported: dict = {}  # stream -> [rows, failed rows] already passed to on_progress
        self._delivered: set = set()  # streams whose ShardResult arrived: their shard is done
        self._last_event = time.monotonic()
        self._capacity: int | None = None  # as an elastic pool last read it
        self._capacity_read_at = 0.0
        self._failed_starts = 0  # actors that could not start: their slots stay empty
        self._initial_size: int | None = None

    def initial_size(self) -> int:
        """How many actors `run` starts: a fixed pool's size; for an elastic pool what the cluster has room
        for within its bounds, but no more than there are shards (its min all the same)."""
        if self._initial_size is None:
            size = self.pool_size()
            if self.pool.elastic:
                size = max(self.pool.min, min(size, self._unclaimed_shards()))
            self._initial_size = size
        return self._initial_size

    def run(self) -> DispatchOutcome:
        size = self.initial_size()
        while len(self.actors) < size:
            self.actors.append(self._new_actor(len(self.actors)))
        self._report_workers()
        while self.pending or self._tasks:
            signals.raise_if_received()
            waitables = [a.ready_ref for a in self.actors if a.alive and a.ready_ref is not None]
            waitables += list(self._tasks)
            if not waitables:
                if self.outcome.workers:  # actors ran shards, then all died: what is left fails
                    self._fail_pending("no worker is alive")
                # A pool that never loaded ran nothing: its shards stay pending, not run (start_errors say why).
                break
            ready = self.backend.wait(waitables, _WAIT_SECONDS)
            for item in ready:
                self._last_event = time.monotonic()
                if item in self._tasks:
                    self._advance(item)
                else:
                    self._worker_ready(item)
            self._submit()
            if self.pool.elastic and time.monotonic() - self._capacity_read_at >= CAPACITY_CHECK_SECONDS:
                self._resize()
            self._warn_if_stalled()
        return self.outcome

    def pool_size(self) -> int:
        """The number of actors the pool should hold now: a fixed pool's size, or the cluster's capacity
        within the elastic pool's bounds."""
        if not self.pool.elastic:
            return self.pool.min
        capacity = self._read_capacity()
        if capacity is None:  # the pool keeps its size until the next read
            capacity = self._capacity if self._capacity is not None else self.pool.min
            self._capacity = capacity
        return self.pool.size(capacity)

    def _read_capacity(self) -> int | None:
        """The cluster's capacity now, or None (a warning said why) if it cannot be read."""
        self._capacity_read_at = time.monotonic()
        try:
            self._capacity = self.backend.capacity()
        except Exception as error:  # noqa: BLE001 - the caller goes on with what it knew
            logger.warning("cannot read the cluster's capacity: %s", _describe(error))
            return None
        return self._capacity

    def handles(self) -> list:
        return [actor.handle for actor in self.actors]

    def ready_actors(self) -> list[tuple[int, object, WorkerInfo]]:
        """(index, handle, info) of the actors that are alive and loaded."""
        return [(a.index, a.handle, a.info) for a in self.actors if a.alive and a.info is not None]

    def abandon(self) -> None:
        """Stop following running shards; the caller stops the actors that run them."""
        self._tasks.clear()
        self._reported.clear()
        self._delivered.clear()

    def _new_actor(self, index: int, replacement: bool = False) -> _Actor:
        # A replacement may be placed on a node that is going (see _went_with_a_node): its room is read afresh.
        room = self._read_capacity() if replacement else self._capacity
        handle = self.backend.start(index)
        return _Actor(
            index=index,
            handle=handle,
            ready_ref=self.backend.ready(handle),
            replacement=replacement,
            room_at_start=room,
        )

    def _live(self) -> int:
        return sum(1 for actor in self.actors if actor.alive)

    def _unclaimed_shards(self) -> int:
        """Shards waiting beyond one for each actor still starting: a new actor beyond those would idle."""
        return len(self.pending) - sum(1 for actor in self.actors if actor.alive and actor.ready_ref is not None)

    def _resize(self) -> None:
        """Bring an elastic pool to the size the cluster's capacity allows: start actors on new room (no
        more than there are shards for), or stop those still starting that it has no room for any more."""
        before, live = self._capacity, self._live()
        size = self.pool_size()
        added = min(size - live - self._failed_starts, self._unclaimed_shards())
        if added > 0 and self.outcome.workers:  # grown only once an actor loaded: others may fail as it would
            for _ in range(added):
                self.actors.append(self._new_actor(max((actor.index for actor in self.actors), default=-1) + 1))
            grew = before is not None and self._capacity is not None and self._capacity > before
            reason = "a node joined" if grew else f"the cluster has room for {size}"
            logger.warning("pool: %d -> %d workers (%s)", live, live + added, reason)
        elif live > size:
            starting = [actor for actor in reversed(self.actors) if actor.alive and actor.ready_ref is not None]
            stopped = starting[: live - size]
            if not stopped:
                return
            for actor in stopped:
                actor.alive = False
                self.backend.kill(actor.handle)
                if actor.replacement:
                    self.outcome.replaced_workers -= 1
            logger.warning("pool: %d -> %d workers (a node left)", live, live - len(stopped))
        else:
            return
        self._report_workers()

    def _worker_ready(self, ref) -> None:
        actor = next(a for a in self.actors if a.ready_ref == ref)
        actor.ready_ref = None
        try:
            info = self.backend.ready_info(ref)
        except Exception as error:  # noqa: BLE001 - a worker that cannot start is reported, not fatal
            actor.alive = False
            if isinstance(error, ActorDied) and self._went_with_a_node(actor):
                self._lost_while_loading(actor)
            else:
                self._failed_starts += 1
                self.outcome.start_errors.append(_describe(error))
                logger.warning("worker-%d failed to start: %s", actor.index, _describe(error))
        else:
            actor.info = info
            self.outcome.workers.append(info)
            self.on_worker_ready(info)
            if self.outcome.first_ready_at is None:
                self.outcome.first_ready_at = time.perf_counter()
        self._report_workers()

    def _went_with_a_node(self, actor: _Actor) -> bool:
        """Whether an actor whose process died while it loaded went with its node: the cluster has less room
        than when it started. Ray places an actor (a replacement, often) on a node it has not yet seen fail.
        Otherwise it died loading (out of memory, a crash) and would most likely die again: a failed start."""
        if actor.room_at_start is None:
            return False
        room = self._read_capacity()
        return room is not None and room < actor.room_at_start

    def _lost_while_loading(self, actor: _Actor) -> None:
        """A loading actor lost with its node: as for a ready actor's, its slot is started again where the pool
        keeps it, or the pool shrinks."""
        self.backend.kill(actor.handle)  # "unavailable" may yet come back: it must not hold a place
        if self._keeps_the_slot():
            logger.warning("worker-%d could not start: its node left; starting it again", actor.index)
            self.actors.append(self._new_actor(actor.index, replacement=actor.replacement))
            return
        if actor.replacement:
            self.outcome.replaced_workers -= 1
        live = self._live()
        logger.warning("worker-%d could not start: its node left", actor.index)
        logger.warning("pool: %d -> %d workers (a node left)", live + 1, live)

    def _keeps_the_slot(self) -> bool:
        """Whether the slot of an actor that just died is filled again: a fixed pool's always, an elastic
        pool's up to its min, and beyond it while the cluster has room."""
        live = self._live()
        return live < self.pool.min or (self.pool.elastic and live + self._failed_starts < self.pool_size())

    def _advance(self, stream) -> None:
        actor, _ = self._tasks[stream]
        try:
            value = self.backend.next(stream)
        except StopIteration:
            self._finish(stream)
            return
        except ActorDied as error:
            if stream in self._delivered:  # the shard was written before the actor died
                self._finish(stream)
                return
            self._actor_died(actor, error)
            running = stream is actor.running_at_death
            self._shard_failed(stream, f"worker died: {_describe(error)}", charged=running)
            return
        except Exception as error:  # noqa: BLE001 - a shard that raises fails alone
            self._shard_failed(stream, _describe(error))
            return
        if isinstance(value, BatchProgress):
            if not actor.produced:
                actor.produced = True
                self.outcome.first_image_seconds.append(time.perf_counter() - actor.created_at)
            self._reported[stream][0] += value.images
            self._reported[stream][1] += value.failed
            self.on_progress(value.images, value.failed)
            self.on_batch(value)
        elif isinstance(value, ShardResult):
            self._delivered.add(stream)
            self.outcome.results.append(value)
            self.on_shard_done(value)

    def _actor_died(self, actor: _Actor, error: ActorDied) -> None:
        """Replace a dead actor once, whichever of its shards reports the death first."""
        if not actor.alive:
            return
        actor.alive = False
        # An actor runs its shards one at a time, in order: the first unfinished one was running, the rest queued.
        unfinished = [stream for stream in actor.running if stream not in self._delivered]
        actor.running_at_death = unfinished[0] if unfinished else None
        # "Unavailable" can be temporary: make sure the old actor cannot come back and compete.
        self.backend.kill(actor.handle)
        if self._keeps_the_slot():
            logger.warning("worker-%d died (%s); starting a replacement", actor.index, _describe(error))
            self.actors.append(self._new_actor(actor.index, replacement=True))
            self.outcome.replaced_workers += 1
        else:
            live = self._live()
            logger.warning("worker-%d died (%s)", actor.index, _describe(error))
            logger.warning("pool: %d -> %d workers (a node left)", live + 1, live)
        self._report_workers()

    def _shard_failed(self, stream, error: str, charged: bool = True) -> None:
        """Requeue the shard, or fail it after its retries. Only an attempt that ran is `charged`: a shard
        that was only queued on an actor that died goes back to the queue as it was."""
        _, shard = self._tasks[stream]
        # Rows this attempt already reported are taken back, so progress counts each row once.
        rows, failed = self._reported[stream]
        self.on_progress(-rows, -failed)
        self._finish(stream)
        if not charged:
            logger.info("shard %d was queued on a worker that died; requeued", shard.index)
            self.pending.appendleft(shard)
            return
        # A sweep's runs share the queue, and each numbers its shards from 0.
        run = (shard.run.output_dir if shard.run is not None else "", shard.index)
        attempts = self._attempts.get(run, 0) + 1
        self._attempts[run] = attempts
        if attempts <= self.max_shard_retries:
            logger.warning("shard %d failed (attempt %d), retrying: %s", shard.index, attempts, error)
            self.outcome.retries += 1
            self.pending.appendleft(shard)
        else:
            logger.error("shard %d failed %d times, giving up: %s", shard.index, attempts, error)
            self.outcome.failures.append(ShardFailure(shard=shard, error=error))
            self.on_progress(shard.images_to_generate, shard.images_to_generate)

    def _finish(self, stream) -> None:
        actor, _ = self._tasks.pop(stream)
        self._reported.pop(stream)
        self._delivered.discard(stream)
        actor.running.remove(stream)

    def _submit(self) -> None:
        for actor in self.actors:
            if not actor.alive or actor.ready_ref is not None:
                continue
            while self.pending and len(actor.running) < SHARDS_IN_FLIGHT_PER_ACTOR:
                shard = self.pending.popleft()
                stream = self.backend.run_shard(actor.handle, shard)
                actor.running.append(stream)
                self._tasks[stream] = (actor, shard)
                self._reported[stream] = [0, 0]

    def _fail_pending(self, error: str) -> None:
        while self.pending:
            shard = self.pending.popleft()
            self.outcome.failures.append(ShardFailure(shard=shard, error=error))
            self.on_progress(shard.images_to_generate, shard.images_to_generate)

    def _report_workers(self) -> None:
        ready = sum(1 for a in self.actors if a.alive and a.ready_ref is None)
        self.on_workers(ready, sum(1 for a in self.actors if a.alive))

    def _warn_if_stalled(self) -> None:
        if not self._tasks and time.monotonic() - self._last_event > _STALL_WARNING_SECONDS:
            starting = sum(1 for a in self.actors if a.alive and a.ready_ref is not None)
            logger.warning(
                "waiting for workers: none ready, %d starting (loading models, or no free resources)", starting
            )
            self._last_event = time.monotonic()


def describe_pool(count: int, pool: WorkerRange) -> str:
    """`2 workers`, or for an elastic pool `2 workers (auto, up to 8)`."""
    text = f"{count} worker{'s' if count != 1 else ''}"
    if not pool.elastic:
        return text
    if pool.max is None:
        bounds = "" if pool.min == 1 else f", at least {pool.min}"
    else:
        bounds = f", up to {pool.max}" if pool.min == 1 else f", {pool.min} to {pool.max}"
    return f"{text} (auto{bounds})"


def _describe(error: BaseException) -> str:
    """One line: "ExceptionType: message" of the actor's exception (the backend took off Ray's wrapper)."""
    text = one_line(error) if isinstance(error, (ActorDied, WorkerLoadError)) else describe(error)  # those are worded
    return text if len(text) <= 500 else text[:497] + "..."
