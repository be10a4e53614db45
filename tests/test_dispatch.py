"""The dispatcher's decisions (retries, replacements, progress taken back), with fake actors in this process.

No Ray: FakeBackend runs each actor's shards one at a time, in order, as a Ray actor does, and a
fault table says what goes wrong where. Actors are named `index#start`: `0#2` is the replacement
of actor 0. Every run is deterministic: `wait` answers with the first waitable that has an answer.
"""

from __future__ import annotations

import logging
import signal
import time
from types import SimpleNamespace

import pytest

from jobs import dispatch, signals
from jobs.actor_backend import ActorDied
from jobs.dispatch import Dispatcher
from workers.errors import WorkerLoadError
from workers.tasks import BatchProgress, ShardResult, ShardTask, ShardWorker, WorkerInfo

IMAGES_PER_SHARD = 4
BATCH = 2  # images per BatchProgress: two micro-batches per shard
DIED = "ActorDiedError: The actor died unexpectedly before finishing this task."
# Fault table values, keyed by (actor name, shard index) or (actor name, "ready").
DIE = "die"  # the actor's process dies after the shard's first micro-batch (or while it loads)
DIE_AFTER_RESULT = "die after result"  # ... after the shard's ShardResult arrived, before its stream ended
CLOCK = SimpleNamespace(now=0.0)  # the dispatcher's monotonic clock: only a wait that times out moves it


class Crash(Exception):
    """Raised inside a FakeWorker: its process dies here."""


class FakeWorker(ShardWorker):
    """Micro-batches of BATCH images, then the result. `faults[(name, shard)]`: DIE, DIE_AFTER_RESULT, or an
    exception raised after the first micro-batch; `faults[(name, "ready")]`: DIE or an exception ready() raises."""

    def __init__(self, name: str, faults: dict, runs: list):
        self.name = name
        self.faults = faults
        self.runs = runs

    def ready(self) -> WorkerInfo:
        fault = self.faults.get((self.name, "ready"))
        if fault == DIE:
            raise Crash
        if isinstance(fault, Exception):
            raise fault
        return WorkerInfo(
            name=self.name, device="cpu", dtype="float32", scheduler="fake", load_seconds=0.0, pid=0, node_id=""
        )

    def run_shard(self, task: ShardTask):
        self.runs.append((self.name, task.index))
        fault = self.faults.get((self.name, task.index))
        for done in range(0, task.images_to_generate, BATCH):
            if done and fault == DIE:
                raise Crash
            if done and isinstance(fault, Exception):
                raise fault
            yield BatchProgress(shard=task.index, images=BATCH, failed=0)
        yield ShardResult(
            shard=task.index,
            images=task.images,
            ok=task.images,
            failed=0,
            file=f"shard-{task.index}.parquet",
            worker=self.name,
            seconds=0.0,
            generated=task.images_to_generate,
        )
        if fault == DIE_AFTER_RESULT:
            raise Crash


class FakeActor:
    def __init__(self, name: str, worker: FakeWorker):
        self.name = name
        self.worker = worker
        self.alive = True
        self.queue: list[Stream] = []  # shards not finished, in the order the actor runs them


class ReadyCall:
    def __init__(self, actor: FakeActor, waits: int):
        self.actor = actor
        self.waits = waits  # waits that pass before it has an answer: the actor is still loading


class Stream:
    def __init__(self, actor: FakeActor, items):
        self.actor = actor
        self.items = items


