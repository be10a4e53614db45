"""Scenarios that start Ray clusters of their own, each run in its own process by a test.

A scenario prints one JSON report line on stdout and exits 0 when its own checks hold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


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


def run_scenario(module: str, workdir: Path, first_key: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run `tests.scenarios.MODULE` in its own process; its report is the last line starting with `{"FIRST_KEY"`."""
    result = subprocess.run(
        [sys.executable, "-m", f"tests.scenarios.{module}", str(workdir)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith(f'{{"{first_key}"')]
    assert lines, (result.stdout[-2000:], result.stderr[-3000:])
    return result, json.loads(lines[-1])
