"""`genbatch`'s arguments: one builder per command."""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import itertools
import sys
import textwrap
from collections.abc import Callable
from importlib import metadata

from jobs.cli.printers import print_error
from jobs.errors import EXIT_CODES

AddCommand = Callable[..., argparse.ArgumentParser]

PARTIAL_HELP = (
    "go on without the run's shards that are not whole or not its job's (cut short, a rescore not "
    "finished), and say so; without it such a run is refused"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="genbatch",
        description="Batch text-to-image generation on Ray.",
        epilog=_exit_codes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the exit codes one per line
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    # -v also after the command (`genbatch run job.yaml -v`); SUPPRESS keeps a -v given before it.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)
    add_command = functools.partial(commands.add_parser, parents=[verbose])
    for add_arguments in (_run, _manifest, _report, _status, _rescore, _compare, _export):  # the order of --help
        add_arguments(add_command)
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """argparse's usage errors are plain text; with --log-format json they are one JSON error line instead."""
    argv = sys.argv[1:] if argv is None else argv
    json_requested = "--log-format=json" in argv or ("--log-format", "json") in itertools.pairwise(argv)
    if not json_requested:
        return build_parser().parse_args(argv)
    usage = io.StringIO()
    try:
        with contextlib.redirect_stderr(usage):
            return build_parser().parse_args(argv)
    except SystemExit as stop:
        if stop.code:
            print_error(usage.getvalue().strip().splitlines()[-1], json_logs=True, exit_code=int(stop.code))
        raise


def _run(add_command: AddCommand) -> None:
    run = add_command("run", help="run a generation job from a YAML config")
    run.add_argument("config", help="job config (YAML)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set generation.steps=30 (repeatable)",
    )
    _address(run)
    run.add_argument(
        "--quiet", action="store_true", help="no progress bar or progress lines, only warnings and the summary"
    )
    _log_format(run, "json: every log record and the final summary as one JSON object per line, for batch systems")
    run.add_argument(
        "--overwrite", action="store_true", help="clear the output folder's earlier job first, instead of resuming it"
    )
    run.add_argument(
        "--retry-failed", action="store_true", help="also rerun the rows whose status is error, rewriting their shards"
    )
    run.add_argument(
        "--allow-version-change",
        action="store_true",
        help="resume although torch/diffusers/transformers/genbatch versions changed (job.json records both)",
    )
    run.add_argument(
        "--yes", action="store_true", help="run a sweep of more combinations than genbatch runs without asking (64)"
    )


def _manifest(add_command: AddCommand) -> None:
    manifest = add_command(
        "manifest", help="turn a .txt/.csv/.tsv/.jsonl prompt list, or a prompt template, into a manifest"
    )
    manifest.add_argument(
        "input", nargs="?", help="prompt list: .txt (one prompt per line), .csv, .tsv or .jsonl (or use --template)"
    )
    manifest.add_argument("-o", "--output", required=True, help="manifest to write (.parquet)")
    manifest.add_argument("--prompt-column", help="column holding the prompt (default: prompt, else Prompt)")
    manifest.add_argument("--id-column", help="column holding unique ids (default: ids from the record number)")
    manifest.add_argument("--images-per-prompt", type=int, default=1, metavar="K", help="K rows per prompt")
    manifest.add_argument(
        "--seed",
        type=int,
        help="write a seed column derived from this base seed (default: none; the job's seed: then applies); "
        "with --sample it also decides the sample",
    )
    manifest.add_argument(
        "--template", help='prompt template instead of an INPUT list, e.g. "a {style} photo of a {object}"'
    )
    manifest.add_argument(
        "--var",
        dest="variables",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="the values of {NAME} in --template, one per line (repeatable, one per variable)",
    )
    manifest.add_argument(
        "--sample", type=int, metavar="N", help="N combinations drawn without replacement (seed: --seed, else 0)"
    )
    manifest.add_argument(
        "--yes", action="store_true", help="write a template's rows even when there are more than 1,000,000"
    )


def _report(add_command: AddCommand) -> None:
    report = add_command(
        "report", help="CLIP-score report of a run (report.html, .md, .json), or the leaderboard of a sweep folder"
    )
    report.add_argument("run", help="the run's output folder or URI (s3://...), or a sweep's (its runs in subfolders)")
    report.add_argument("--by", help="group by this column (default: category, when present)")
    report.add_argument("-o", "--output", help="report folder (default: RUN/report)")
    report.add_argument(
        "--reference",
        metavar="REF",
        help="also FID, KID and CMMD against these images: a run folder, Parquet with an image column, "
        "or a folder of .png/.jpg/.webp files",
    )
    report.add_argument(
        "--fid-weights", metavar="PATH", help="FID Inception-v3 weights (.safetensors); without them no FID/KID"
    )
    report.add_argument("--cmmd-model", metavar="MODEL", help="CLIP model for CMMD (default: the run's clip.model)")
    report.add_argument("--partial", action="store_true", help=PARTIAL_HELP)


def _status(add_command: AddCommand) -> None:
    status = add_command("status", help="progress of a running or finished job, from its output folder")
    status.add_argument("output", help="the job's output folder (or URI)")
    _log_format(status, "json: one JSON object")


def _rescore(add_command: AddCommand) -> None:
    rescore = add_command("rescore", help="new score columns for a finished run's images, without regenerating them")
    rescore.add_argument("run", help="the run's output folder")
    rescore.add_argument(
        "--set",
        dest="overrides",
        action="append",
        required=True,
        metavar="KEY=VALUE",
        help="a scores.* setting, e.g. --set scores.pickscore.model=yuvalkirstain/PickScore_v1 (repeatable)",
    )
    _address(rescore)
    _log_format(rescore, "json: every log record and the final summary as one JSON object per line, as for run")


def _compare(add_command: AddCommand) -> None:
    compare = add_command(
        "compare", help="paired comparison of two runs over their shared ids (B - A), and a leaderboard of N runs"
    )
    compare.add_argument(
        "runs", nargs="+", metavar="RUN", help="output folders or URIs of the runs (two: A, the baseline, then B)"
    )
    compare.add_argument("--by", help="group by this column of the first run (default: category, when present)")
    compare.add_argument("-o", "--output", help="comparison folder (default: the last RUN/compare)")
    compare.add_argument("--reference", help="set-level metrics (FID, KID, CMMD) of each run against this image set")
    compare.add_argument("--fid-weights", help="local copy of the standard FID Inception weights (with --reference)")
    compare.add_argument("--cmmd-model", help="CLIP model for CMMD (default: the runs' clip.model; with --reference)")
    compare.add_argument(
        "--partial",
        action="store_true",
        help="go on without a run's shards that are not whole or not the run's (cut short, a rescore not "
        "finished), and say so; without it such runs are refused",
    )


def _export(add_command: AddCommand) -> None:
    export = add_command("export", help="a run's images as WebDataset tar shards or an imagefolder, for training")
    export.add_argument("run", help="the run's output folder or URI (s3://...)")
    export.add_argument("--format", required=True, choices=["webdataset", "imagefolder"], help="what to write")
    export.add_argument("-o", "--output", required=True, help="destination folder or URI")
    export.add_argument("--where", help="keep only rows where this holds, e.g. \"status == 'ok' and clip_score >= 26\"")
    export.add_argument("--dedup", action="store_true", help="drop exact duplicate images (by image_sha256)")
    export.add_argument("--shard-size", type=int, default=10_000, metavar="N", help="samples per shard (default 10000)")
    export.add_argument(
        "--overwrite", action="store_true", help="replace an earlier export with other settings in the destination"
    )
    export.add_argument("--partial", action="store_true", help=PARTIAL_HELP)


def _address(command: argparse.ArgumentParser) -> None:
    command.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local instance)")


def _log_format(command: argparse.ArgumentParser, help_text: str) -> None:
    command.add_argument("--log-format", choices=["text", "json"], default="text", help=help_text)


def _exit_codes_help() -> str:
    lines = ["exit codes:"]
    for code, meaning in EXIT_CODES.items():
        lines += textwrap.wrap(meaning, width=78, initial_indent=f"  {code:<5}", subsequent_indent=" " * 7)
    return "\n".join(lines)


def _version() -> str:
    try:
        return metadata.version("genbatch")
    except metadata.PackageNotFoundError:
        return "(not installed)"
