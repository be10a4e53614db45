"""How the dispatcher reaches its actors: a small interface, and its Ray implementations: RayBackend for
a run's generation actors, RescoreBackend for `genbatch rescore`'s scoring actors (jobs.run.rescore).

The dispatcher only decides (what to queue where, what to retry, what to replace); everything that
touches Ray is here, so its decisions can be tested with in-process fakes (tests/unit/test_dispatch.py).
Handles, ready calls and streams are opaque to the dispatcher: it only compares and hashes them.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from jobs.pool import cluster, worker_reuse
from workers.errors import describe
from workers.tasks import (
    BatchProgress,
    RescoreSettings,
    RescoreTask,
    RunBinding,
    ShardResult,
    ShardTask,
    WorkerInfo,
    WorkerSettings,
)

logger = logging.getLogger(__name__)


class ActorDied(Exception):
    """The actor is gone (its process died or its node was lost). The message is one line, already in
    the form "ExceptionType: message" of what the backend reported."""


class ActorBackend(Protocol):
    """Starts actors and calls them. Calls return at once; `wait` says which answers have arrived."""

    def start(self, index: int) -> Any:
        """Create actor `index` (it loads its models in the background); returns its handle."""

    def ready(self, handle: Any) -> Any:
        """Ask the actor for its WorkerInfo; returns a call to `wait` for and read with `ready_info`."""

    def ready_info(self, call: Any) -> WorkerInfo:
        """The answer of a ready call that `wait` returned: raises ActorDied, or the actor's own error."""

    def run_shard(self, handle: Any, shard: ShardTask | RescoreTask) -> Any:
        """Queue a shard on the actor (an actor runs its shards one at a time, in order); returns its stream."""

    def wait(self, waitables: list, timeout: float) -> list:
        """Wait at most `timeout` seconds for one of `waitables` (ready calls and streams) to have an answer;
        returns those that have one (none on a timeout)."""

    def next(self, stream: Any) -> BatchProgress | ShardResult:
        """The stream's next item, once `wait` returned the stream. Raises StopIteration after the last,
        ActorDied if the actor is gone, and the actor's own exception if the shard raised."""

    def kill(self, handle: Any) -> None:
        """Stop the actor for good: it must not come back and compete with its replacement."""

    def capacity(self) -> int:
        """How many actors the cluster's live nodes can hold at once, those already started included.
        Only an elastic pool asks (see jobs.pool.dispatch)."""


class _RayActors:
    """The calls both kinds of actor answer alike (ready, run_shard as a streaming generator); `start` is each
    kind's own."""

    resources: cluster.ActorResources

    def ready(self, handle):
        return handle.ready.remote()

    def ready_info(self, call) -> WorkerInfo:
        import ray

        try:
            return ray.get(call)
        except Exception as error:  # noqa: BLE001 - re-raised without Ray's wrapper
            raise _unwrapped(error) from None

    def run_shard(self, handle, shard: ShardTask | RescoreTask):
        return handle.run_shard.remote(shard)  # an ObjectRefGenerator

    def wait(self, waitables: list, timeout: float) -> list:
        import ray

        ready, _ = ray.wait(waitables, num_returns=1, timeout=timeout)
        return ready

    def next(self, stream) -> BatchProgress | ShardResult:
        import ray

        try:
            return ray.get(next(stream))
        except StopIteration:
            raise
        except Exception as error:  # noqa: BLE001 - re-raised without Ray's wrapper
            raise _unwrapped(error) from None

    def kill(self, handle) -> None:
        import ray

        ray.kill(handle, no_restart=True)

    def capacity(self) -> int:
        return cluster.capacity(self.resources)


class RayBackend(_RayActors):
    """Actors are Ray actors of `worker_class` (GenerationWorker unless given); see jobs.pool.cluster."""

    def __init__(self, settings: WorkerSettings, resources: cluster.ActorResources, worker_class=None):
        self.settings = settings
        self.resources = resources
        self.worker_class = worker_class
        self.reuse_key = worker_reuse.key_of(worker_class, resources, settings)
        worker_reuse.stop_parked(keep=self.reuse_key)  # they hold resources this job's actors may need

    def start(self, index: int):
        handle = worker_reuse.take(self.reuse_key, index)
        if handle is not None:
            import ray

            try:  # a quick call: the actor only learns its new job
                ray.get(handle.rebind.remote(RunBinding.of(self.settings), self.settings.batch_size), timeout=60)
                return handle
            except Exception as error:  # noqa: BLE001 - a parked actor that is gone is replaced by a new one
                logger.info("parked worker unusable (%s); starting a new one", describe(error))
                cluster.stop_workers([handle])
        return cluster.start_worker(self.settings, self.resources, index, self.worker_class)


class RescoreBackend(_RayActors):
    """Actors are workers.rescoring.RescoreWorker Ray actors. They are never parked for reuse (jobs.pool.worker_reuse):
    they hold only scorers, which no later job of the driver asks for."""

    def __init__(self, settings: RescoreSettings, resources: cluster.ActorResources):
        self.settings = settings
        self.resources = resources
        worker_reuse.stop_parked()  # parked generation actors hold resources these actors need

    def start(self, index: int):
        from workers.rescoring import RescoreWorker

        return cluster.start_worker(self.settings, self.resources, index, RescoreWorker)


def _unwrapped(error: Exception) -> Exception:
    """What Ray raised, as the dispatcher understands it: an actor's death as ActorDied, a remote
    exception as the exception the actor raised (Ray wraps it in a RayTaskError with a traceback)."""
    import ray

    if isinstance(error, ray.exceptions.RayActorError):  # ActorUnavailableError too: it may not come back
        return ActorDied(describe(error))
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, Exception) else error
