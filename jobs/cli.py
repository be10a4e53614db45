"""`genbatch` command line: the one place that turns exceptions into messages and exit codes."""

from __future__ import annotations

import argparse
import logging
import sys

from jobs.errors import EXIT_INTERRUPTED, GenbatchError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="genbatch", description="Batch text-to-image generation on Ray.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a generation job from a YAML config")
    run.add_argument("config", help="job config (YAML)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set generation.steps=30 (repeatable)",
    )
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local instance)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return run_command(args)
    except GenbatchError as error:
        print(f"genbatch: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("genbatch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def run_command(args: argparse.Namespace) -> int:
    from jobs.config import load_config
    from jobs.driver import run_job

    config = load_config(args.config, args.overrides)
    summary = run_job(config, address=args.address, show_progress=not args.quiet)
    state = "interrupted" if summary.interrupted else "done"
    print(
        f"genbatch: {state}: {summary.ok} ok, {summary.failed} failed"
        + (f", {summary.not_run} not run" if summary.not_run else "")
        + f" of {summary.rows} rows in {summary.shards} shards"
        + (f" ({summary.shards_failed} failed)" if summary.shards_failed else "")
    )
    print(
        f"genbatch: {summary.seconds:.1f}s total, {summary.startup_seconds:.1f}s start-up, "
        f"{summary.images_per_s:.2f} images/s after start-up"
    )
    print(f"genbatch: output: {summary.output}")
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(main())
