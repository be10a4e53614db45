"""What decides a job's output, and what a rerun on an existing output folder may reuse."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

from jobs.config.adapters import lora_identity
from jobs.config.schema import JobConfig
from jobs.errors import OutputError, some_of
from jobs.inputs.manifest import Manifest
from jobs.runfolder.jobfile import JobRecord
from jobs.runfolder.shard_files import list_shard_files, shard_file
from workers.io import layout, storage
from workers.io.writer import ShardFooter, remove_temp_files
from workers.pipeline.step_cache import PARAMETERS as STEP_CACHE_PARAMETERS
from workers.tasks import ShardTask

logger = logging.getLogger(__name__)


# Identity entries that are left out at their default (quantize_identity): compared as that default,
# so that turning one on or off names the setting (`performance.quantize: 'none' -> 'int8'`).
_LEFT_OUT_AT_DEFAULT = {"performance": {"quantize": "none", "cache": "none"}}
# Identity entries whose values mean nothing to a reader: a change is named by its sentence.
_CHANGE_SENTENCES = {"fingerprint": "manifest contents changed"}


def quantize_identity(config: JobConfig) -> dict:
    """performance.quantize and performance.cache in a job's identity: each absent when off, so the keys of jobs
    that use neither stay what they were before the options existed; with quantize, which layers it changed
    changes pixels too, and with a cache, its parameters."""
    performance = config.performance
    identity: dict = {}
    if performance.quantize != "none":
        identity.update(quantize=performance.quantize, quantize_min_features=performance.quantize_min_features)
    if performance.cache != "none":  # a step cache changes pixels too (workers.pipeline.step_cache); absent when off
        cache = {"cache", *STEP_CACHE_PARAMETERS[performance.cache]}
        identity.update(performance.model_dump(mode="json", include=cache))
    return {"performance": identity} if identity else {}


def job_identity(config: JobConfig, manifest: Manifest) -> dict:
    """Everything that changes a job's images or scores. Workers, batch size, fast paths and paths are not:
    they change pixels by at most float rounding (see README); quantizing the UNet is the exception."""
    return {
        "mode": config.mode,
        # LoRAs by their files' sha256 and weights (jobs.config.adapters), not their paths; absent without any.
        "model": config.model.model_dump(mode="json", exclude={"loras", "adapters"}) | lora_identity(config),
        # Settings of other families (true_cfg_scale, ...) are None, and left out: SD jobs keep their keys.
        "generation": config.generation.model_dump(mode="json", exclude_none=True),
        "clip": config.clip.model_dump(mode="json"),
        "output": config.output.model_dump(mode="json", exclude={"path"}),
        "seed": config.seed,
        **quantize_identity(config),
        "shard_size": config.shard_size,
        "manifest": {"rows": manifest.rows, "fingerprint": manifest.fingerprint},
        **scores_identity(config),
    }


def scores_identity(config: JobConfig) -> dict:
    """The `scores` part of a job's identity: absent when no scorer is set, so the keys of jobs without
    scores stay what they were before scores existed."""
    scores = config.scores.model_dump(mode="json", exclude_none=True)
    return {"scores": scores} if scores else {}


def check_same_job(output_dir: str, previous: JobRecord, identity: dict) -> None:
    """Refuse to mix outputs of different settings in one folder; name what changed."""
    changes = differences(_with_defaults(previous.identity), _with_defaults(identity), _CHANGE_SENTENCES)
    if changes:
        raise OutputError(
            f"{output_dir}: holds a job with other settings ({'; '.join(changes)}); "
            "rerun with --overwrite to replace it, or choose another output folder"
        )


def _with_defaults(identity: dict) -> dict:
    """`identity` with the entries left out at their default put back, section by section."""
    return {**identity, **{name: {**left, **identity.get(name, {})} for name, left in _LEFT_OUT_AT_DEFAULT.items()}}


def differences(before: dict, after: dict, sentences: Mapping[str, str], prefix: str = "") -> list[str]:
    """What changed between two identities (a job's, an export's), one `name: old -> new` each: nested
    entries by their dotted names, list entries by index (LoRAs). A key in `sentences` is named by its
    sentence instead (a fingerprint's values mean nothing to a reader)."""
    changes = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        name = f"{prefix}{key}"
        if isinstance(old, dict) and isinstance(new, dict):
            changes += differences(old, new, sentences, name + ".")
        elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):  # LoRAs: name the entry
            changes += differences(
                {f"{key}[{i}]": value for i, value in enumerate(old)},
                {f"{key}[{i}]": value for i, value in enumerate(new)},
                sentences,
                prefix,
            )
        elif old != new:
            changes.append(sentences[key] if key in sentences else f"{name}: {old!r} -> {new!r}")
    return changes


