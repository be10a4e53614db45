"""The one place that turns the job config into the settings actors get (workers.tasks).

Every default lives in jobs.config.schema; the worker-side dataclasses have none, and each is filled from
its config section by field name, so a field added on one side and not the other fails at once.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TypeVar

from pydantic import BaseModel

from jobs.config.adapters import adapter_files, lora_files
from jobs.config.schema import JobConfig
from workers.tasks import FastPaths, GenerationDefaults, ImageEncoding, ScoreModels, WorkerSettings

T = TypeVar("T", GenerationDefaults, ImageEncoding, FastPaths)


def from_section(cls: type[T], section: BaseModel) -> T:
    """A worker-side settings dataclass with each field taken from the config section of the same name."""
    return cls(**section.model_dump(include={field.name for field in fields(cls)}))


def worker_settings(
    config: JobConfig,
    output: str,
    key: str,
    num_threads: int | None = None,
    run_token: str | None = None,
    images_to_generate: int | None = None,
) -> WorkerSettings:
    """`images_to_generate`: what this run generates (the driver's plan); None where it is not known (an actor
    built alone, as in benchmarks), and then `performance.compile: auto` compiles on a GPU whatever the job's size."""
    model = config.model
    return WorkerSettings(
        model=model.id,
        revision=model.revision,
        variant=model.variant,
        scheduler=model.scheduler,
        dtype=model.dtype,
        clip_model=config.clip.model,
        scores=score_models(config),
        mode=config.mode,
        batch_size=config.resources.batch_size,
        job_seed=config.seed,
        defaults=from_section(GenerationDefaults, config.generation),
        encoding=from_section(ImageEncoding, config.output),
        fast=from_section(FastPaths, config.performance),
        output_dir=output,
        job_key=key,
        num_threads=num_threads,
        run_token=run_token,
        images_per_worker=images_per_worker(images_to_generate, config.resources.worker_range().min),
        loras=lora_files(config),
        adapters=adapter_files(config),
    )


def images_per_worker(images_to_generate: int | None, workers: int) -> int | None:
    """Each worker's share of the run's images, rounded up: the actors split the shards evenly. An
    elastic pool is counted at its minimum size (the most each actor may have to make)."""
    if images_to_generate is None:
        return None
    return -(-images_to_generate // workers)


def score_models(config: JobConfig) -> ScoreModels:
    """The `scores` section as the actors get it."""
    pickscore, aesthetic = config.scores.pickscore, config.scores.aesthetic
    return ScoreModels(
        pickscore=None if pickscore is None else pickscore.model,
        aesthetic=None if aesthetic is None else aesthetic.model,
        aesthetic_head=None if aesthetic is None else aesthetic.head,
    )
