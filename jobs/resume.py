"""What decides a job's output, and what a rerun on an existing output folder may reuse."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
from dataclasses import dataclass, replace

from jobs.config import JobConfig
from jobs.errors import OutputError
from jobs.jobfile import JOB_FILE
from jobs.manifest import Manifest
from workers import storage
from workers.shard_stats import STATS_DIR
from workers.tasks import ShardTask
from workers.writer import DATA_DIR, ShardFooter, read_footer, remove_temp_files, shard_path

logger = logging.getLogger(__name__)


def job_identity(config: JobConfig, manifest: Manifest) -> dict:
    """Everything that changes a job's images or scores. Workers, batch size, fast paths and paths are not:
    they change pixels by at most float rounding (see README)."""
    return {
        "mode": config.mode,
        "model": config.model.model_dump(mode="json"),
        "generation": config.generation.model_dump(mode="json"),
        "clip": config.clip.model_dump(mode="json"),
        "output": config.output.model_dump(mode="json", exclude={"path"}),
        "seed": config.seed,
        "shard_size": config.shard_size,
        "manifest": {"rows": manifest.rows, "fingerprint": manifest.fingerprint},
    }


def identity_key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def read_job_file(output_dir: str) -> dict | None:
    path = storage.join(output_dir, JOB_FILE)
    if not storage.exists(path):
        return None
    try:
        return json.loads(storage.read_bytes(path))
    except (OSError, ValueError) as error:
        raise OutputError(f"{path}: unreadable ({error}); rerun with --overwrite to start over") from None


def check_same_job(output_dir: str, previous: dict, identity: dict) -> None:
    """Refuse to mix outputs of different settings in one folder; name what changed."""
    before = previous.get("identity")
    if before is None:
        raise OutputError(f"{output_dir}: holds output of an unknown job; rerun with --overwrite to replace it")
    changes = _differences(before, identity)
    if changes:
        raise OutputError(
            f"{output_dir}: holds a job with other settings ({'; '.join(changes)}); "
            "rerun with --overwrite to replace it, or choose another output folder"
        )


def _differences(before: dict, after: dict, prefix: str = "") -> list[str]:
    changes = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        name = f"{prefix}{key}"
        if isinstance(old, dict) and isinstance(new, dict):
            changes += _differences(old, new, name + ".")
        elif old != new:
            changes.append("manifest contents changed" if key == "fingerprint" else f"{name}: {old!r} -> {new!r}")
    return changes


@dataclass(frozen=True)
class ResumePlan:
    complete: dict[int, ShardFooter]  # verified shard files, by index
    todo: list[ShardTask]  # shards to run (missing, invalid, or with rows to retry)


def plan_resume(output_dir: str, shards: list[ShardTask], key: str, retry_failed: bool) -> ResumePlan:
    """Verify every planned shard's file from its footer; plan the rest (and, if asked, the failed rows)."""
    complete, todo = {}, []
    existing = set(storage.list_files(storage.join(output_dir, DATA_DIR)))
    for shard in shards:
        path = shard_path(output_dir, shard.index)
        if path not in existing:
            todo.append(shard)
            continue
        footer = read_footer(path)
        valid = footer is not None and footer.job_key == key and footer.shard == shard.index
        if valid and footer.rows == shard.outputs:
            if retry_failed and footer.failed:
                todo.append(_with_retry(shard))
            else:
                complete[shard.index] = footer
            continue
        logger.warning("shard %d: existing file is incomplete or from another job; redoing it", shard.index)
        todo.append(shard)
    return ResumePlan(complete=complete, todo=todo)


def clear_output(output_dir: str) -> None:
    """Remove what genbatch wrote (never anything else the folder may hold)."""
    for folder, pattern in ((DATA_DIR, "shard-*.parquet"), (STATS_DIR, "shard-*.json")):
        for path in storage.list_files(storage.join(output_dir, folder)):
            if fnmatch.fnmatch(storage.name(path), pattern):
                storage.delete(path)
    remove_temp_files(output_dir)
    storage.delete(storage.join(output_dir, JOB_FILE))


def _with_retry(shard: ShardTask) -> ShardTask:
    return replace(shard, retry_failed=True)
