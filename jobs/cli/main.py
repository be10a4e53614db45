"""`genbatch`'s entry point: the one place that turns exceptions into messages and exit codes."""

from __future__ import annotations

import logging
import sys

from jobs import signals
from jobs.cli.commands import COMMANDS
from jobs.cli.parser import parse_args
from jobs.cli.printers import print_error
from jobs.errors import GenbatchError


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    json_logs = getattr(args, "log_format", "text") == "json"
    configure_logging(verbose=args.verbose, json_logs=json_logs)
    signals.install()
    try:
        return COMMANDS[args.command](args)
    except GenbatchError as error:
        signals.stopping()
        print_error(f"error: {error}", json_logs, exit_code=error.exit_code)
        return error.exit_code
    except KeyboardInterrupt as stop:
        signals.stopping()
        print_error(f"interrupted by {signals.signal_name_of(stop)}", json_logs, exit_code=signals.exit_code_of(stop))
        return signals.exit_code_of(stop)
    finally:
        # Until the process exits (Ray's shutdown runs at exit), a stop signal must not raise mid-tidy.
        signals.stopping()


class _CliHandler(logging.StreamHandler):
    """The handler `configure_logging` installs on the root logger."""


def configure_logging(verbose: bool, json_logs: bool) -> None:
    handler = _CliHandler(sys.stderr)
    if json_logs:
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    # Replaced by the next call (tests call main() many times in one process).
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _CliHandler)] + [handler]
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    if json_logs:
        logging.captureWarnings(True)  # Python's warnings print plain text lines of their own
    logging.getLogger("genbatch.progress").setLevel(logging.INFO)  # shown whenever progress is logged


if __name__ == "__main__":
    sys.exit(main())