class FakeBackend:
    """An ActorBackend of FakeWorkers. `slow_starts[name]`: waits that time out (moving CLOCK) before that
    actor's ready call has an answer."""

    def __init__(self, faults: dict | None = None, slow_starts: dict | None = None):
        self.faults = faults or {}
        self.slow_starts = slow_starts or {}
        self.started: list[str] = []
        self.killed: list[str] = []
        self.runs: list[tuple[str, int]] = []  # (actor, shard) as each attempt starts running

    def start(self, index: int) -> FakeActor:
        name = f"{index}#{sum(1 for started in self.started if started.startswith(f'{index}#')) + 1}"
        self.started.append(name)
        return FakeActor(name, FakeWorker(name, self.faults, self.runs))

    def ready(self, handle: FakeActor) -> ReadyCall:
        return ReadyCall(handle, self.slow_starts.get(handle.name, 0))

    def ready_info(self, call: ReadyCall) -> WorkerInfo:
        try:
            return call.actor.worker.ready()
        except Crash:
            call.actor.alive = False
            raise ActorDied(DIED) from None

    def run_shard(self, handle: FakeActor, shard: ShardTask) -> Stream:
        stream = Stream(handle, handle.worker.run_shard(shard))
        handle.queue.append(stream)
        return stream

    def wait(self, waitables: list, timeout: float) -> list:
        # A ready call answers once its waits have passed; a stream when its actor runs it, or is dead.
        for item in waitables:
            if isinstance(item, ReadyCall) and item.waits == 0:
                return [item]
            if isinstance(item, Stream) and (not item.actor.alive or item is item.actor.queue[0]):
                return [item]
        loading = [item for item in waitables if isinstance(item, ReadyCall)]
        assert loading, "nothing can answer: the dispatcher would wait forever"
        for call in loading:
            call.waits -= 1
        CLOCK.now += timeout
        return []

    def next(self, stream: Stream):
        actor = stream.actor
        if not actor.alive:
            raise ActorDied(DIED)
        try:
            return next(stream.items)
        except Crash:
            actor.alive = False
            raise ActorDied(DIED) from None
        except Exception:  # StopIteration, or the shard raised: the actor goes on with its next shard
            actor.queue.remove(stream)
            raise

    def kill(self, handle: FakeActor) -> None:
        handle.alive = False
        self.killed.append(handle.name)


def shards(count: int) -> list[ShardTask]:
    return [
        ShardTask(
            index=i,
            file="prompts.parquet",
            start=i * IMAGES_PER_SHARD,
            stop=(i + 1) * IMAGES_PER_SHARD,
            first_row=i * IMAGES_PER_SHARD,
            has_id_column=True,
        )
        for i in range(count)
    ]


class Run:
    """One dispatch, with everything the dispatcher told its callbacks."""

    def __init__(self, backend: FakeBackend, workers: int, shard_count: int, max_shard_retries: int = 1):
        self.backend = backend
        self.progress: list[tuple[int, int]] = []
        self.worker_counts: list[tuple[int, int]] = []
        self.done: list[int] = []
        self.batches: list[int] = []
        self.dispatcher = Dispatcher(
            backend=backend,
            workers=workers,
            shards=shards(shard_count),
            max_shard_retries=max_shard_retries,
            on_progress=lambda rows, failed: self.progress.append((rows, failed)),
            on_workers=lambda ready, alive: self.worker_counts.append((ready, alive)),
            on_shard_done=lambda result: self.done.append(result.shard),
            on_batch=lambda batch: self.batches.append(batch.shard),
        )

    def run(self):
        self.outcome = self.dispatcher.run()
        return self.outcome

    @property
    def progress_sum(self) -> tuple[int, int]:
        return sum(rows for rows, _ in self.progress), sum(failed for _, failed in self.progress)

    @property
    def taken_back(self) -> list[tuple[int, int]]:
        return [event for event in self.progress if event[0] < 0]

    def ran_on(self) -> dict[int, str]:
        return {result.shard: result.worker for result in self.outcome.results}

    def failed(self) -> list[tuple[int, str]]:
        return [(failure.shard.index, failure.error) for failure in self.outcome.failures]


@pytest.fixture(autouse=True)
def fake_clock(monkeypatch):
    """The stall warning's clock is CLOCK, so a minute of waiting takes no time."""
    CLOCK.now = 0.0
    monkeypatch.setattr(dispatch, "time", SimpleNamespace(monotonic=lambda: CLOCK.now, perf_counter=time.perf_counter))


def test_two_actors_run_two_shards_each_with_two_in_flight():
    run = Run(FakeBackend(), workers=2, shard_count=4)
    outcome = run.run()
    # Actor 0 is ready first and takes SHARDS_IN_FLIGHT_PER_ACTOR shards; actor 1 the next two.
    assert run.backend.runs == [("0#1", 0), ("0#1", 1), ("1#1", 2), ("1#1", 3)]
    assert run.ran_on() == {0: "0#1", 1: "0#1", 2: "1#1", 3: "1#1"}
    assert sorted(run.done) == [0, 1, 2, 3] and run.batches == [0, 0, 1, 1, 2, 2, 3, 3]
    assert (outcome.retries, outcome.replaced_workers, outcome.failures, outcome.start_errors) == (0, 0, [], [])
    assert [info.name for info in outcome.workers] == ["0#1", "1#1"]
    assert len(outcome.first_image_seconds) == 2
    assert run.progress_sum == (16, 0) and run.taken_back == []
    assert run.worker_counts == [(0, 2), (1, 2), (2, 2)]
    assert run.backend.killed == []


