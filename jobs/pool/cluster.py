"""Connecting to Ray and starting the actor pool. The only module that maps config onto Ray's arguments."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import workers
from jobs import signals
from jobs.config.schema import JobConfig
from jobs.errors import ConfigError
from workers.tasks import RescoreSettings, WorkerInfo, WorkerSettings

logger = logging.getLogger(__name__)

KILL_GRACE_SECONDS = 3.0  # a killed actor's process still running after this is killed outright


@dataclass(frozen=True)
class ActorResources:
    num_cpus: float
    num_gpus: float


def connect(address: str | None, forward_actor_logs: bool = True, announce=logger.info) -> None:
    """Attach to Ray: the given address, else RAY_ADDRESS (as inside `ray job submit`), else a new local instance.

    Without `forward_actor_logs`, actors' logs stay in Ray's session log folder instead of this process's
    stderr (JSON logs must not be interleaved with Ray's plain-text lines). `announce` is told what
    is being started or connected to."""
    local = not address and not os.environ.get("RAY_ADDRESS")
    if local:
        # A local instance listens on loopback only; Ray reads this when it is first imported.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return
    _route_ray_logs()
    announce("starting Ray" if local else f"connecting to Ray at {address or os.environ['RAY_ADDRESS']}")
    runtime_env = None
    if address:
        # Ship the actor-side package so cluster nodes can import it without an install.
        runtime_env = {"py_modules": [str(Path(workers.__file__).resolve().parent)]}
    kwargs = {"_node_ip_address": "127.0.0.1"} if local else {}
    with signals.ray_keeps_our_handlers(), ray_processes_in_their_own_session(local):
        ray.init(
            # "local" starts a new instance even if another cluster runs on this machine.
            address=address or ("local" if local else None),
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=forward_actor_logs,
            runtime_env=runtime_env,
            **kwargs,
        )


@contextmanager
def ray_processes_in_their_own_session(local: bool) -> Iterator[None]:
    """The processes of a local Ray instance (GCS, raylet, and through the raylet the actors) start in a
    session of their own, out of the driver's process group: a stop signal sent to the group (`timeout`,
    `kill -TERM -- -PGID`, a terminal's Ctrl-C or hang-up) then reaches the driver alone, which stops the
    actors through a cluster still alive to do it. Killed with the group, Ray left the driver waiting on
    calls that could not be answered, and an actor orphaned mid-shard could publish it after job.json
    was written. Ray's kernel fate-sharing still ends them if the driver dies, however it dies."""
    if not local or sys.platform == "win32":
        yield
        return
    import ray._private.services as services

    original = services.ConsolePopen

    class PopenInOwnSession(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            kwargs["start_new_session"] = True
            super().__init__(*args, **kwargs)

    services.ConsolePopen = PopenInOwnSession
    try:
        yield
    finally:
        services.ConsolePopen = original


def _route_ray_logs() -> None:
    """Ray's driver-side log records go through this process's handlers (one format: JSON lines with
    --log-format json) instead of Ray's own; forwarded actor lines lose their colour off a terminal."""
    ray_logger = logging.getLogger("ray")
    ray_logger.handlers.clear()
    ray_logger.propagate = True
    # A new local instance always says that it enabled token authentication, Ray's default for one.
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


def actor_resources(config: JobConfig) -> ActorResources:
    """Resources each actor reserves; checked against the cluster's nodes so a job cannot wait forever."""
    import ray

    wanted = config.resources
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if wanted.cpus_per_worker is not None:
        cpus = wanted.cpus_per_worker
    elif wanted.gpus_per_worker > 0:
        cpus = 1.0
    else:
        cpus = max((node.get("CPU", 0.0) for node in nodes), default=0.0) or 1.0
    resources = ActorResources(num_cpus=cpus, num_gpus=wanted.gpus_per_worker)
    capacity = nodes_capacity(nodes, resources)
    if not capacity:
        have = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes) or "no nodes"
        raise ConfigError(
            f"resources: no Ray node can host a worker needing {cpus:g} CPU and "
            f"{wanted.gpus_per_worker:g} GPU (nodes: {have}); lower resources.cpus_per_worker/gpus_per_worker"
        )
    # A fixed pool starts all its workers, an elastic one at least its min: those beyond the room wait.
    key = "resources.workers" if isinstance(wanted.workers, int) else "resources.workers.min"
    floor = wanted.worker_range().min
    if floor > capacity:
        logger.warning(
            "%s is %d, but the cluster's nodes can hold at most %d workers of %g CPU and %g GPU "
            "at once; the other %d wait for a free slot (lower %s, or add nodes)",
            key,
            floor,
            capacity,
            cpus,
            wanted.gpus_per_worker,
            floor - capacity,
            key,
        )
    return resources


def live_nodes() -> list[dict]:
    """The resources of the cluster's live nodes, as `ray.nodes()` gives them (GPU, accelerator_type:H100...)."""
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive")]


def capacity(resources: ActorResources) -> int:
    """How many actors of `resources` the cluster's live nodes can hold at once (counting every slot,
    those this job's actors already hold included)."""
    import ray

    return nodes_capacity([node["Resources"] for node in ray.nodes() if node.get("Alive")], resources)


def nodes_capacity(nodes: list[dict], resources: ActorResources) -> int:
    """How many actors of `resources` these nodes' resources (as `ray.nodes()` gives them) can hold."""
    return sum(_actors_per_node(node, resources.num_cpus, resources.num_gpus) for node in nodes)


def _actors_per_node(node: dict, cpus: float, gpus: float) -> int:
    """How many actors reserving `cpus` and `gpus` one node's resources can hold."""
    limits = [node.get(name, 0.0) / need for name, need in (("CPU", cpus), ("GPU", gpus)) if need > 0]
    return int(min(limits) + 1e-9) if limits else sys.maxsize


def start_worker(settings: WorkerSettings | RescoreSettings, resources: ActorResources, index: int, worker_class=None):
    """Create one actor; it loads its models in the background while the caller goes on. Settings are
    RescoreSettings for a RescoreWorker (jobs.pool.actor_backend.RescoreBackend)."""
    import ray

    if worker_class is None:
        from workers.worker import GenerationWorker as worker_class

    actor_class = ray.remote(worker_class).options(
        num_cpus=resources.num_cpus, num_gpus=resources.num_gpus, max_restarts=0
    )
    return actor_class.remote(settings, index)


def stop_workers(actors: list, workers: Sequence[WorkerInfo] = (), timeout: float = 30.0) -> None:
    """Kill the actors and wait until they are gone, so none can still be writing afterwards.

    Ray reports a killed actor dead as soon as the kill is recorded, which can be before its process
    has exited; so the processes of the actors on this node (`workers`: their pids) are awaited too,
    and one still running KILL_GRACE_SECONDS after its kill is killed outright (its shard file is
    published whole or not at all). That bounds the stop when Ray itself is going down: systemd and
    Slurm signal every process of a job, and an actor whose raylet is shutting down takes its time."""
    import ray

    for actor in actors:
        ray.kill(actor, no_restart=True)
    killed_at = time.monotonic()
    deadline = killed_at + timeout
    # A call on a killed actor resolves (with an error) once Ray has recorded the kill.
    pending = [actor.ready.remote() for actor in actors]
    here = ray.get_runtime_context().get_node_id()
    running = {info.pid for info in workers if info.node_id == here}
    while time.monotonic() < deadline:
        running = {pid for pid in running if _process_alive(pid)}
        if pending and not _local_ray_is_gone():
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.1)
        elif not running:
            return
        else:
            time.sleep(0.02)
        if running and time.monotonic() - killed_at > KILL_GRACE_SECONDS:
            for pid in running:
                _kill_outright(pid)
    for pid in running:
        logger.warning("worker process %d is still running %gs after it was stopped", pid, timeout)


def _kill_outright(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # gone already, or not ours to kill
        pass


def _local_ray_is_gone() -> bool:
    """Whether the Ray instance this driver started (not one it joined) has lost its raylet."""
    import ray._private.worker as ray_worker

    node = getattr(ray_worker, "_global_node", None)
    if node is None:
        return False
    raylets = getattr(node, "all_processes", {}).get("raylet", [])
    return any(info.process.poll() is not None for info in raylets)


def _process_alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie (exited, not yet reaped by the raylet) does not. Without /proc
    (not Linux) this says no, and only Ray's word is waited for."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or between open and read
        return False
