"""A node lost mid-job on a real multi-node local cluster (head + two nodes declaring one GPU each)."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # a three-node cluster in its own process


def test_losing_a_node_mid_job_loses_and_duplicates_nothing(tmp_path, model_cache):
    # The scenario starts its own Ray cluster, so it runs in its own process.
    result = subprocess.run(
        [sys.executable, "-m", "tests.scenarios.node_loss", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith('{"removed_nodes"')]
    assert lines, (result.stdout[-2000:], result.stderr[-3000:])
    report = json.loads(lines[-1])
    assert result.returncode == 0, (report, result.stderr[-3000:])
    assert report["removed_nodes"] == 1 and report["workers_ready"] >= 2
    assert report["ok"] == 24 and report["failed"] == 0 and report["ids_exactly_once"]
    assert report["retries"] >= 1 and report["replaced"] == 1
