"""A benchmark actor that skips the model, with the methods of workers.worker.GenerationWorker.
(tests/helpers/stub_worker.py builds on it an actor that writes its shards, for tests of the driver's fault handling.)

It still reads each shard's rows from the manifest file with `read_slice`, as the real worker does,
so a benchmark measures the driver and the actors' manifest I/O, not diffusion. It writes nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from workers.io.rows import read_slice, row_ids
from workers.tasks import BatchProgress, RunBinding, ShardResult, ShardTask, WorkerInfo, WorkerSettings


class StubWorker:
    """A GenerationWorker that loads nothing; `run_shard` reads the shard's rows and reports them all as generated."""

    def __init__(self, settings: WorkerSettings, index: int):
        self.settings = settings
        self.name = f"stub-{index}"
        self.info = WorkerInfo(
            name=self.name,
            device="none",
            dtype="none",
            scheduler="none",
            load_seconds=0.0,
            pid=os.getpid(),
            node_id="",
        )

    def ready(self) -> WorkerInfo:
        return self.info

    def rebind(self, run: RunBinding, batch_size: int) -> WorkerInfo:
        self.settings = run.applied_to(self.settings, batch_size=batch_size)
        return self.info

    def run_shard(self, task: ShardTask) -> Iterator[BatchProgress | ShardResult]:
        started = time.perf_counter()
        # 1. Read the shard's rows, as GenerationWorker does; the row count proves the range was read.
        table = read_slice(task.file, task.start, task.stop)
        rows = len(row_ids(table, task))
        if rows != task.rows:
            raise RuntimeError(f"shard {task.index}: read {rows} rows of {task.file}, expected {task.rows}")
        # 2. One "micro-batch" for the whole shard, then the result; no images, no file.
        yield BatchProgress(shard=task.index, images=rows, failed=0)
        yield ShardResult(
            shard=task.index,
            images=rows,
            ok=rows,
            failed=0,
            file="",
            worker=self.name,
            seconds=time.perf_counter() - started,
            generated=rows,
        )
