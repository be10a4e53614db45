"""One job's images come from one set of library versions, unless the user allows a change.

The versions that decide pixels (`workers.io.provenance.PIXEL_PACKAGES`) are what each actor reports when
it is ready and what each shard's footer records; they are checked as actors come up, before any shard
is given to an actor whose versions differ from those the folder's shards were made with.
"""

from __future__ import annotations

import logging

from jobs.errors import OutputError
from workers.tasks import WorkerInfo

logger = logging.getLogger(__name__)


def version_changes(before: dict | None, after: dict | None) -> list[str]:
    """`diffusers 0.42.1 -> 0.43.0`, one per package that differs."""
    if before is None or after is None:
        known = after if before is None else before
        listed = ", ".join(f"{name} {_shown(known or {}, name)}" for name in sorted(known or {}))
        return [f"versions not recorded -> {listed}" if before is None else f"{listed} -> versions not recorded"]
    names = sorted(set(before) | set(after))
    return [
        f"{name} {_shown(before, name)} -> {_shown(after, name)}"
        for name in names
        if _shown(before, name) != _shown(after, name)
    ]


def _shown(versions: dict, name: str) -> str:
    if name not in versions:
        return "not recorded"
    return versions[name] or "not installed"


class VersionGuard:
    """Refuses a worker whose versions differ from the folder's shards (or from the job's first worker)."""

    def __init__(self, output_dir: str, recorded: list[dict | None], allow_change: bool):
        self.output_dir = output_dir
        self.allow_change = allow_change
        self.seen: list[dict | None] = list(recorded)  # every distinct set of versions the job's images use
        self._from_shards = bool(recorded)

    def check(self, worker: WorkerInfo) -> None:
        if worker.versions in self.seen:
            return
        if not self.seen:
            self.seen.append(worker.versions)
            return
        changes = "; ".join(version_changes(self.seen[-1], worker.versions))
        if not self.allow_change:
            where = "its shards were made with" if self._from_shards else "the job's first worker"
            raise OutputError(
                f"{self.output_dir}: {worker.name} runs other library versions than {where} ({changes}); "
                "rerun with --allow-version-change to mix them in one dataset (job.json records both), "
                "or --overwrite to start over"
            )
        logger.warning("%s: library versions changed (%s); job.json records both", worker.name, changes)
        self.seen.append(worker.versions)
