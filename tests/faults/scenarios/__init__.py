"""Scenarios on Ray clusters of their own nodes: all run on one cluster, in one process (see shared_cluster).

Each scenario's `run(cluster, workdir)` returns a report of what happened; its test checks the report.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def write_prompts(path: Path, id_prefix: str, rows: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = [f"{id_prefix}{i}" for i in range(rows)]
    pq.write_table(pa.table({"id": ids, "prompt": [f"p {i}" for i in range(rows)]}), path)
    return path


def job_outcome(summary, output: Path, id_prefix: str, rows: int) -> dict:
    """What every scenario reports of its job: counts, retries, and whether each id was written once."""
    import pyarrow.parquet as pq

    ids = pq.read_table(output / "data").column("id").to_pylist()
    return {
        "ok": summary.ok,
        "failed": summary.failed,
        "retries": summary.retries,
        "replaced": summary.replaced_workers,
        "ids_exactly_once": sorted(ids) == sorted(f"{id_prefix}{i}" for i in range(rows)) and len(ids) == rows,
    }


@functools.cache
def shared_cluster_run() -> tuple[subprocess.CompletedProcess, dict]:
    """Run every scenario once per test session, in a process of its own; its reports by scenario name."""
    workdir = tempfile.mkdtemp(prefix="genbatch-scenarios-")
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    result = subprocess.run(
        [sys.executable, "-m", "tests.faults.scenarios.shared_cluster", workdir],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, (result.stdout[-2000:], result.stderr[-3000:])
    return result, json.loads(lines[-1])


def run_scenario(name: str) -> tuple[subprocess.CompletedProcess, dict]:
    """The shared cluster's process, and the report of scenario `name`."""
    result, reports = shared_cluster_run()
    return result, reports[name]
