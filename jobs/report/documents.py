"""Publishing a report's files (report.json/.md/.html, a comparison's, a leaderboard's and its plots) all or none.

Each file is written under a temporary name first; only when every one is whole are they renamed (object
stores: moved) to their names. A destination that cannot hold them (a file, a path under a file, a
read-only or virtual file system, a folder where a document goes) is one line naming it, before anything
is computed (`check_destination`) and again if writing fails: never a traceback, never half a report.
"""

from __future__ import annotations

import errno

import pyarrow.fs as pafs

from jobs.errors import OutputError, one_line
from workers.io import storage
from workers.io.storage import AtomicFile


def check_destination(out: str, names: list[str]) -> None:
    """Refuse an `out` that is not a folder (or cannot become one), or where a document's name is taken by
    something other than a file: cheap checks, made before a report is computed."""
    try:
        kind = storage.file_type(out)
        if kind not in (pafs.FileType.Directory, pafs.FileType.NotFound):
            raise OutputError(f"{out}: not a folder; give -o a folder")
        for name in names:
            target = storage.join(out, name)
            if storage.file_type(target) not in (pafs.FileType.File, pafs.FileType.NotFound):
                raise OutputError(f"{target}: not a file; remove it or give -o another folder")
    except OSError as error:  # a path under a file, a bucket that cannot be reached
        raise OutputError(f"{out}: cannot write there ({_reason(error)})") from None


def publish_documents(out: str, documents: dict[str, bytes]) -> str:
    """Write every document into `out` under a temporary name, then give each its name: all or none."""
    check_destination(out, list(documents))
    staged: list[AtomicFile] = []
    try:
        for name, data in documents.items():
            sink = AtomicFile(storage.join(out, name))
            staged.append(sink)
            sink.write(data)
        for sink in staged:
            sink.commit()
    except OSError as error:
        for sink in staged:
            sink.discard()
        raise OutputError(f"{out}: cannot write there ({_reason(error)})") from None
    except BaseException:
        for sink in staged:
            sink.discard()
        raise
    return out


def _reason(error: OSError) -> str:
    if error.errno == errno.ENOTDIR:
        return "a file is in its path"
    return error.strerror or one_line(error)