@dataclass(frozen=True)
class ResumePlan:
    complete: dict[int, ShardFooter]  # verified shard files, by index
    todo: list[ShardTask]  # shards to run (missing, or with rows to retry)
    retrying: dict[int, ShardFooter]  # the existing files of the shards in `todo` that retry failed rows
    versions: list[dict | None]  # the distinct library versions recorded by the complete shards

    @property
    def images_to_generate(self) -> int:
        return sum(shard.images_to_generate for shard in self.todo)

    @property
    def has_shards(self) -> bool:
        return bool(self.complete or self.retrying)


def plan_resume(output_dir: str, shards: list[ShardTask], key: str, retry_failed: bool) -> ResumePlan:
    """Verify every shard file in the folder from its footer; plan the rest (and, if asked, the failed rows).

    Every `shard-*.parquet` in `data/` must be a shard this job planned, written by this job: a folder
    never mixes jobs, and a file nobody planned is not silently counted (or ignored)."""
    footers, foreign = {}, []
    for file in list_shard_files(output_dir, len(shards)):
        if file.index is None:
            foreign.append(f"{file.name} (not planned: this job has {len(shards)} shards)")
        elif file.footer is None:
            foreign.append(f"{file.name} (not a complete genbatch shard)")
        elif (footer := file.verified(key, shards[file.index].images)) is None:
            foreign.append(f"{file.name} (another job)")
        else:
            footers[file.index] = footer
    if foreign:
        shown = some_of(foreign)
        counted = "1 shard file is" if len(foreign) == 1 else f"{len(foreign)} shard files are"
        raise OutputError(
            f"{layout.data_dir(output_dir)}: {counted} not part of this job: {shown}; "
            "rerun with --overwrite to replace them, or choose another output folder"
        )
    complete, todo, retrying = {}, [], {}
    for shard in shards:
        footer = footers.get(shard.index)
        if footer is None:
            todo.append(shard)
        elif retry_failed and footer.failed:
            todo.append(replace(shard, retry_failed=True, failed_before=footer.failed))
            retrying[shard.index] = footer
        else:
            complete[shard.index] = footer
    versions = []
    for footer in footers.values():
        if footer.versions not in versions:
            versions.append(footer.versions)
    return ResumePlan(complete=complete, todo=todo, retrying=retrying, versions=versions)


def count_on_disk(output_dir: str, shards: list[ShardTask], key: str) -> dict[int, ShardFooter]:
    """The footers of those `shards` whose files are complete now (a footer read per shard)."""
    found = {}
    for shard in shards:
        footer = shard_file(output_dir, shard.index).verified(key, shard.images)
        if footer is not None:
            found[shard.index] = footer
    return found


def clear_output(output_dir: str) -> None:
    """Remove what genbatch wrote (never anything else the folder may hold)."""
    for folder, is_ours in ((layout.data_dir, layout.is_shard_file), (layout.stats_dir, layout.is_stats_file)):
        for path in storage.list_files(folder(output_dir)):
            if is_ours(storage.name(path)):
                storage.delete(path)
    remove_temp_files(output_dir)
    job_file = layout.job_file(output_dir)
    if not storage.is_remote(job_file) and os.path.isdir(job_file):
        try:
            os.rmdir(job_file)  # only an empty one: a folder's contents are not genbatch's to delete
        except OSError as error:
            raise OutputError(f"{job_file}: a folder, not a job record; cannot remove it ({error.strerror})") from None
    storage.delete(job_file)
