"""An actor for tests of the driver's fault handling (signals, kill -9, JSON logs) that loads no model.

An actor that imports torch and diffusers takes some 10 s to start on 2 cores, and a CLI in a process of its
own gets actors of its own. `WritingStubWorker` starts in a second but writes each shard as GenerationWorker
does (the output table, the shard file with its footer, the stats, both behind the run's fence), with a small
PNG per row made from the row's seed, and takes its time per image so that a signal can land mid-job.

`python -m tests.helpers.stub_worker ARGS` is the genbatch CLI with these actors for its jobs' (rescores keep theirs).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timezone

from benchmarks.stub_worker import StubWorker
from workers.io.fence import check_fence
from workers.io.rows import read_slice, resolve_rows, row_ids
from workers.io.shard_stats import ShardStats, write_shard_stats
from workers.io.writer import ShardFooter, write_shard
from workers.pipeline.output import RowOutput, RunLabels, build_output_table
from workers.tasks import BatchProgress, ShardResult, ShardTask, WorkerSettings

# About as long as the tiny model takes per image at a few steps on one core; loading takes a moment too,
# so that the driver has a load time to report.
SECONDS_PER_IMAGE = 0.1
LOAD_SECONDS = 0.2


def placeholder_png(seed: int) -> bytes:
    """An 8x8 PNG of one colour picked by the seed: the same row always gets the same bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), tuple(seed.to_bytes(8, "little")[:3])).save(buffer, format="PNG")
    return buffer.getvalue()


class WritingStubWorker(StubWorker):
    """A ShardWorker whose shards are real files of placeholder images, one per row of a plain run (no sweep
    runs, retries of failed rows or several images per prompt)."""

    def __init__(self, settings: WorkerSettings, index: int):
        started = time.perf_counter()
        super().__init__(settings, index)
        import ray

        time.sleep(LOAD_SECONDS)
        self.info = replace(
            self.info,
            name=f"worker-{index}@{socket.gethostname()}",
            device="cpu",
            load_seconds=time.perf_counter() - started,
            node_id=ray.get_runtime_context().get_node_id(),
        )

    def run_shard(self, task: ShardTask) -> Iterator[BatchProgress | ShardResult]:
        started = time.perf_counter()
        if task.retry_failed or task.images_per_row > 1:
            raise NotImplementedError("the stub worker makes one image per row of a plain run")
        # A run's shards carry its binding (where and for which job they are written), as a sweep's do.
        settings = self.settings if task.run is None else task.run.applied_to(self.settings)
        table = read_slice(task.file, task.start, task.stop)
        ids = row_ids(table, task)
        rows = resolve_rows(table, ids, settings.defaults, settings.job_seed)
        for first in range(0, len(rows), settings.batch_size):
            batch = rows[first : first + settings.batch_size]
            time.sleep(SECONDS_PER_IMAGE * len(batch))
            yield BatchProgress(shard=task.index, images=len(batch), failed=0, finished_at=time.time())
        images = [placeholder_png(row.seed) for row in rows]
        outputs = [RowOutput(image, hashlib.sha256(image).hexdigest(), 0.25) for image in images]
        labels = RunLabels(settings.model, settings.clip_model, "stub", self.info.name)
        output_table = build_output_table(table, ids, rows, outputs, labels)
        footer = ShardFooter(settings.job_key, task.index, len(rows), len(rows), 0)
        fence = functools.partial(check_fence, settings.output_dir, settings.run_token)
        path = write_shard(output_table, settings.output_dir, footer, before_publish=fence)
        seconds = time.perf_counter() - started
        stats = ShardStats(
            shard=task.index,
            rows=len(rows),
            ok=len(rows),
            failed=0,
            generated=len(rows),
            seconds=round(seconds, 6),
            images_per_s=round(len(rows) / seconds, 3),
            worker=self.info.name,
            node=self.info.node_id,
            node_ip="127.0.0.1",
            pid=os.getpid(),
            finished_at=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            job_key=settings.job_key,
        )
        write_shard_stats(settings.output_dir, stats, before_publish=fence)
        yield ShardResult(
            shard=task.index,
            images=len(rows),
            ok=len(rows),
            failed=0,
            file=path,
            worker=self.info.name,
            seconds=seconds,
            generated=len(rows),
            output_dir=settings.output_dir,
        )


def use_stub_workers(driver) -> None:
    """Jobs that `driver` (jobs.run.driver) runs from now on have WritingStubWorkers for actors."""
    driver.run_job = functools.partial(driver.run_job, worker_class=WritingStubWorker)


if __name__ == "__main__":
    from jobs.cli.main import main
    from jobs.run import driver
    from tests.helpers.stub_worker import (
        use_stub_workers as use,  # by that name, so that Ray ships the class by reference
    )

    use(driver)
    sys.exit(main())
