"""One function per `genbatch` command: it calls the job machinery, prints the outcome, returns the exit code.

Each command imports the job machinery it needs, so `genbatch --help` starts without any of it.
"""

from __future__ import annotations

import argparse
import json
import sys

from jobs.cli.printers import print_export_summary, print_not_started, print_rescore_summary, print_summary
from jobs.errors import UsageError, WorkerStartError


def run_command(args: argparse.Namespace) -> int:
    from jobs.config.schema import load_config
    from jobs.run.driver import run_job
    from jobs.run.records import JobSummary

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
        if isinstance(error.summary, JobSummary):  # no worker loaded: the rows are counted as not run, then the error
            print_not_started(error.summary, args.log_format == "json", error.exit_code)
        raise
    print_summary(summary, args.log_format == "json")
    return summary.exit_code


def sweep_command(args: argparse.Namespace, config, progress: str) -> int:
    from jobs.run.sweep import run_sweep

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
    print_summary(sweep, args.log_format == "json")
    return sweep.exit_code


def manifest_command(args: argparse.Namespace) -> int:
    from jobs.inputs.prompt_import import import_prompts
    from jobs.inputs.templates import write_template_manifest

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
        _print_wrote(summary, "combinations")
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
    _print_wrote(summary, "prompts")
    return 0


def _print_wrote(summary, what: str) -> None:
    """A manifest's summary line; `what` its prompts are (imported prompts, or a template's combinations)."""
    print(
        f"genbatch: wrote {summary.rows} rows ({summary.prompts} {what}) to {summary.output}; "
        f"columns: {', '.join(summary.columns)}"
    )


def report_command(args: argparse.Namespace) -> int:
    from jobs.report.leaderboard import sweep_runs, write_leaderboard
    from jobs.report.summary import write_report
    from workers.io import storage

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
    from jobs.config.preflight import clip_weights_problem

    problem = clip_weights_problem(ref)
    if problem:
        raise UsageError(f"--cmmd-model: {problem}")


def status_command(args: argparse.Namespace) -> int:
    from jobs.runfolder.shard_files import is_sweep_folder
    from jobs.runfolder.status import format_status, format_sweep_status, job_status, sweep_status
    from workers.io import storage

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
    from workers.io import storage

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
    from jobs.run.rescore import rescore_run

    summary = rescore_run(args.run, args.overrides, address=args.address, forward_actor_logs=args.log_format == "text")
    print_rescore_summary(summary, args.log_format == "json")
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
    print_export_summary(summary, args.format)
    return 0


COMMANDS = {
    "run": run_command,
    "manifest": manifest_command,
    "report": report_command,
    "compare": compare_command,
    "status": status_command,
    "rescore": rescore_command,
    "export": export_command,
}