def test_an_actor_that_dies_mid_shard_is_replaced_and_its_shard_retried_once_counted():
    backend = FakeBackend(faults={("0#1", 0): DIE})
    run = Run(backend, workers=2, shard_count=4, max_shard_retries=1)
    outcome = run.run()
    assert backend.started == ["0#1", "1#1", "0#2"] and backend.killed == ["0#1"]
    # Shard 0 was running (charged a retry); shard 1 was only queued behind it (requeued as it was).
    assert (outcome.retries, outcome.replaced_workers, outcome.failures) == (1, 1, [])
    assert backend.runs == [("0#1", 0), ("1#1", 2), ("1#1", 3), ("0#2", 0), ("0#2", 1)]
    assert run.ran_on() == {0: "0#2", 1: "0#2", 2: "1#1", 3: "1#1"}
    # The dead attempt's micro-batch is taken back: each image is counted once.
    assert run.taken_back == [(-BATCH, 0)] and run.progress_sum == (16, 0)
    assert sorted(run.done) == [0, 1, 2, 3]
    assert run.worker_counts == [(0, 2), (1, 2), (2, 2), (1, 2), (2, 2)]


def test_a_shard_only_queued_on_a_dead_actor_is_not_charged_and_succeeds_without_retries():
    backend = FakeBackend(faults={("0#1", 0): DIE})
    run = Run(backend, workers=1, shard_count=3, max_shard_retries=0)
    outcome = run.run()
    assert run.failed() == [(0, f"worker died: {DIED}")]
    assert (outcome.retries, outcome.replaced_workers) == (0, 1)
    assert backend.runs == [("0#1", 0), ("0#2", 2), ("0#2", 1)]
    assert run.ran_on() == {1: "0#2", 2: "0#2"}
    # The failed shard's images count as failed, once; its dead attempt's progress is taken back.
    assert run.taken_back == [(-BATCH, 0)] and run.progress_sum == (12, IMAGES_PER_SHARD)


def test_a_result_that_arrived_before_the_actor_died_counts_the_shard_done():
    backend = FakeBackend(faults={("0#1", 0): DIE_AFTER_RESULT})
    run = Run(backend, workers=1, shard_count=2, max_shard_retries=1)
    outcome = run.run()
    # Shard 0 is not run again; shard 1, the first unfinished one when the death was seen, counts as running.
    assert backend.runs == [("0#1", 0), ("0#2", 1)]
    assert run.ran_on() == {0: "0#1", 1: "0#2"}
    assert [result.shard for result in outcome.results] == [0, 1]
    assert (outcome.retries, outcome.replaced_workers, outcome.failures) == (1, 1, [])
    assert run.taken_back == [] and run.progress_sum == (8, 0)


def test_a_shard_that_raises_fails_alone_after_its_retries_with_a_one_line_error():
    backend = FakeBackend(faults={("0#1", 1): ValueError("row 5:\n  prompt is not a string")})
    run = Run(backend, workers=1, shard_count=3, max_shard_retries=1)
    outcome = run.run()
    assert run.failed() == [(1, "ValueError: row 5: prompt is not a string")]
    assert (outcome.retries, outcome.replaced_workers, backend.killed) == (1, 0, [])
    # The actor goes on: shard 2 runs between shard 1's two attempts.
    assert backend.runs == [("0#1", 0), ("0#1", 1), ("0#1", 2), ("0#1", 1)]
    assert run.ran_on() == {0: "0#1", 2: "0#1"}
    assert run.taken_back == [(-BATCH, 0), (-BATCH, 0)] and run.progress_sum == (12, IMAGES_PER_SHARD)


