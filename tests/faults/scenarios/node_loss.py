"""A node is lost mid-job on a real multi-node local cluster; the job must still write every row once.

Two nodes declaring one GPU each join the cluster; one is lost as soon as the first micro-batch is done.
Run by tests.faults.scenarios.shared_cluster, in a process of its own.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.faults.scenarios import job_outcome, write_prompts

ROWS = 24


def run(cluster, workdir: Path) -> dict:
    """What happened, for the test to check."""
    from jobs.config.schema import JobConfig
    from jobs.pool.dispatch import JobHooks
    from jobs.run.driver import run_job
    from tests.helpers.stub_worker import WritingStubWorker

    manifest = write_prompts(workdir / "prompts.parquet", "n", ROWS)
    gpu_nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()

    ready, removed = [], []

    def remove_a_busy_node(rows: int, failed: int) -> None:
        if removed or not ready:
            return
        victim = next(node for node in gpu_nodes if node.node_id == ready[0].node_id)
        removed.append(victim)
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
    summary = run_job(config, progress="off", hooks=hooks, worker_class=WritingStubWorker)
    for node in gpu_nodes:  # the cluster as it was, for the next scenario
        if node not in removed:
            cluster.remove_node(node)
    return {
        "removed_nodes": len(removed),
        "workers_ready": len(ready),
        **job_outcome(summary, workdir / "out", "n", ROWS),
    }
