"""The output folder's layout: every name and pattern genbatch writes there, and nowhere else.

    OUTPUT/
      job.json                   the job record (jobs.runfolder.jobfile)
      sweep.json                 instead of the above, in a sweep's folder: its runs, each a folder like this one
      .genbatch.lock             held by the run in progress, local folders only (jobs.runfolder.lock, workers.io.fence)
      data/shard-00000.parquet   one file per shard (workers.io.writer)
      stats/shard-00000.json     how each shard went (workers.io.shard_stats)

Every file is published whole (workers.io.storage): it is first written next to its final name under a
temporary one, `.NAME.<uuid>.tmp` (`storage.temp_name`), which a reader or a rerun never takes for output.
"""

from __future__ import annotations

import fnmatch

from workers.io import storage

JOB_FILE = "job.json"
SWEEP_FILE = "sweep.json"  # a sweep's folder: its runs, each an output folder below it (jobs.run.sweep)
LOCK_FILE = ".genbatch.lock"
DATA_DIR = "data"
STATS_DIR = "stats"
FOLDERS = (DATA_DIR, STATS_DIR)  # the folders genbatch writes into
# A folder holding one of these is a genbatch output folder (a manifest folder's search skips it).
OUTPUT_MARKERS = (JOB_FILE, LOCK_FILE)

SHARD_PATTERN = "shard-*.parquet"  # in DATA_DIR
STATS_PATTERN = "shard-*.json"  # in STATS_DIR


def shard_file_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def stats_file_name(index: int) -> str:
    return f"shard-{index:05d}.json"


def is_shard_file(name: str) -> bool:
    """Whether a file name in `data/` is a shard's (any shard's: this job's or another's)."""
    return fnmatch.fnmatch(name, SHARD_PATTERN)


def is_stats_file(name: str) -> bool:
    """Whether a file name in `stats/` is a shard's stats."""
    return fnmatch.fnmatch(name, STATS_PATTERN)


def job_file(output_dir: str) -> str:
    return storage.join(output_dir, JOB_FILE)


def sweep_file(output_dir: str) -> str:
    return storage.join(output_dir, SWEEP_FILE)


def lock_file(output_dir: str) -> str:
    return storage.join(output_dir, LOCK_FILE)


def data_dir(output_dir: str) -> str:
    return storage.join(output_dir, DATA_DIR)


def stats_dir(output_dir: str) -> str:
    return storage.join(output_dir, STATS_DIR)


def shard_path(output_dir: str, index: int) -> str:
    return storage.join(output_dir, DATA_DIR, shard_file_name(index))


def stats_path(output_dir: str, index: int) -> str:
    return storage.join(output_dir, STATS_DIR, stats_file_name(index))
