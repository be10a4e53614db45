"""`genbatch` command line: the one place that turns exceptions into messages and exit codes."""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import itertools
import json
import logging
import sys
import textwrap
from importlib import metadata

from jobs import signals
from jobs.errors import EXIT_CODES, GenbatchError, UsageError, WorkerStartError


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
    run.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local instance)")
    run.add_argument(
        "--quiet", action="store_true", help="no progress bar or progress lines, only warnings and the summary"
    )
    run.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="json: every log record and the final summary as one JSON object per line, for batch systems",
    )
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
    report.add_argument(
        "--partial",
        action="store_true",
        help="go on without the run's shards that are not whole or not its job's (cut short, a rescore not "
        "finished), and say so; without it such a run is refused",
    )

    status = add_command("status", help="progress of a running or finished job, from its output folder")
    status.add_argument("output", help="the job's output folder (or URI)")
    status.add_argument("--log-format", choices=["text", "json"], default="text", help="json: one JSON object")

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
    rescore.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local instance)")
    rescore.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="json: every log record and the final summary as one JSON object per line, as for run",
    )

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
    export.add_argument(
        "--partial",
        action="store_true",
        help="go on without the run's shards that are not whole or not its job's (cut short, a rescore not "
        "finished), and say so; without it such a run is refused",
    )
    return parser


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
            _error(usage.getvalue().strip().splitlines()[-1], json_logs=True, exit_code=int(stop.code))
        raise


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    json_logs = getattr(args, "log_format", "text") == "json"
    configure_logging(verbose=args.verbose, json_logs=json_logs)
    commands = {
        "run": run_command,
        "manifest": manifest_command,
        "report": report_command,
        "compare": compare_command,
        "status": status_command,
        "rescore": rescore_command,
        "export": export_command,
    }
    signals.install()
    try:
        return commands[args.command](args)
    except GenbatchError as error:
        signals.stopping()
        _error(f"error: {error}", json_logs, exit_code=error.exit_code)
        return error.exit_code
    except KeyboardInterrupt as stop:
        signals.stopping()
        _error(f"interrupted by {signals.signal_name_of(stop)}", json_logs, exit_code=signals.exit_code_of(stop))
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


def _error(message: str, json_logs: bool, exit_code: int) -> None:
    if json_logs:
        print(json.dumps({"event": "error", "message": message, "exit_code": exit_code}), file=sys.stderr)
    else:
        print(f"genbatch: {message}", file=sys.stderr)


def run_command(args: argparse.Namespace) -> int:
    from jobs.config import load_config
    from jobs.driver import run_job

    config = load_config(args.config, args.overrides)
    if args.quiet:
        progress = "off"
    elif args.log_format == "json" or not sys.stderr.isatty():
        progress = "log"  # a bar's carriage returns make a mess of collected logs
    else:
        progress = "bar"
    if config.sweep:
        return sweep_command(args, config, progress)
    try:
        summary = run_job(
            config,
            address=args.address,
            progress=progress,
            overwrite=args.overwrite,
            retry_failed=args.retry_failed,
            forward_actor_logs=args.log_format == "text",
            allow_version_change=args.allow_version_change,
        )
    except WorkerStartError as error:
        if error.summary is not None:  # no worker loaded: the rows are counted as not run, then the error
            _print_not_started(error.summary, args.log_format == "json", error.exit_code)
        raise
    if summary.interrupted:
        _error(f"interrupted by {summary.signal}", args.log_format == "json", exit_code=summary.exit_code)
    if args.log_format == "json":
        print(json.dumps({"event": "summary", **summary.as_dict()}))
        return summary.exit_code
    if summary.shards_run == 0:
        print(
            f"genbatch: nothing to do: all {summary.shards} shards are complete "
            f"({summary.ok} ok, {summary.failed} failed of {summary.images} rows)"
            + ("; rerun with --retry-failed to retry the failed rows" if summary.failed else "")
        )
        print(f"genbatch: output: {summary.output}")
        return summary.exit_code
    state = "interrupted" if summary.interrupted else "done"
    resumed = summary.shards - summary.shards_run
    print(
        f"genbatch: {state}: {summary.ok} ok, {summary.failed} failed"
        + (f", {summary.not_run} not run" if summary.not_run else "")
        + f" of {summary.images} rows in {summary.shards} shards"
        + (f" ({summary.shards_failed} failed)" if summary.shards_failed else "")
        + (f", {resumed} already complete" if resumed else "")
    )
    if summary.retries or summary.replaced_workers:
        print(f"genbatch: recovered: {summary.retries} shard retries, {summary.replaced_workers} workers replaced")
    print(
        f"genbatch: {summary.seconds:.1f}s total, {summary.startup_seconds:.1f}s start-up, "
        f"{summary.images_per_s:.2f} images/s after start-up"
    )
    print(f"genbatch: output: {summary.output}")
    return summary.exit_code


