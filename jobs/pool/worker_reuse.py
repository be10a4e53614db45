"""Keeping loaded actors between jobs run by one driver process (sweeps, notebooks, test suites).

Loading the models is most of an actor's start-up: seconds of imports and weights per actor, every job.
Inside `keep_workers()`, a job that finishes cleanly parks its healthy actors instead of stopping
them, and a later job whose settings differ only in what one actor may change between the runs of a
sweep (workers.tasks.RunBinding: where and for which job it writes, its seed, scheduler and generation
defaults) and in its batch size takes them over: the actor is told its new job (`rebind`) and loads
nothing. Every other setting must be equal (they decide the models and how they were set up), and so
must the batch and image sizes for actors on GPUs or compiling (they decide VAE slicing and the compiled
shapes), so a reused actor gives the same bytes as a fresh one. Interrupted or failed jobs stop their
actors as before. Parked actors hold their CPUs and GPUs: a job with other settings stops them first,
and leaving the block stops the rest.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from workers.pipeline.fastpaths import COMPILE_PAYS_BACK_AFTER
from workers.tasks import RunBinding, WorkerInfo, WorkerSettings

logger = logging.getLogger(__name__)

# What a parked actor was made for: the actor class, its Ray resources, and its settings without the
# per-job fields that `rebind` replaces (those of RunBinding, and the batch size).
Key = tuple[Any, Any, tuple[WorkerSettings, tuple[int, int, int] | None]]


@dataclasses.dataclass
class _Parked:
    key: Key
    index: int
    handle: Any
    info: WorkerInfo


_parked: list[_Parked] | None = None  # None: not inside keep_workers()
# A key holds the fields of RunBinding, which `rebind` replaces, with the same values for every job.
_NO_RUN = RunBinding("", "", None, 0, None, None)  # type: ignore[arg-type]  # a key, never an actor's settings


def key_of(worker_class: Any, resources: Any, settings: WorkerSettings) -> Key:
    # The job's size matters only through the compile decision it leads to (performance.compile: auto).
    size = settings.images_per_worker
    after = _compile_pays_back_after(settings)
    pays_back = int(size is None or size >= after) if settings.fast.compile == "auto" else None
    # On GPUs, and wherever the model is compiled, the batch and image sizes decide how the actor was set up
    # (VAE slicing, compiled shapes: workers.pipeline.fastpaths); elsewhere an actor takes any.
    shaped = bool(getattr(resources, "num_gpus", 0)) or settings.fast.compile in (True, "regional")
    shape = (settings.batch_size, settings.defaults.width, settings.defaults.height) if shaped else None
    per_job = _NO_RUN.applied_to(settings, batch_size=0, images_per_worker=pays_back)
    return worker_class, resources, (per_job, shape)


def _compile_pays_back_after(settings: WorkerSettings) -> int:
    """Images per worker from which `compile: auto` compiles, by the model's family (SD's where unknown)."""
    from workers.errors import UnknownFamilyError
    from workers.models.families.lookup import model_family

    try:
        found = model_family(settings.model, settings.revision)
    except UnknownFamilyError:
        found = None
    return found.family.auto_payback().pays_back_after if found is not None else COMPILE_PAYS_BACK_AFTER


@contextmanager
def keep_workers() -> Iterator[None]:
    """Jobs run inside the block reuse each other's actors where their settings allow."""
    global _parked
    outer, _parked = _parked, []
    try:
        yield
    finally:
        stop_parked()
        _parked = outer


def keeping() -> bool:
    return _parked is not None


def park(key: Key, actors: list[tuple[int, Any, WorkerInfo]]) -> None:
    """Keep a finished job's healthy actors (index, handle, info) for the next job."""
    assert _parked is not None
    _parked.extend(_Parked(key, index, handle, info) for index, handle, info in actors)


def take(key: Key, index: int) -> Any | None:
    """A parked actor made for `key` (the one that had `index`, if parked), removed from the park."""
    if not _parked:
        return None
    matching = [p for p in _parked if p.key == key]
    if not matching:
        return None
    chosen = next((p for p in matching if p.index == index), matching[0])
    _parked.remove(chosen)
    return chosen.handle


def stop_parked(keep: Key | None = None) -> None:
    """Stop the parked actors (those not made for `keep`), and wait until they are gone."""
    if not _parked:
        return
    from jobs.pool import cluster

    leaving = [p for p in _parked if p.key != keep]
    if not leaving:
        return
    _parked[:] = [p for p in _parked if p.key == keep]
    import ray

    if ray.is_initialized():
        logger.info("stopping %d parked worker(s)", len(leaving))
        cluster.stop_workers([p.handle for p in leaving], [p.info for p in leaving])
