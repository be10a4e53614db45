"""The dispatcher's decisions (retries, replacements, progress taken back), with fake actors in this process.

No Ray: tests.helpers.fake_actors runs each actor's shards one at a time, in order, as a Ray actor does, and a
fault table says what goes wrong where.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from types import SimpleNamespace

import pytest

from jobs import signals
from jobs.config.schema import WorkerRange
from jobs.pool import dispatch
from jobs.pool.dispatch import Dispatcher
from tests.helpers.fake_actors import (
    BATCH,
    CLOCK,
    DIE,
    DIE_AFTER_RESULT,
    DIED,
    IMAGES_PER_SHARD,
    ROOMY,
    FakeBackend,
    shards,
)
from workers.errors import WorkerLoadError


class Run:
    """One dispatch, with everything the dispatcher told its callbacks."""

    def __init__(self, backend: FakeBackend, workers, shard_count: int, max_shard_retries: int = 1):
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


def test_when_no_actor_can_start_no_shard_runs_and_none_is_counted_failed():
    backend = FakeBackend(faults={("0#1", "ready"): WorkerLoadError("OSError: out of memory"), ("1#1", "ready"): DIE})
    run = Run(backend, workers=2, shard_count=3)
    outcome = run.run()
    assert outcome.start_errors == ["OSError: out of memory", DIED]
    assert outcome.workers == [] and backend.runs == []
    # Not run, not failed: the progress line and the summary must not call these rows failed.
    assert outcome.failures == [] and [shard.index for shard in run.dispatcher.pending] == [0, 1, 2]
    assert (outcome.retries, outcome.replaced_workers) == (0, 0)
    assert run.progress == [] and run.worker_counts == [(0, 2), (0, 1), (0, 0)]


def test_when_every_actor_is_dead_the_pending_shards_fail():
    # Actor 0 dies mid-shard and its replacement dies while it loads.
    backend = FakeBackend(faults={("0#1", 0): DIE, ("0#2", "ready"): DIE})
    run = Run(backend, workers=1, shard_count=2, max_shard_retries=1)
    outcome = run.run()
    assert backend.started == ["0#1", "0#2"] and outcome.start_errors == [DIED]
    assert (outcome.retries, outcome.replaced_workers) == (1, 1)
    assert backend.capacity_reads == [(0.0, ROOMY), (0.0, ROOMY)]  # as the replacement starts, and as it dies
    # Shard 1, requeued uncharged, went back to the front of the queue.
    assert run.failed() == [(1, "no worker is alive"), (0, "no worker is alive")]
    assert outcome.results == [] and run.progress_sum == (8, 8)


def test_actors_that_load_for_over_a_minute_are_warned_about(caplog):
    backend = FakeBackend(slow_starts={"0#1": 61})  # waits of one second
    run = Run(backend, workers=1, shard_count=1)
    with caplog.at_level(logging.WARNING, logger="jobs.pool.dispatch"):
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


# Elastic pools (`resources.workers: auto` or `{min, max}`): the capacity is the cluster's room for actors.
AUTO = WorkerRange()


@pytest.fixture
def capacity_every_wait(monkeypatch):
    """The capacity is read after every wait instead of every CAPACITY_CHECK_SECONDS, so a change is seen at once."""
    monkeypatch.setattr(dispatch, "CAPACITY_CHECK_SECONDS", 0.0)


def pool_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(("pool:", "worker-"))]


@pytest.mark.parametrize(
    ("workers", "capacity", "shard_count", "started"),
    [
        (AUTO, 3, 8, 3),  # one actor per slot
        (AUTO, 8, 2, 2),  # no more actors than shards
        (WorkerRange(min=2), 1, 8, 2),  # min are started even where they must wait for room
        (WorkerRange(min=3), 8, 2, 3),  # ... and even beyond the shards
        (WorkerRange(min=1, max=2), 5, 8, 2),  # no more than max
    ],
)
def test_an_elastic_pool_starts_one_actor_per_slot_within_its_bounds(workers, capacity, shard_count, started):
    run = Run(FakeBackend(capacity=capacity), workers=workers, shard_count=shard_count)
    outcome = run.run()
    assert run.backend.started == [f"{index}#1" for index in range(started)]
    assert sorted(run.done) == list(range(shard_count)) and outcome.failures == []
    assert run.backend.capacity_reads == [(0.0, capacity)]  # once at the start: no wait timed out


def test_a_fixed_pool_and_an_elastic_one_of_equal_bounds_never_read_the_capacity():
    for workers in (2, WorkerRange(min=2, max=2)):
        run = Run(FakeBackend(), workers=workers, shard_count=4)
        assert run.run().failures == [] and run.backend.started == ["0#1", "1#1"]
        assert run.backend.capacity_reads == []


def test_a_node_that_joins_mid_job_gets_a_new_actor_that_takes_shards(capacity_every_wait, caplog):
    # A second slot appears once shard 0 is written.
    backend = FakeBackend(capacity=lambda b: 2 if b.results else 1)
    run = Run(backend, workers=AUTO, shard_count=6)
    with caplog.at_level(logging.INFO, logger="jobs.pool.dispatch"):
        outcome = run.run()
    assert pool_lines(caplog) == ["pool: 1 -> 2 workers (a node joined)"]
    assert backend.started == ["0#1", "1#1"] and backend.killed == []
    # The new actor takes the next two shards as soon as it is ready.
    assert backend.runs == [("0#1", 0), ("0#1", 1), ("1#1", 2), ("1#1", 3), ("0#1", 4), ("0#1", 5)]
    assert run.ran_on() == {0: "0#1", 1: "0#1", 2: "1#1", 3: "1#1", 4: "0#1", 5: "0#1"}
    assert (outcome.retries, outcome.replaced_workers, outcome.failures) == (0, 0, [])
    assert run.worker_counts == [(0, 1), (1, 1), (1, 2), (2, 2)]
    assert run.progress_sum == (24, 0)


def test_growth_stops_at_max_and_starts_no_actor_that_would_have_no_shard(capacity_every_wait):
    backend = FakeBackend(capacity=lambda b: 10 if b.results else 1)
    run = Run(backend, workers=WorkerRange(min=1, max=3), shard_count=8)
    run.run()
    assert backend.started == ["0#1", "1#1", "2#1"]  # max 3 of 10 slots
    # Shard 0 done, shard 1 queued on 0#1: shards 2-4 wait, so three actors are started, one for each.
    backend = FakeBackend(capacity=lambda b: 10 if b.results else 1)
    run = Run(backend, workers=AUTO, shard_count=5)
    run.run()
    assert backend.started == ["0#1", "1#1", "2#1", "3#1"]
    assert sorted(run.done) == [0, 1, 2, 3, 4]


def test_a_dead_actor_whose_node_left_is_not_replaced_and_its_shard_is_retried(capacity_every_wait, caplog):
    # Two slots; actor 1's node goes away with it.
    backend = FakeBackend(faults={("1#1", 2): DIE}, capacity=lambda b: 2 - len(b.deaths))
    run = Run(backend, workers=AUTO, shard_count=6, max_shard_retries=1)
    with caplog.at_level(logging.WARNING, logger="jobs.pool.dispatch"):
        outcome = run.run()
    assert pool_lines(caplog) == [f"worker-1 died ({DIED})", "pool: 2 -> 1 workers (a node left)"]
    assert backend.started == ["0#1", "1#1"] and backend.killed == ["1#1"]
    assert (outcome.retries, outcome.replaced_workers, outcome.failures) == (1, 0, [])
    assert {shard for actor, shard in backend.runs if actor == "0#1"} == {0, 1, 2, 3, 4, 5}
    assert sorted(run.done) == [0, 1, 2, 3, 4, 5] and run.progress_sum == (24, 0)
    assert run.worker_counts[-1] == (1, 1)


def test_a_replacement_still_starting_when_the_node_is_seen_gone_is_stopped(capacity_every_wait, caplog):
    # The cluster still counts the lost node when the death is seen, so a replacement starts; it cannot be
    # placed (it stays loading), and the next read, without the node, stops it.
    reads_after_death = []

    def lagging(b):
        if b.deaths:
            reads_after_death.append(1)
        return 1 if len(reads_after_death) > 1 else 2

    backend = FakeBackend(faults={("1#1", 2): DIE}, slow_starts={"1#2": 1000}, capacity=lagging)
    run = Run(backend, workers=AUTO, shard_count=6, max_shard_retries=1)
    with caplog.at_level(logging.WARNING, logger="jobs.pool.dispatch"):
        outcome = run.run()
    assert pool_lines(caplog) == [
        f"worker-1 died ({DIED}); starting a replacement",
        "pool: 2 -> 1 workers (a node left)",
    ]
    assert backend.started == ["0#1", "1#1", "1#2"] and backend.killed == ["1#1", "1#2"]
    assert (outcome.retries, outcome.replaced_workers, outcome.failures) == (1, 0, [])
    assert sorted(run.done) == [0, 1, 2, 3, 4, 5] and run.ran_on()[2] == "0#1"


def test_a_replacement_placed_on_the_lost_node_dies_loading_and_the_pool_shrinks(capacity_every_wait, caplog):
    # The cluster still counts the lost node when the death is seen; the replacement is placed on that node
    # and dies with it while loading. That is the node leaving, not a failed start: nothing is kept for it.
    faults = {("1#1", 2): DIE, ("1#2", "ready"): DIE}
    backend = FakeBackend(faults=faults, capacity=lambda b: 1 if "1#2" in b.deaths else 2)
    run = Run(backend, workers=AUTO, shard_count=6, max_shard_retries=1)
    with caplog.at_level(logging.WARNING, logger="jobs.pool.dispatch"):
        outcome = run.run()
    assert pool_lines(caplog) == [
        f"worker-1 died ({DIED}); starting a replacement",
        "worker-1 could not start: its node left",
        "pool: 2 -> 1 workers (a node left)",
    ]
    assert backend.started == ["0#1", "1#1", "1#2"] and backend.killed == ["1#1", "1#2"]
    assert (outcome.retries, outcome.replaced_workers, outcome.start_errors, outcome.failures) == (1, 0, [], [])
    assert sorted(run.done) == [0, 1, 2, 3, 4, 5] and run.ran_on()[2] == "0#1"
    assert run.worker_counts[-1] == (1, 1)


def test_a_fixed_pool_starts_again_a_replacement_that_went_with_the_lost_node(caplog):
    # As above in a fixed pool of 2: the slot is kept, so it is started once more (on a live cluster it waits
    # for a place, as a fixed pool's extra actors do) and runs shards.
    faults = {("1#1", 2): DIE, ("1#2", "ready"): DIE}
    backend = FakeBackend(faults=faults, capacity=lambda b: 1 if "1#2" in b.deaths else 2)
    run = Run(backend, workers=2, shard_count=6, max_shard_retries=1)
    with caplog.at_level(logging.WARNING, logger="jobs.pool.dispatch"):
        outcome = run.run()
    assert pool_lines(caplog) == [
        f"worker-1 died ({DIED}); starting a replacement",
        "worker-1 could not start: its node left; starting it again",
    ]
    assert backend.started == ["0#1", "1#1", "1#2", "1#3"] and backend.killed == ["1#1", "1#2"]
    assert (outcome.retries, outcome.replaced_workers, outcome.start_errors, outcome.failures) == (1, 1, [], [])
    assert "1#3" in run.ran_on().values() and sorted(run.done) == [0, 1, 2, 3, 4, 5]


def test_an_actor_that_dies_loading_while_its_slot_is_still_there_is_a_failed_start(capacity_every_wait, caplog):
    # Its process died (out of memory, say) but the cluster still has room for it: its slot stays empty.
    backend = FakeBackend(faults={("1#1", "ready"): DIE}, capacity=2)
    run = Run(backend, workers=AUTO, shard_count=6)
    with caplog.at_level(logging.WARNING, logger="jobs.pool.dispatch"):
        outcome = run.run()
    assert pool_lines(caplog) == [f"worker-1 failed to start: {DIED}"]
    assert backend.started == ["0#1", "1#1"] and outcome.start_errors == [DIED]
    assert set(run.ran_on().values()) == {"0#1"} and outcome.replaced_workers == 0


def test_an_elastic_pool_replaces_dead_actors_up_to_its_min_without_room(capacity_every_wait):
    # One slot, min 2: both actors start (one waits for room); a dead one is replaced all the same.
    backend = FakeBackend(faults={("1#1", 2): DIE}, capacity=1)
    run = Run(backend, workers=WorkerRange(min=2, max=4), shard_count=6, max_shard_retries=1)
    outcome = run.run()
    assert backend.started == ["0#1", "1#1", "1#2"]
    assert (outcome.retries, outcome.replaced_workers, outcome.failures) == (1, 1, [])
    assert sorted(run.done) == [0, 1, 2, 3, 4, 5]


def test_an_elastic_pool_grows_only_after_an_actor_loaded(capacity_every_wait):
    # Room for 4 once the first load failed: no more actors are started to fail the same way.
    load_error = WorkerLoadError("OSError: no model at /models/x")
    backend = FakeBackend(
        faults={("0#1", "ready"): load_error, ("1#1", "ready"): load_error},
        capacity=lambda b: 4 if b.capacity_reads else 2,
    )
    run = Run(backend, workers=AUTO, shard_count=6)
    outcome = run.run()
    assert backend.started == ["0#1", "1#1"] and len(outcome.start_errors) == 2
    assert outcome.failures == [] and len(run.dispatcher.pending) == 6  # not run


def test_a_failed_start_keeps_its_slot_empty(capacity_every_wait):
    # Two slots: actor 1 cannot load; actor 0 runs every shard and no third actor is started for the slot.
    backend = FakeBackend(faults={("1#1", "ready"): WorkerLoadError("OSError: out of memory")}, capacity=2)
    run = Run(backend, workers=AUTO, shard_count=6)
    outcome = run.run()
    assert backend.started == ["0#1", "1#1"] and outcome.start_errors == ["OSError: out of memory"]
    assert set(run.ran_on().values()) == {"0#1"} and outcome.failures == []


def test_the_capacity_is_read_every_ten_seconds_and_a_failed_read_keeps_the_pool(caplog):
    # Actor 0 loads for 25 one-second waits: the capacity is read at the start, then every 10 s.
    reads = iter([1, RuntimeError("GCS unreachable"), 1])
    backend = FakeBackend(slow_starts={"0#1": 25}, capacity=lambda b: next(reads))
    run = Run(backend, workers=AUTO, shard_count=3)
    with caplog.at_level(logging.WARNING, logger="jobs.pool.dispatch"):
        outcome = run.run()
    assert backend.capacity_reads == [(0.0, 1), (20.0, 1)]
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["cannot read the cluster's capacity: RuntimeError: GCS unreachable"]
    assert backend.started == ["0#1"] and outcome.failures == []


@pytest.mark.parametrize(
    ("count", "pool", "text"),
    [
        (1, WorkerRange(min=1, max=1), "1 worker"),
        (3, WorkerRange(min=3, max=3), "3 workers"),
        (2, AUTO, "2 workers (auto)"),
        (2, WorkerRange(max=8), "2 workers (auto, up to 8)"),
        (2, WorkerRange(min=2), "2 workers (auto, at least 2)"),
        (4, WorkerRange(min=2, max=8), "4 workers (auto, 2 to 8)"),
    ],
)
def test_the_pool_is_described_with_its_bounds(count, pool, text):
    assert dispatch.describe_pool(count, pool) == text


def test_the_capacity_counts_the_slots_of_live_nodes_and_a_min_beyond_them_is_warned_about(monkeypatch, caplog):
    from jobs.config.schema import JobConfig
    from jobs.pool import cluster
    from tests.conftest import small_config

    nodes = [
        {"Alive": True, "Resources": {"CPU": 8.0, "GPU": 4.0}},
        {"Alive": True, "Resources": {"CPU": 2.0, "GPU": 4.0}},  # CPUs for two one-CPU workers only
        {"Alive": True, "Resources": {"CPU": 16.0}},  # no GPU
        {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 8.0}},  # gone
    ]
    monkeypatch.setitem(sys.modules, "ray", SimpleNamespace(nodes=lambda: nodes))
    assert cluster.capacity(cluster.ActorResources(num_cpus=1, num_gpus=1)) == 4 + 2
    assert cluster.capacity(cluster.ActorResources(num_cpus=1, num_gpus=0.5)) == 8 + 2
    assert cluster.capacity(cluster.ActorResources(num_cpus=4, num_gpus=0)) == 2 + 0 + 4
    # Six slots: a fixed pool of 7, or an elastic one of min 7, has one worker waiting; auto never has.
    for workers, key in ((7, "resources.workers"), ("auto", None), ({"min": 7}, "resources.workers.min"), (6, None)):
        caplog.clear()
        resources = {"workers": workers, "gpus_per_worker": 1, "cpus_per_worker": None}
        config = JobConfig.model_validate(small_config("m.parquet", "out", resources=resources))
        with caplog.at_level(logging.WARNING, logger="jobs.pool.cluster"):
            assert cluster.actor_resources(config) == cluster.ActorResources(num_cpus=1.0, num_gpus=1)
        assert [record.getMessage() for record in caplog.records] == (
            []
            if key is None
            else [
                f"{key} is 7, but the cluster's nodes can hold at most 6 workers of 1 CPU and 1 GPU at once; the "
                f"other 1 wait for a free slot (lower {key}, or add nodes)"
            ]
        )