def _print_not_started(summary, json_logs: bool, exit_code: int) -> None:
    """The summary of a run whose workers all failed to load: nothing ran, nothing new is on disk."""
    if json_logs:
        print(json.dumps({"event": "summary", **summary.as_dict(), "status": "failed", "exit_code": exit_code}))
        return
    print(
        f"genbatch: failed: {summary.ok} ok, {summary.failed} failed, {summary.not_run} not run "
        f"of {summary.images} rows in {summary.shards} shards (no worker could load the models)"
    )
    print(f"genbatch: output: {summary.output}")


def sweep_command(args: argparse.Namespace, config, progress: str) -> int:
    from jobs.sweep import run_sweep

    sweep = run_sweep(
        config,
        args.config,
        address=args.address,
        progress=progress,
        overwrite=args.overwrite,
        retry_failed=args.retry_failed,
        yes=args.yes,
        forward_actor_logs=args.log_format == "text",
        allow_version_change=args.allow_version_change,
    )
    if sweep.interrupted:
        _error(f"interrupted by {sweep.signal}", args.log_format == "json", exit_code=sweep.exit_code)
    if args.log_format == "json":
        print(json.dumps({"event": "summary", **sweep.as_dict()}))
        return sweep.exit_code
    counts = f"{sweep.ok} ok, {sweep.failed} failed of {sweep.images} rows"
    if sweep.shards_run == 0:
        print(f"genbatch: nothing to do: all {len(sweep.runs)} runs are complete ({counts})")
        print(f"genbatch: output: {sweep.output}")
        return sweep.exit_code
    for folder, run in sweep.runs:
        if folder in sweep.not_started:  # a stop came before its group's turn
            state = "not started"
        else:
            state = "complete before" if run.shards_run == 0 else f"{run.images_per_s:.2f} images/s"
        print(
            f"genbatch:   {folder}: {run.ok} ok, {run.failed} failed"
            + (f", {run.not_run} not run" if run.not_run else "")
            + f" of {run.images} rows ({state})"
        )
    state = "interrupted" if sweep.interrupted else "done"
    print(
        f"genbatch: {state}: {counts}"
        + (f", {sweep.not_run} not run" if sweep.not_run else "")
        + f" in {len(sweep.runs)} runs, {sweep.seconds:.1f}s total"
    )
    print(f"genbatch: output: {sweep.output}")
    return sweep.exit_code


def manifest_command(args: argparse.Namespace) -> int:
    from jobs.prompt_import import import_prompts
    from jobs.templates import write_template_manifest

    if args.template is not None:
        if args.input is not None or args.prompt_column or args.id_column:
            raise UsageError("manifest: --template makes the prompts; drop INPUT, --prompt-column and --id-column")
        summary = write_template_manifest(
            args.template,
            args.variables,
            args.output,
            images_per_prompt=args.images_per_prompt,
            seed=args.seed,
            sample=args.sample,
            yes=args.yes,
        )
        print(
            f"genbatch: wrote {summary.rows} rows ({summary.prompts} combinations) to {summary.output}; "
            f"columns: {', '.join(summary.columns)}"
        )
        return 0
    if args.input is None:
        raise UsageError("manifest: give a prompt list (INPUT) or --template with --var NAME=FILE")
    if args.variables or args.sample is not None or args.yes:
        raise UsageError("manifest: --var, --sample and --yes go with --template")
    summary = import_prompts(
        args.input,
        args.output,
        prompt_column=args.prompt_column,
        id_column=args.id_column,
        images_per_prompt=args.images_per_prompt,
        seed=args.seed,
    )
    print(
        f"genbatch: wrote {summary.rows} rows ({summary.prompts} prompts) to {summary.output}; "
        f"columns: {', '.join(summary.columns)}"
    )
    return 0


