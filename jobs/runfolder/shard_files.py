"""Which shard files in an output folder belong to its job, and are they complete; is a folder a sweep's.

One rule for every reader (run and resume, status, report, export, rescore): a shard file is a complete shard
of a job when its footer (workers.io.writer) verifies: the file is whole (it has the footer, with as many rows as
the file), the footer names the shard its file name gives, carries the job's key and, where the reader knows
the job's plan, the planned number of rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from jobs.errors import OutputError, some_of
from jobs.runfolder.jobfile import JobRecord
from workers.io import layout, storage
from workers.io.writer import ShardFooter, read_footer

logger = logging.getLogger(__name__)

OTHER_JOB = "another job's, e.g. a rescore not finished"  # the one problem that rerunning the job does not fix


@dataclass(frozen=True)
class ShardFile:
    """A file in `data/` with a shard file's name, and its footer."""

    path: str
    index: int | None  # the planned shard its name gives; None: no shard of the job has this name
    footer: ShardFooter | None  # None: cut short, not genbatch's, missing, or (index None) not read

    @property
    def name(self) -> str:
        return storage.name(self.path)

    def verified(self, key: str, rows: int | None = None) -> ShardFooter | None:
        """The footer, if this is a complete shard file of the job with `key` (of `rows` rows, where the plan
        says); else None."""
        return self.footer if self.problem(key, rows) is None else None

    def problem(self, key: str, rows: int | None = None) -> str | None:
        """Why the file is not a complete shard of the job with `key`; None when it is."""
        footer = self.footer
        if self.index is None:
            return "not planned"
        if footer is None:
            return "cut short or unreadable"
        if footer.job_key != key:
            return OTHER_JOB
        if footer.shard != self.index:
            return f"holds shard {footer.shard}"
        if rows is not None and footer.rows != rows:
            return f"{footer.rows} rows, the shard has {rows}"
        return None


def shard_file(output: str, index: int) -> ShardFile:
    """Shard `index`'s file with its footer (None where there is no whole file)."""
    path = layout.shard_path(output, index)
    return ShardFile(path, index, read_footer(path))


def list_shard_files(output: str, shards: int) -> list[ShardFile]:
    """Every file in `data/` with a shard file's name, in name order (one listing): the files of the job's
    `shards` planned shards with their footers, and the others (index None, footer not read)."""
    planned = {layout.shard_file_name(index): index for index in range(shards)}
    found = []
    for path in storage.list_files(layout.data_dir(output)):
        name = storage.name(path)
        if not layout.is_shard_file(name):
            continue
        index = planned.get(name)
        found.append(ShardFile(path, index, None if index is None else read_footer(path)))
    return found


def sweep_run_folders(location: str) -> list[str] | None:
    """The run folders of a sweep folder (its subfolders holding a job.json), sorted; None when `location` is not
    a sweep folder.

    A sweep folder has no job.json of its own and either a sweep.json or at least two subfolders that hold a
    job.json (so a folder holding one run and its report is not mistaken for a sweep)."""
    if storage.exists(layout.job_file(location)):
        return None
    filesystem, base = storage.resolve(location)
    selector = pafs.FileSelector(base, recursive=False, allow_not_found=True)
    folders = sorted(
        storage.join(location, Path(info.path).name)
        for info in filesystem.get_file_info(selector)
        if info.type == pafs.FileType.Directory
    )
    runs = [folder for folder in folders if storage.exists(layout.job_file(folder))]
    if len(runs) >= 2 or storage.exists(layout.sweep_file(location)):
        return runs
    return None


def is_sweep_folder(location: str) -> bool:
    return sweep_run_folders(location) is not None


def shard_files_exist(output_dir: str) -> bool:
    """Whether `data/` holds any shard file (an output folder without one belongs to no job yet)."""
    files = storage.list_files(layout.data_dir(output_dir))
    return any(layout.is_shard_file(storage.name(path)) for path in files)


@dataclass(frozen=True)
class ShardFiles:
    """A run's shard files that belong to its job, and the planned shards present but left out."""

    files: list[str]
    left_out: list[str]  # `shard-00001.parquet (why)`: rows a reader of `files` does not see


def job_shard_files(path: str, job: JobRecord, partial: bool = False) -> ShardFiles:
    """The shard files in `data/` that belong to the job: a shard it planned, written by it (footer).

    A planned shard's file that is not whole or not this job's (cut short, or rewritten by a rescore that has
    not finished) holds rows the job has: refused, naming it, unless `partial` (then left out with a
    warning). Anything else there (a stray copy, another name) is left out with a warning, never counted.
    A planned shard without a file was not written (a run still going, or its shard failed: job.json says)."""
    data = layout.data_dir(path)
    files, left_out, others = [], [], []
    cut = False  # a file cut short or misplaced: `genbatch run` redoes its shard once the file is removed
    for file in list_shard_files(path, job.shards):
        problem = file.problem(job.key)
        if file.index is None:
            others.append(file.name)
        elif problem is not None:
            left_out.append(f"{file.name} ({problem})")
            cut = cut or problem != OTHER_JOB
        else:
            files.append(file.path)
    if left_out and not partial:
        fix = "remove the files cut short and rerun genbatch run to redo them" if cut else "finish the rescore"
        raise OutputError(
            f"{path}: {len(left_out)} of {job.shards} shards cannot be read as this job's: {some_of(left_out)}; "
            f"{fix}, or rerun with --partial to go on without their rows"
        )
    if others:
        shown = some_of(others)
        logger.warning("%s: %d shard files are not part of this job, left out: %s", data, len(others), shown)
    if left_out:
        logger.warning(
            "%s: --partial: %d shards left out, their rows are not read: %s", path, len(left_out), some_of(left_out)
        )
    if not files:
        raise OutputError(f"{path}: no shard files of this job in {data}")
    return ShardFiles(files, left_out)
