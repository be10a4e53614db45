"""An elastic pool (`resources.workers: auto`) on a real local cluster whose nodes come and go mid-job.

The job starts on one one-CPU node; once its first shard is on disk a second node joins, and the pool
must grow onto it; once the new node's actor has written a shard, the first node is lost, and the job
must still write every row once. Run as its own process (it starts its own Ray cluster):
python -m tests.scenarios.elastic_pool WORKDIR. Prints one JSON line with what happened; exits
non-zero if any check fails.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from tests.scenarios import job_outcome

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ROWS = 64
SHARD_SIZE = 2


class PoolLog(logging.Handler):
    """The dispatcher's lines about the pool."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def main(workdir: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    from ray.cluster_utils import Cluster

    from jobs import dispatch
    from jobs.config import JobConfig
    from jobs.dispatch import JobHooks
    from jobs.driver import run_job
    from workers.shard_stats import read_all_stats

    # The job reads the cluster's capacity twice a second, not every ten seconds, to keep the scenario short.
    dispatch.CAPACITY_CHECK_SECONDS = 0.5
    pool_log = PoolLog()
    logging.getLogger("jobs.dispatch").addHandler(pool_log)
    manifest = workdir / "prompts.parquet"
    pq.write_table(
        pa.table({"id": [f"e{i}" for i in range(ROWS)], "prompt": [f"p {i}" for i in range(ROWS)]}), manifest
    )
    # The head holds no worker (no CPUs): the pool's room is what the worker nodes have. Ray notices a
    # lost node within a second (by default some 15 s), as a cluster's capacity check then does.
    health_checks = {"health_check_period_ms": 200, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": health_checks})
    first = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR")

    ready, done = [], []
    nodes: dict[str, object] = {"first": first}
    started = time.monotonic()

    def follow_the_job(result) -> None:
        done.append(result)
        if "joined" not in nodes:  # the first shard is on disk: a node joins
            nodes["joined"] = cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            return
        on_joined = {info.name for info in ready if info.node_id == nodes["joined"].node_id}
        if not on_joined:
            # Slow the first node's actor down (about a shard a second) until the new node's actor is ready
            # (an actor's process takes some 10 s to start here), so that shards are left for it.
            time.sleep(1.0)
            return
        if not any(shard.worker in on_joined for shard in done):
            return
        if "removed" not in nodes:  # then the first node is lost, its actor mid-shard
            nodes["removed"] = first
            victim = next(info for info in ready if info.node_id == first.node_id)
            cluster.remove_node(first, allow_graceful=False)
            # A lost machine takes its processes with it; here they share one machine, so end them too.
            os.kill(victim.pid, signal.SIGKILL)

    config = JobConfig.model_validate(
        {
            "manifest": str(manifest),
            "output": str(workdir / "out"),
            "shard_size": SHARD_SIZE,
            "generation": {"steps": 2, "width": 32, "height": 32},
            "resources": {"workers": "auto", "gpus_per_worker": 0, "cpus_per_worker": 1, "batch_size": 2},
        }
    )
    hooks = JobHooks(on_worker_ready=ready.append, on_shard_done=follow_the_job)
    summary = run_job(config, progress="off", hooks=hooks)
    stats = read_all_stats(str(workdir / "out"))
    joined = nodes.get("joined")
    result = {
        "seconds": round(time.monotonic() - started, 1),
        "joined": joined is not None,
        "removed": "removed" in nodes,
        "workers_ready": len(ready),
        "shards_on_first_node": sum(1 for s in stats if s.node == first.node_id),
        "shards_on_joined_node": sum(1 for s in stats if joined is not None and s.node == joined.node_id),
        "shards_with_stats": len(stats),
        "shards_elsewhere": sum(1 for s in stats if s.node not in {first.node_id, getattr(joined, "node_id", "")}),
        "pool_log": [line for line in pool_log.lines if line.startswith(("pool:", "worker-"))],
        **job_outcome(summary, workdir / "out", "e", ROWS),
    }
    print(json.dumps(result))
    ray.shutdown()
    cluster.shutdown()
    ok = (
        result["removed"]
        and result["shards_on_joined_node"] >= 1
        and "pool: 1 -> 2 workers (a node joined)" in result["pool_log"]
        # The lost node's actor is not replaced (or its replacement, started before Ray saw the node go, is stopped).
        and "pool: 2 -> 1 workers (a node left)" in result["pool_log"]
        and result["replaced"] == 0
        and result["ok"] == ROWS
        and result["ids_exactly_once"]
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
