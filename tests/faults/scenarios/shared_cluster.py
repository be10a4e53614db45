"""Every scenario, one after another, on one multi-node local cluster (a cluster's start costs seconds).

Run as its own process (the cluster is this process's Ray): python -m tests.faults.scenarios.shared_cluster WORKDIR
Prints one JSON line: each scenario's report by name. Each scenario adds the nodes it needs and removes
what is left of them when done. Actors load no model (tests.helpers.stub_worker): what is tested is the driver's
handling.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tests.faults.scenarios import elastic_pool, node_loss

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
SCENARIOS = {"node_loss": node_loss.run, "elastic_pool": elastic_pool.run}


def main(workdir: Path) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from jobs.pool import dispatch

    # Jobs read the cluster's capacity twice a second, not every ten seconds, to keep the scenarios short.
    dispatch.CAPACITY_CHECK_SECONDS = 0.5
    # The head holds no worker (no CPUs): a pool's room is what the worker nodes have. Ray notices a
    # lost node within a second (by default some 15 s), as a cluster's capacity check then does.
    health_checks = {"health_check_period_ms": 200, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": health_checks})
    ray.init(address=cluster.address, logging_level="ERROR")
    reports = {}
    for name, run in SCENARIOS.items():
        (workdir / name).mkdir()
        reports[name] = run(cluster, workdir / name)
    print(json.dumps(reports))
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
