"""`OUTPUT/stats/shard-NNNNN.json`: how each shard went, written by the actor right after the shard's file.

Operators (and `genbatch status`) read these to follow a job from the output folder alone, while it runs
or after it ended; a shard redone by a later run replaces its stats.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from workers.io import layout, storage


@dataclass(frozen=True)
class ShardStats:
    shard: int
    rows: int  # rows in the shard
    ok: int
    failed: int
    generated: int  # rows this run generated (fewer than `rows` when only failed rows were retried)
    seconds: float
    images_per_s: float  # generated / seconds
    worker: str
    node: str  # Ray node id
    node_ip: str
    pid: int
    finished_at: str  # UTC, ISO 8601
    job_key: str = ""  # the job that wrote it (as in the shard's footer); "" in stats from before it was kept


def write_shard_stats(output_dir: str, stats: ShardStats, before_publish=None) -> None:
    data = (json.dumps(asdict(stats)) + "\n").encode()
    storage.write_bytes(layout.stats_path(output_dir, stats.shard), data, before_publish)


def read_all_stats(output_dir: str) -> list[ShardStats]:
    """Every shard's stats, by shard number; files that are not genbatch stats (or not under their
    shard's name) are ignored."""
    found = []
    for location in storage.list_files(layout.stats_dir(output_dir)):
        if not layout.is_stats_file(storage.name(location)):
            continue
        try:
            stats = ShardStats(**json.loads(storage.read_bytes(location)))
        except (TypeError, ValueError):  # not a JSON object of ShardStats' fields
            continue
        if isinstance(stats.shard, int) and storage.name(location) == layout.stats_file_name(stats.shard):
            found.append(stats)
    return sorted(found, key=lambda stats: stats.shard)
