"""A node is lost mid-job on a real multi-node local cluster; the job must still write every row once.

Run as its own process (it starts its own Ray cluster): python -m tests.scenarios.node_loss WORKDIR
Prints one JSON line with what happened; exits non-zero if any check fails.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from tests.scenarios import job_outcome

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ROWS = 24


def main(workdir: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    from ray.cluster_utils import Cluster

    from jobs.config import JobConfig
    from jobs.dispatch import JobHooks
    from jobs.driver import run_job

    manifest = workdir / "prompts.parquet"
    pq.write_table(
        pa.table({"id": [f"n{i}" for i in range(ROWS)], "prompt": [f"p {i}" for i in range(ROWS)]}), manifest
    )
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    gpu_nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR")

    ready, removed = [], []

    def remove_a_busy_node(rows: int, failed: int) -> None:
        if removed or not ready:
            return
        victim = next(node for node in gpu_nodes if node.node_id == ready[0].node_id)
        removed.append(victim.node_id)
        cluster.remove_node(victim, allow_graceful=False)
        # A lost machine takes its processes with it; here they share one machine, so end them too.
        os.kill(ready[0].pid, signal.SIGKILL)

    config = JobConfig.model_validate(
        {
            "manifest": str(manifest),
            "output": str(workdir / "out"),
            "shard_size": 2,
            "generation": {"steps": 2, "width": 32, "height": 32},
            "resources": {"workers": 2, "gpus_per_worker": 1, "cpus_per_worker": 1, "batch_size": 2},
        }
    )
    hooks = JobHooks(on_progress=remove_a_busy_node, on_worker_ready=ready.append)
    summary = run_job(config, progress="off", hooks=hooks)
    result = {
        "removed_nodes": len(removed),
        "workers_ready": len(ready),
        **job_outcome(summary, workdir / "out", "n", ROWS),
    }
    print(json.dumps(result))
    ray.shutdown()
    cluster.shutdown()
    ok = result["removed_nodes"] == 1 and result["ok"] == ROWS and result["ids_exactly_once"] and result["retries"] >= 1
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
