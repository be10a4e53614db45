"""The one actor lifecycle (jobs.run.lifecycle.drive): which steps a group goes through, in which order, when
its work ends, is stopped by a signal, fails, or loads no actor. No Ray: the group is a recording fake."""

from __future__ import annotations

import pytest

from jobs import signals
from jobs.errors import WorkerStartError
from jobs.pool.dispatch import DispatchOutcome
from jobs.run.lifecycle import drive
from workers.tasks import WorkerInfo

LOADED = WorkerInfo(
    name="worker-0", device="cpu", dtype="float32", scheduler="fake", load_seconds=0.0, pid=0, node_id=""
)


class RecordingGroup:
    """An ActorGroup that notes each step; `dispatch_raises` is what its dispatch raises, if anything."""

    def __init__(self, dispatch_raises: BaseException | None = None, outcome: DispatchOutcome | None = None):
        self.steps: list[str] = []
        self.dispatch_raises = dispatch_raises
        self.outcome = outcome or DispatchOutcome(workers=[LOADED])

    def start(self) -> None:
        self.steps.append("start")

    def dispatch(self) -> None:
        self.steps.append("dispatch")
        if self.dispatch_raises is not None:
            raise self.dispatch_raises

    def fail(self) -> None:
        self.steps.append("fail")

    def stop(self, finished: bool) -> DispatchOutcome:
        self.steps.append(f"stop(finished={finished})")
        return self.outcome

    def record_not_started(self, outcome: DispatchOutcome) -> None:
        self.steps.append("record_not_started")
        raise WorkerStartError(f"no worker could load the models: {outcome.start_errors[0]}")

    def end(self, outcome: DispatchOutcome, interrupt: KeyboardInterrupt | None) -> str:
        self.steps.append(f"end({type(interrupt).__name__ if interrupt else None})")
        return "result"


@pytest.fixture(autouse=True)
def signals_as_they_were(monkeypatch):
    """drive() tells the signal handler the job is stopping; later tests get the handler back as it was."""
    monkeypatch.setattr(signals._handler, "stopping", False)


def test_work_that_ends_is_started_dispatched_stopped_for_parking_and_ended():
    group = RecordingGroup()
    assert drive(group) == "result"
    assert group.steps == ["start", "dispatch", "stop(finished=True)", "end(None)"]
    assert signals._handler.stopping  # a signal while the actors stop cannot cut the tidying short


def test_a_sweep_group_that_is_not_the_last_leaves_stop_signals_live_for_the_next():
    assert drive(RecordingGroup(), last=False) == "result"
    assert not signals._handler.stopping


def test_a_stop_signal_ends_dispatching_and_is_handed_to_end_after_the_actors_stop(caplog):
    group = RecordingGroup(dispatch_raises=signals.Interrupted(15))
    assert drive(group) == "result"
    assert group.steps == ["start", "dispatch", "stop(finished=False)", "end(Interrupted)"]
    assert "SIGTERM: stopping the workers; only complete shards are kept" in caplog.messages


def test_an_error_stops_the_actors_records_the_failure_and_is_raised():
    group = RecordingGroup(dispatch_raises=RuntimeError("GCS unreachable"))
    with pytest.raises(RuntimeError, match="GCS unreachable"):
        drive(group)
    assert group.steps == ["start", "dispatch", "fail"]


def test_a_pool_that_loaded_no_actor_is_recorded_and_raised_before_any_end():
    group = RecordingGroup(outcome=DispatchOutcome(start_errors=["OSError: no model at /models/x"]))
    with pytest.raises(WorkerStartError, match="no model at /models/x"):
        drive(group)
    assert group.steps == ["start", "dispatch", "stop(finished=True)", "record_not_started"]
