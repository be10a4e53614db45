"""Fencing: a shard is published only while the run that started its actor still holds the output folder.

The driver's lock file (`OUTPUT/.genbatch.lock`, see `jobs.runfolder.lock`) holds the holder's pid and a token
unique to that run. An actor orphaned by a driver killed outright (`kill -9`) may still finish a shard
after the next run has taken the folder over; it checks the token just before publishing and, if
another run now holds the folder, publishes nothing.
"""

from __future__ import annotations

from workers.errors import FencedOut
from workers.io import layout


def lock_record(pid: int, token: str) -> bytes:
    return f"{pid} {token}\n".encode()


def read_lock_record(output_dir: str) -> tuple[str, str | None]:
    """(pid, token) from the lock file; ("unknown", None) when it is missing or empty."""
    try:
        with open(layout.lock_file(output_dir), "rb") as handle:
            fields = handle.read(200).decode(errors="replace").split()
    except OSError:
        return "unknown", None
    return (fields[0] if fields else "unknown"), (fields[1] if len(fields) > 1 else None)


def check_fence(output_dir: str, token: str | None) -> None:
    """Raise FencedOut unless the run with `token` still holds `output_dir` (None: no lock, e.g. object stores)."""
    if token is None:
        return
    pid, holder = read_lock_record(output_dir)
    if holder != token:
        raise FencedOut(f"{output_dir}: another genbatch run (pid {pid}) holds this output folder now; not publishing")
