"""Fake actors for the dispatcher, in this process (no Ray).

FakeBackend runs each actor's shards one at a time, in order, as a Ray actor does, and a fault table says
what goes wrong where. Actors are named `index#start`: `0#2` is the replacement of actor 0. Every run is
deterministic: `wait` answers with the first waitable that has an answer.
"""

from __future__ import annotations

from types import SimpleNamespace

from jobs.pool.actor_backend import ActorDied
from workers.tasks import BatchProgress, ShardResult, ShardTask, WorkerInfo

IMAGES_PER_SHARD = 4
BATCH = 2  # images per BatchProgress: two micro-batches per shard
DIED = "ActorDiedError: The actor died unexpectedly before finishing this task."
# Fault table values, keyed by (actor name, shard index) or (actor name, "ready").
DIE = "die"  # the actor's process dies after the shard's first micro-batch (or while it loads)
DIE_AFTER_RESULT = "die after result"  # ... after the shard's ShardResult arrived, before its stream ended
ROOMY = 64  # the capacity of a cluster with room for any pool (FakeBackend's default)
CLOCK = SimpleNamespace(now=0.0)  # the dispatcher's monotonic clock: only a wait that times out moves it


class Crash(Exception):
    """Raised inside a FakeWorker: its process dies here."""


class FakeWorker:
    """In place of workers.worker.GenerationWorker: micro-batches of BATCH images, then the result.
    `faults[(name, shard)]`: DIE, DIE_AFTER_RESULT, or an exception raised after the first micro-batch;
    `faults[(name, "ready")]`: DIE or an exception ready() raises."""

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
    actor's ready call has an answer. `capacity`: the cluster's room for actors, a number or a function of
    this backend (of what happened so far); None: room for any pool, always (a fixed pool reads it only when
    it starts a replacement)."""

    def __init__(self, faults: dict | None = None, slow_starts: dict | None = None, capacity=None):
        self.faults = faults or {}
        self.slow_starts = slow_starts or {}
        self.room = capacity
        self.started: list[str] = []
        self.killed: list[str] = []
        self.runs: list[tuple[str, int]] = []  # (actor, shard) as each attempt starts running
        self.results: list[int] = []  # shards whose ShardResult was read
        self.deaths: list[str] = []  # actors whose process died
        self.capacity_reads: list[tuple[float, int]] = []  # (CLOCK, answer)

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
            self.deaths.append(call.actor.name)
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
            value = next(stream.items)
        except Crash:
            actor.alive = False
            self.deaths.append(actor.name)
            raise ActorDied(DIED) from None
        except Exception:  # StopIteration, or the shard raised: the actor goes on with its next shard
            actor.queue.remove(stream)
            raise
        if isinstance(value, ShardResult):
            self.results.append(value.shard)
        return value

    def kill(self, handle: FakeActor) -> None:
        handle.alive = False
        self.killed.append(handle.name)

    def capacity(self) -> int:
        answer = ROOMY if self.room is None else self.room(self) if callable(self.room) else self.room
        if isinstance(answer, Exception):
            raise answer
        self.capacity_reads.append((CLOCK.now, answer))
        return answer


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
