"""An elastic pool (`resources.workers: auto`) on a real local cluster whose nodes come and go mid-job.

The job starts on one one-CPU node; once its first shard is on disk a second node joins, and the pool
must grow onto it; once the new node's actor has written a shard, the first node is lost, and the job
must still write every row once. Run by tests.faults.scenarios.shared_cluster, in a process of its own.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

from tests.faults.scenarios import job_outcome, write_prompts

ROWS = 64
SHARD_SIZE = 2


class PoolLog(logging.Handler):
    """The dispatcher's lines about the pool."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run(cluster, workdir: Path) -> dict:
    """What happened, for the test to check."""
    from jobs.config.schema import JobConfig
    from jobs.pool.dispatch import JobHooks
    from jobs.run.driver import run_job
    from tests.helpers.stub_worker import WritingStubWorker
    from workers.io.shard_stats import read_all_stats

    pool_log = PoolLog()
    logging.getLogger("jobs.pool.dispatch").addHandler(pool_log)
    manifest = write_prompts(workdir / "prompts.parquet", "e", ROWS)
    first = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()

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
            # (an actor's process takes seconds to start here), so that shards are left for it.
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
    summary = run_job(config, progress="off", hooks=hooks, worker_class=WritingStubWorker)
    logging.getLogger("jobs.pool.dispatch").removeHandler(pool_log)
    joined = nodes.get("joined")
    if joined is not None:  # the cluster as it was
        cluster.remove_node(joined)
    stats = read_all_stats(str(workdir / "out"))
    return {
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
