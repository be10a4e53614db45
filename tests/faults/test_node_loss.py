"""A node lost mid-job on a real multi-node local cluster (two nodes declaring one GPU each; see
tests.faults.scenarios)."""

import pytest

from tests.faults.scenarios import run_scenario

pytestmark = pytest.mark.slow  # a multi-node cluster in its own process, shared with test_elastic_pool


def test_losing_a_node_mid_job_loses_and_duplicates_nothing():
    result, report = run_scenario("node_loss")
    assert result.returncode == 0, result.stderr[-3000:]
    assert report["removed_nodes"] == 1 and report["workers_ready"] >= 2
    assert report["ok"] == 24 and report["failed"] == 0 and report["ids_exactly_once"]
    assert report["retries"] >= 1 and report["replaced"] == 1
