"""The actor side's exceptions, in one family, and how every error is worded for a log line or a row.

The driver tells these apart with isinstance (they cross Ray pickled, as the exceptions themselves).
Each keeps the built-in base it had (OSError, ValueError, ...) so callers that catch those still do.
"""

from __future__ import annotations


def one_line(error: BaseException | str) -> str:
    """An error's message on one line: row errors, footers and log lines must stay one line."""
    return " ".join(str(error).split())


def describe(error: BaseException) -> str:
    """`ExceptionType: message`, on one line."""
    return one_line(f"{type(error).__name__}: {error}")


class WorkerError(Exception):
    """Base of the errors an actor raises on purpose."""


class WorkerLoadError(WorkerError, RuntimeError):
    """The actor could not load its pipeline or CLIP model; the message is already `Type: message`."""


class ScorerLoadError(WorkerError, ValueError):
    """A scorer's file is not what it must be (an aesthetic head with other tensors or shapes)."""


class ModelNotFoundError(WorkerError, OSError):
    """A model reference that names nothing loadable (not in the hub cache, not on the hub, no folder)."""


class InitImageError(WorkerError, ValueError):
    """A row's init image cannot be read or decoded, or has the wrong size under the `error` policy."""


class ShardError(WorkerError):
    """A shard could not be completed; the driver retries it."""


class ShardWriteError(ShardError, OSError):
    """The shard's file (or its stats) could not be written; nothing partial is left visible."""


class FencedOut(ShardError, OSError):
    """This run no longer holds the output folder's lock: another run took it, so nothing is published."""


class IncompleteWeightsError(WorkerError, ValueError):
    """A model folder whose weights lack some of the model's tensors (or hold others): loaded, it would run on
    random weights. The message names the folder and the first missing tensors."""


class UnknownFamilyError(WorkerError, ValueError):
    """A model whose pipeline class (model_index.json `_class_name`) is of no family genbatch knows."""
