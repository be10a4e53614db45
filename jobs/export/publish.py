"""An export's files are published whole with `workers.storage`'s one mechanism: a tar shard is streamed
through an `AtomicFile` (never held in memory), small files go through `publish_bytes`. A rerun removes
temporary files a killed export left.
"""

from __future__ import annotations

from workers.storage import AtomicFile, write_bytes

__all__ = ["AtomicFile", "publish_bytes"]


def publish_bytes(location: str, data: bytes, sync: bool = True) -> int:
    """Publish a small file whole; returns its size (the export counts the bytes it writes)."""
    write_bytes(location, data, sync=sync)
    return len(data)
