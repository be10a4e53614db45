"""genbatch's exceptions. The CLI turns them into one-line messages and exit codes."""

from workers.errors import one_line  # the actors' wording, used on both sides

__all__ = ["one_line"]

EXIT_OK = 0
EXIT_ROWS_FAILED = 1
EXIT_BAD_INPUT = 2
MAX_NAMES_SHOWN = 5


def some_of(names: list[str]) -> str:
    """The first few names, and how many more there are: error messages stay one readable line."""
    more = len(names) - MAX_NAMES_SHOWN
    return ", ".join(names[:MAX_NAMES_SHOWN]) + (f" and {more} more" if more > 0 else "")


class GenbatchError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = EXIT_ROWS_FAILED


class ConfigError(GenbatchError):
    """The job config (file, --set override, or a resource it names) is invalid."""

    exit_code = EXIT_BAD_INPUT


class ManifestError(GenbatchError):
    """The prompt manifest is missing, unreadable or invalid."""

    exit_code = EXIT_BAD_INPUT


class OutputError(GenbatchError):
    """The output folder cannot be used."""

    exit_code = EXIT_BAD_INPUT


class UsageError(GenbatchError):
    """A report or compare asks for what its runs cannot give (no such column, nothing in common)."""

    exit_code = EXIT_BAD_INPUT


class WorkerStartError(GenbatchError):
    """No actor could load its models. `summary` (a jobs.lifecycle.JobSummary, when a run of its own raised it)
    counts the rows, none of them run, for the CLI to print before the error."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, summary: object | None = None):
        super().__init__(message)
        self.summary = summary


class RescoreError(GenbatchError):
    """A shard failed all its attempts at rescoring; the shards rescored are kept, and a rerun goes on from them."""

    exit_code = EXIT_ROWS_FAILED
