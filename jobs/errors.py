"""genbatch's exceptions. The CLI turns them into one-line messages and exit codes."""

import signal

from workers.errors import one_line  # the actors' wording, used on both sides

__all__ = ["one_line"]

EXIT_OK = 0
EXIT_ROWS_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_SIGNAL_BASE = 128  # a job stopped by a signal exits 128 + its number, as shells report it

# Every code the CLI exits with and what it means: the source of `genbatch --help` and docs/reference/exit-codes.md.
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "Every row ok (run, sweep); the command did what it was asked (the other commands).",
    EXIT_ROWS_FAILED: "Some rows failed, or a shard failed after its retries (run, sweep, rescore); "
    "a rerun retries what failed.",
    EXIT_BAD_INPUT: "Bad input, nothing started: a usage error, an invalid config or manifest, an output folder that "
    "holds another job, is in use or cannot be used, or no worker could load the models.",
    EXIT_SIGNAL_BASE + signal.SIGHUP: "Interrupted by SIGHUP (a closed terminal); only whole shards remain.",
    EXIT_SIGNAL_BASE + signal.SIGINT: "Interrupted by SIGINT (Ctrl-C); only whole shards remain.",
    EXIT_SIGNAL_BASE + signal.SIGTERM: "Interrupted by SIGTERM (Slurm preemption, kubectl delete, systemd); "
    "only whole shards remain.",
}
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
    """No actor could load its models. `summary` (a jobs.run.records.JobSummary, when a run of its own raised it)
    counts the rows, none of them run, for the CLI to print before the error."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str, summary: object | None = None):
        super().__init__(message)
        self.summary = summary


class RescoreError(GenbatchError):
    """A shard failed all its attempts at rescoring; the shards rescored are kept, and a rerun goes on from them."""

    exit_code = EXIT_ROWS_FAILED
