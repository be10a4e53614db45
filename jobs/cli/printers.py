"""What the commands print when they are done: summaries on stdout, errors on stderr."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command line starts without the job machinery
    from jobs.export.run import ExportSummary
    from jobs.run.records import JobSummary
    from jobs.run.rescore import RescoreSummary
    from jobs.run.sweep import SweepSummary


def print_error(message: str, json_logs: bool, exit_code: int) -> None:
    if json_logs:
        print(json.dumps({"event": "error", "message": message, "exit_code": exit_code}), file=sys.stderr)
    else:
        print(f"genbatch: {message}", file=sys.stderr)


def print_summary(summary: JobSummary | SweepSummary, json_logs: bool) -> None:
    """The end of `genbatch run`, of one run or of a sweep: a stop's error line, then one JSON object
    (--log-format json) or the summary's lines, which end with the output folder."""
    from jobs.run.sweep import SweepSummary

    if summary.interrupted:
        print_error(f"interrupted by {summary.signal}", json_logs, exit_code=summary.exit_code)
    if json_logs:
        print(json.dumps({"event": "summary", **summary.as_dict()}))
        return
    lines = _sweep_lines(summary) if isinstance(summary, SweepSummary) else _run_lines(summary)
    for line in [*lines, f"output: {summary.output}"]:
        print(f"genbatch: {line}")


def _run_lines(summary: JobSummary) -> list[str]:
    counts = f"{summary.ok} ok, {summary.failed} failed"
    if summary.shards_run == 0:
        retry = "; rerun with --retry-failed to retry the failed rows" if summary.failed else ""
        return [f"nothing to do: all {summary.shards} shards are complete ({counts} of {summary.images} rows){retry}"]
    state = "interrupted" if summary.interrupted else "done"
    resumed = summary.shards - summary.shards_run
    lines = [
        f"{state}: {counts}"
        + (f", {summary.not_run} not run" if summary.not_run else "")
        + f" of {summary.images} rows in {summary.shards} shards"
        + (f" ({summary.shards_failed} failed)" if summary.shards_failed else "")
        + (f", {resumed} already complete" if resumed else "")
    ]
    lines += _recovered(summary)
    lines.append(
        f"{summary.seconds:.1f}s total, {summary.startup_seconds:.1f}s start-up, "
        f"{summary.images_per_s:.2f} images/s after start-up"
    )
    return lines


def _sweep_lines(sweep: SweepSummary) -> list[str]:
    counts = f"{sweep.ok} ok, {sweep.failed} failed of {sweep.images} rows"
    if sweep.shards_run == 0:
        return [f"nothing to do: all {len(sweep.runs)} runs are complete ({counts})"]
    lines = []
    for folder, run in sweep.runs:
        if folder in sweep.not_started:  # a stop came before its group's turn
            state = "not started"
        else:
            state = "complete before" if run.shards_run == 0 else f"{run.images_per_s:.2f} images/s"
        not_run = f", {run.not_run} not run" if run.not_run else ""
        lines.append(f"  {folder}: {run.ok} ok, {run.failed} failed{not_run} of {run.images} rows ({state})")
    state = "interrupted" if sweep.interrupted else "done"
    not_run = f", {sweep.not_run} not run" if sweep.not_run else ""
    lines.append(f"{state}: {counts}{not_run} in {len(sweep.runs)} runs, {sweep.seconds:.1f}s total")
    return lines


def print_not_started(summary: JobSummary, json_logs: bool, exit_code: int) -> None:
    """The summary of a run whose workers all failed to load: nothing ran, nothing new is on disk."""
    if json_logs:
        print(json.dumps({"event": "summary", **summary.as_dict(), "status": "failed", "exit_code": exit_code}))
        return
    print(
        f"genbatch: failed: {summary.ok} ok, {summary.failed} failed, {summary.not_run} not run "
        f"of {summary.images} rows in {summary.shards} shards (no worker could load the models)"
    )
    print(f"genbatch: output: {summary.output}")


def print_rescore_summary(summary: RescoreSummary, json_logs: bool) -> None:
    if json_logs:
        print(json.dumps({"event": "summary", **summary.as_dict()}))
        return
    if summary.rescored == 0:
        print(f"genbatch: nothing to do: all {summary.shards} shards already carry these scores")
    else:
        changed = ", ".join([*summary.columns, *(f"{name} dropped" for name in summary.dropped)]) or "none"
        print(
            f"genbatch: rescored {summary.rescored} of {summary.shards} shards ({summary.rows} rows, "
            f"{summary.images_scored} images scored; columns: {changed}) in {summary.seconds:.1f}s"
        )
    for line in _recovered(summary):
        print(f"genbatch: {line}")
    print(f"genbatch: output: {summary.output}")


def print_export_summary(summary: ExportSummary, export_format: str) -> None:
    left_out = f"{summary.rows_filtered} filtered, {summary.duplicates} duplicates"
    if summary.rows_without_image:
        left_out += f", {summary.rows_without_image} without an image"
    resumed = f", {summary.shards_skipped} already complete" if summary.shards_skipped else ""
    if summary.shards_left_out:
        resumed += f"; partial: {len(summary.shards_left_out)} of the run's shards not read"
    print(
        f"genbatch: exported {summary.rows_out} of {summary.rows_in} rows ({left_out}) "
        f"in {summary.shards} {export_format} shards{resumed}: {summary.bytes / 2**20:.1f} MiB in "
        f"{summary.seconds:.1f}s ({summary.images_per_s:.0f} images/s)"
    )
    print(f"genbatch: output: {summary.dest}")


def _recovered(summary: JobSummary | RescoreSummary) -> list[str]:
    """The line on retried shards and replaced workers, when there were any."""
    if not (summary.retries or summary.replaced_workers):
        return []
    return [f"recovered: {summary.retries} shard retries, {summary.replaced_workers} workers replaced"]
