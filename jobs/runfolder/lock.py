"""One run per output folder: an exclusive lock that dies with the process that holds it."""

from __future__ import annotations

import fcntl
import logging
import os
import uuid
from pathlib import Path

from jobs.errors import OutputError
from workers.io import layout, storage
from workers.io.fence import lock_record

logger = logging.getLogger(__name__)


def lock_is_held(output_dir: str | Path) -> bool:
    """Whether a live run holds the folder's lock (a probe that takes nothing). Object stores have none."""
    if storage.is_remote(output_dir):
        return True
    path = Path(layout.lock_file(str(output_dir)))
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the probe's own shared lock
    return False


class OutputLock:
    """`flock` on OUTPUT/.genbatch.lock. The kernel drops it when the holder exits, even on SIGKILL,
    so a crashed run never leaves the folder locked."""

    def __init__(self, output_dir: str | Path):
        self.output_dir = output_dir
        self.remote = storage.is_remote(output_dir)
        self.path = Path(layout.lock_file(str(output_dir)))  # used for local folders only
        self._fd: int | None = None
        # Actors publish only while the lock file holds this token (workers.io.fence); None: no lock to check.
        self.token: str | None = None

    def __enter__(self) -> OutputLock:
        if self.remote:
            # Object stores have no lock that dies with its holder; README says not to share a prefix.
            logger.info("no exclusive lock on %s: object stores cannot hold one", self.output_dir)
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise OutputError(f"{self.path}: cannot open the output folder's lock file ({error.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = (os.pread(fd, 64, 0).decode(errors="replace").split() or ["unknown"])[0]
            os.close(fd)
            raise OutputError(
                f"{self.path.parent}: another genbatch run (pid {holder}) is using this output folder"
            ) from None
        self.token = uuid.uuid4().hex
        os.ftruncate(fd, 0)
        os.pwrite(fd, lock_record(os.getpid(), self.token), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None
