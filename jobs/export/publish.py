"""A file written as a stream and published whole: a reader never sees a partial file under its final name.

Like `workers.storage.write_bytes`, but without holding the file in memory: a tar shard of 10,000 images
is streamed to its temporary name (`.NAME.<uuid>.tmp`, see `workers.layout`) and renamed (local) or moved
(object stores: a server-side copy) when complete. A rerun removes temporary files a killed export left.
"""

from __future__ import annotations

import logging
import os

import pyarrow.fs as pafs

from workers import layout, storage

logger = logging.getLogger(__name__)


class AtomicFile:
    """`write()` bytes, then `commit()` to publish or `discard()` to leave nothing behind."""

    def __init__(self, location: str, sync: bool = True):
        self.location = location
        self.bytes = 0
        self._sync = sync
        self._temp = storage.join(storage.parent(location), layout.temp_name(storage.name(location)))
        if storage.is_remote(location):
            self._filesystem, self._temp_path = storage.resolve(self._temp)
            self._sink = self._filesystem.open_output_stream(self._temp_path)
        else:
            os.makedirs(os.path.dirname(storage.local_path(location)) or ".", exist_ok=True)
            self._sink = open(storage.local_path(self._temp), "wb")  # closed in commit() or discard()

    def write(self, data: bytes) -> int:
        self._sink.write(data)
        self.bytes += len(data)
        return len(data)

    def commit(self) -> None:
        if storage.is_remote(self.location):
            self._sink.close()
            _, final_path = storage.resolve(self.location)
            self._filesystem.move(self._temp_path, final_path)
            return
        temp = storage.local_path(self._temp)
        self._sink.flush()
        if self._sync:
            os.fsync(self._sink.fileno())
        self._sink.close()
        os.chmod(temp, 0o644)
        os.replace(temp, storage.local_path(self.location))

    def discard(self) -> None:
        """Close and delete the temporary file; used on error paths, so its own failure is only logged."""
        try:
            self._sink.close()
            if storage.is_remote(self.location):
                if self._filesystem.get_file_info(self._temp_path).type == pafs.FileType.File:
                    self._filesystem.delete_file(self._temp_path)
            elif os.path.exists(storage.local_path(self._temp)):
                os.unlink(storage.local_path(self._temp))
        except OSError as error:
            logger.warning("could not delete %s: %s", self._temp, error)


def publish_bytes(location: str, data: bytes, sync: bool = True) -> int:
    """Publish a small file whole; returns its size."""
    sink = AtomicFile(location, sync=sync)
    try:
        sink.write(data)
        sink.commit()
    except BaseException:
        sink.discard()
        raise
    return len(data)
