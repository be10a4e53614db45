"""A node lost mid-job on a real multi-node local cluster (head + two nodes declaring one GPU each)."""

import pytest

from tests.scenarios import run_scenario

pytestmark = pytest.mark.slow  # a three-node cluster in its own process


def test_losing_a_node_mid_job_loses_and_duplicates_nothing(tmp_path, model_cache):
    result, report = run_scenario("node_loss", tmp_path, "removed_nodes")
    assert result.returncode == 0, (report, result.stderr[-3000:])
    assert report["removed_nodes"] == 1 and report["workers_ready"] >= 2
    assert report["ok"] == 24 and report["failed"] == 0 and report["ids_exactly_once"]
    assert report["retries"] >= 1 and report["replaced"] == 1
