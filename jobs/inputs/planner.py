"""Cutting a validated manifest into shards: deterministic, and never spanning two files."""

from __future__ import annotations

import os

from jobs.inputs.manifest import Manifest
from workers.io import storage
from workers.tasks import ShardTask


def plan_shards(manifest: Manifest, shard_size: int, images_per_row: int = 1) -> list[ShardTask]:
    """Consecutive runs of at most `shard_size` rows of each file, numbered in manifest order.

    The same manifest and shard_size always give the same shards, so shard files can be named by index.
    """
    shards: list[ShardTask] = []
    for manifest_file in manifest.files:
        path = manifest_file.path  # one string shared by the file's shards
        path = path if storage.is_remote(path) else os.path.abspath(path)
        for start in range(0, manifest_file.rows, shard_size):
            stop = min(start + shard_size, manifest_file.rows)
            shards.append(
                ShardTask(
                    index=len(shards),
                    file=path,
                    start=start,
                    stop=stop,
                    first_row=manifest_file.first_row + start,
                    has_id_column=manifest.has_id_column,
                    images_per_row=images_per_row,
                )
            )
    return shards