def test_a_shard_that_raises_is_retried_up_to_max_shard_retries():
    backend = FakeBackend(faults={("0#1", 0): RuntimeError("disk full")})
    run = Run(backend, workers=1, shard_count=1, max_shard_retries=3)
    outcome = run.run()
    assert backend.runs == [("0#1", 0)] * 4
    assert outcome.retries == 3 and run.failed() == [(0, "RuntimeError: disk full")]
    assert run.progress_sum == (IMAGES_PER_SHARD, IMAGES_PER_SHARD)


def test_an_actor_that_cannot_load_is_recorded_and_the_others_run_every_shard():
    backend = FakeBackend(faults={("1#1", "ready"): WorkerLoadError("OSError: no model at /models/x")})
    run = Run(backend, workers=2, shard_count=4)
    outcome = run.run()
    assert outcome.start_errors == ["OSError: no model at /models/x"]
    assert [info.name for info in outcome.workers] == ["0#1"]
    assert (outcome.replaced_workers, outcome.retries, outcome.failures) == (0, 0, [])  # not replaced
    assert run.ran_on() == {0: "0#1", 1: "0#1", 2: "0#1", 3: "0#1"}
    assert run.worker_counts[-1] == (1, 1) and run.progress_sum == (16, 0)


def test_when_no_actor_can_start_every_shard_fails_with_no_worker_is_alive():
    backend = FakeBackend(
        faults={("0#1", "ready"): WorkerLoadError("OSError: out of memory"), ("1#1", "ready"): DIE}
    )
    run = Run(backend, workers=2, shard_count=3)
    outcome = run.run()
    assert outcome.start_errors == ["OSError: out of memory", DIED]
    assert outcome.workers == [] and backend.runs == []
    assert run.failed() == [(0, "no worker is alive"), (1, "no worker is alive"), (2, "no worker is alive")]
    assert (outcome.retries, outcome.replaced_workers) == (0, 0)
    assert run.progress_sum == (12, 12) and run.worker_counts == [(0, 2), (0, 1), (0, 0)]


def test_when_every_actor_is_dead_the_pending_shards_fail():
    # Actor 0 dies mid-shard and its replacement dies while it loads.
    backend = FakeBackend(faults={("0#1", 0): DIE, ("0#2", "ready"): DIE})
    run = Run(backend, workers=1, shard_count=2, max_shard_retries=1)
    outcome = run.run()
    assert backend.started == ["0#1", "0#2"] and outcome.start_errors == [DIED]
    assert (outcome.retries, outcome.replaced_workers) == (1, 1)
    # Shard 1, requeued uncharged, went back to the front of the queue.
    assert run.failed() == [(1, "no worker is alive"), (0, "no worker is alive")]
    assert outcome.results == [] and run.progress_sum == (8, 8)


def test_actors_that_load_for_over_a_minute_are_warned_about(caplog):
    backend = FakeBackend(slow_starts={"0#1": 61})  # waits of one second
    run = Run(backend, workers=1, shard_count=1)
    with caplog.at_level(logging.WARNING, logger="jobs.dispatch"):
        outcome = run.run()
    assert [record.getMessage() for record in caplog.records] == [
        "waiting for workers: none ready, 1 starting (loading models, or no free resources)"
    ]
    assert run.ran_on() == {0: "0#1"} and outcome.failures == []


def test_a_stop_signal_that_was_swallowed_stops_the_dispatch_loop(monkeypatch):
    monkeypatch.setattr(signals._handler, "received", signal.SIGTERM)
    run = Run(FakeBackend(), workers=2, shard_count=2)
    with pytest.raises(signals.Interrupted):
        run.run()
    # The actors were started, so the caller can stop them; no shard was queued.
    assert [actor.name for actor in run.dispatcher.handles()] == ["0#1", "1#1"] and run.backend.runs == []


def test_worker_errors_are_one_family_that_keeps_their_builtin_bases():
    from workers import errors

    family = [errors.WorkerLoadError, errors.ModelNotFoundError, errors.InitImageError, errors.ShardWriteError]
    assert all(issubclass(cls, errors.WorkerError) for cls in [*family, errors.FencedOut, errors.ShardError])
    assert issubclass(errors.ShardWriteError, errors.ShardError) and issubclass(errors.FencedOut, errors.ShardError)
    assert issubclass(errors.ShardWriteError, OSError) and issubclass(errors.InitImageError, ValueError)
    assert errors.describe(OSError("disk\n full")) == "OSError: disk full"