def report_command(args: argparse.Namespace) -> int:
    from jobs.errors import UsageError
    from jobs.report.leaderboard import sweep_runs, write_leaderboard
    from jobs.report.summary import write_report
    from workers import storage

    if args.reference is None and (args.fid_weights or args.cmmd_model):
        raise UsageError("--fid-weights and --cmmd-model need --reference")
    check_cmmd_model(args.cmmd_model)
    runs = sweep_runs(args.run)
    if runs:  # a sweep folder: the leaderboard over its runs
        out = write_leaderboard(
            runs,
            args.output or storage.join(storage.normalized(args.run), "report"),
            by=args.by,
            reference=args.reference,
            fid_weights=args.fid_weights,
            cmmd_model=args.cmmd_model,
            partial=args.partial,
        )
        print(
            f"genbatch: leaderboard of {len(runs)} runs: {storage.join(out, 'leaderboard.html')} "
            "(also leaderboard.md, leaderboard.json, plots)"
        )
        return 0
    options = {"reference": args.reference, "fid_weights": args.fid_weights, "cmmd_model": args.cmmd_model}
    out = write_report(args.run, args.output, by=args.by, partial=args.partial, **(options if args.reference else {}))
    print(f"genbatch: report: {storage.join(out, 'report.html')} (also report.md, report.json)")
    return 0


def check_cmmd_model(ref: str | None) -> None:
    """Before any image is read: a --cmmd-model folder that is not a whole CLIP would embed with random weights."""
    from jobs.preflight import clip_weights_problem

    problem = clip_weights_problem(ref)
    if problem:
        raise UsageError(f"--cmmd-model: {problem}")


def status_command(args: argparse.Namespace) -> int:
    from jobs.status import format_status, format_sweep_status, is_sweep_folder, job_status, sweep_status
    from workers import storage

    output = storage.normalized(args.output)
    if is_sweep_folder(output):
        runs = sweep_status(output)
        print(json.dumps(runs.as_dict()) if args.log_format == "json" else format_sweep_status(runs))
        return 0
    status = job_status(output)
    print(json.dumps(status.as_dict()) if args.log_format == "json" else format_status(status))
    return 0


def compare_command(args: argparse.Namespace) -> int:
    from jobs.report.compare import write_comparison
    from workers import storage

    check_cmmd_model(args.cmmd_model)
    out = write_comparison(
        args.runs,
        args.output,
        by=args.by,
        reference=args.reference,
        fid_weights=args.fid_weights,
        cmmd_model=args.cmmd_model,
        partial=args.partial,
    )
    if len(args.runs) > 2:
        print(
            f"genbatch: leaderboard of {len(args.runs)} runs: {storage.join(out, 'compare.html')} "
            "(also compare.md, compare.json, plots)"
        )
    else:
        print(f"genbatch: comparison: {storage.join(out, 'compare.html')} (also compare.md, compare.json)")
    return 0


def rescore_command(args: argparse.Namespace) -> int:
    from jobs.rescore import rescore_run

    summary = rescore_run(args.run, args.overrides, address=args.address, forward_actor_logs=args.log_format == "text")
    if args.log_format == "json":
        print(json.dumps({"event": "summary", **summary.as_dict()}))
        return 0
    if summary.rescored == 0:
        print(f"genbatch: nothing to do: all {summary.shards} shards already carry these scores")
    else:
        changed = ", ".join([*summary.columns, *(f"{name} dropped" for name in summary.dropped)]) or "none"
        print(
            f"genbatch: rescored {summary.rescored} of {summary.shards} shards ({summary.rows} rows, "
            f"{summary.images_scored} images scored; columns: {changed}) in {summary.seconds:.1f}s"
        )
    if summary.retries or summary.replaced_workers:
        print(f"genbatch: recovered: {summary.retries} shard retries, {summary.replaced_workers} workers replaced")
    print(f"genbatch: output: {summary.output}")
    return 0


def export_command(args: argparse.Namespace) -> int:
    from jobs.export.run import export_run

    summary = export_run(
        args.run,
        args.output,
        args.format,
        where=args.where,
        dedup=args.dedup,
        shard_size=args.shard_size,
        overwrite=args.overwrite,
        partial=args.partial,
    )
    left_out = f"{summary.rows_filtered} filtered, {summary.duplicates} duplicates"
    if summary.rows_without_image:
        left_out += f", {summary.rows_without_image} without an image"
    resumed = f", {summary.shards_skipped} already complete" if summary.shards_skipped else ""
    if summary.shards_left_out:
        resumed += f"; partial: {len(summary.shards_left_out)} of the run's shards not read"
    print(
        f"genbatch: exported {summary.rows_out} of {summary.rows_in} rows ({left_out}) "
        f"in {summary.shards} {args.format} shards{resumed}: {summary.bytes / 2**20:.1f} MiB in "
        f"{summary.seconds:.1f}s ({summary.images_per_s:.0f} images/s)"
    )
    print(f"genbatch: output: {summary.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
