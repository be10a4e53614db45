"""An elastic pool (`resources.workers: auto`) on a real local cluster: a node joins mid-job and the pool
grows onto it; then a node is lost and the job still writes every row once."""

import pytest

from tests.faults.scenarios import run_scenario

pytestmark = pytest.mark.slow  # a multi-node cluster in its own process, shared with test_node_loss


def test_an_auto_pool_grows_onto_a_node_that_joins_and_survives_losing_one():
    result, report = run_scenario("elastic_pool")
    assert result.returncode == 0, result.stderr[-3000:]
    assert report["joined"] and report["removed"] and report["workers_ready"] == 2
    assert report["pool_log"][0] == "pool: 1 -> 2 workers (a node joined)"
    assert "pool: 2 -> 1 workers (a node left)" in report["pool_log"]
    assert report["replaced"] == 0  # a replacement started before Ray saw the node go is stopped, or went with it
    # Both nodes' actors wrote shards (each shard's stats name the node that wrote it), and no other did.
    assert report["shards_on_first_node"] >= 1 and report["shards_on_joined_node"] >= 1
    assert report["shards_with_stats"] == 32 and report["shards_elsewhere"] == 0
    assert report["ok"] == 64 and report["failed"] == 0 and report["ids_exactly_once"]
