"""How long a rerun of a finished job takes to decide there is nothing to do.

Runs a real job on the tiny model, then reruns it and times the rerun (manifest validation and
fingerprint, identity check, footer verification of every shard; no Ray, no models).

    python benchmarks/resume.py [--rows 1000] [--shard-size 50] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--shard-size", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from jobs.config.schema import JobConfig
    from jobs.run.driver import run_job

    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "prompts.parquet"
        pq.write_table(pa.table({"prompt": [f"prompt {i}" for i in range(args.rows)]}), manifest)
        config = JobConfig.model_validate(
            {
                "manifest": str(manifest),
                "output": str(Path(tmp) / "out"),
                "shard_size": args.shard_size,
                "generation": {"steps": 1, "width": 32, "height": 32},
                "resources": {"workers": 1, "gpus_per_worker": 0, "batch_size": 32},
            }
        )
        started = time.perf_counter()
        first = run_job(config, progress="off")
        job_seconds = time.perf_counter() - started
        timings = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            rerun = run_job(config, progress="off")
            timings.append(time.perf_counter() - started)
            assert rerun.shards_run == 0 and rerun.ok == first.ok
    print(f"\n{args.rows} rows in {first.shards} shards; the job itself took {job_seconds:.1f}s")
    print(
        f"rerun of the finished job: median {statistics.median(timings) * 1000:.0f} ms "
        f"(min {min(timings) * 1000:.0f}, max {max(timings) * 1000:.0f}) over {args.repeats} reruns"
    )


if __name__ == "__main__":
    main()
