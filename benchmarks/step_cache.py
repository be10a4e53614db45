"""Skip rate and time per image of each `performance.cache` option, through genbatch's worker class.

One process; for each option (none first) a GenerationWorker (the real actor class) makes one shard of `--rows`
rows in micro-batches of `--batch`, after a warm-up shard. Printed per option: the denoiser passes skipped per
image and as a share of the steps (from the `cache_skipped_steps` column), seconds per image after warm-up, and
the speed against `none`.

Random weights do not behave like trained ones under a cache (how often a step can be skipped depends on the
trained model), so on the tiny built-ins these figures check the plumbing, nothing more. The published figures
(cache-dit DBCache 2.66x on DrawBench, vLLM-Omni TeaCache 1.91x on Qwen-Image, First-Block-Cache 1.55x on FLUX)
are on trained models; run this with `--model` pointing at one, on a GPU, to measure.

    python benchmarks/step_cache.py [--model tiny-flux] [--size 32] [--steps 8] [--rows 8] [--batch 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

# Each option at its diffusers defaults, except magcache's warm-up, which follows --steps.
OPTIONS: dict[str, dict] = {"none": {}, "first_block": {}, "taylorseer": {}, "magcache": {}}


def measure(option: str, args: argparse.Namespace, manifest: str, work: Path) -> tuple[float, float]:
    """(seconds per image after warm-up, denoiser passes skipped per image) of one option."""
    import pyarrow.parquet as pq

    from jobs.config.schema import JobConfig
    from jobs.runfolder.settings import worker_settings
    from workers.io import columns as C
    from workers.tasks import ShardTask
    from workers.worker import GenerationWorker

    output = str(work / option)
    config = JobConfig.model_validate(
        {
            "manifest": manifest,
            "output": output,
            "model": {"id": args.model},
            "generation": {"steps": args.steps, "width": args.size, "height": args.size},
            "clip": {"model": None},
            "resources": {"gpus_per_worker": args.gpus, "batch_size": args.batch},
            "performance": {"cache": option, "compile": False, **OPTIONS[option]},
        }
    )
    worker = GenerationWorker(worker_settings(config, output, "benchmark", num_threads=os.cpu_count()), 0)
    worker.ready()
    task = ShardTask(0, manifest, 0, args.rows, 0, has_id_column=False)
    list(worker.run_shard(task))  # warm-up: first-call costs (allocations, lazy imports) stay out of the figure
    started = time.perf_counter()
    result = list(worker.run_shard(task))[-1]
    seconds = (time.perf_counter() - started) / args.rows
    table = pq.read_table(result.file)
    skipped = table.column(C.CACHE_SKIPPED_STEPS).to_pylist() if C.CACHE_SKIPPED_STEPS in table.column_names else []
    return seconds, (sum(skipped) / len(skipped) if skipped else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-flux")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--gpus", type=int, default=0, help="1: run the worker on a GPU")
    args = parser.parse_args()
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        manifest = str(work / "prompts.parquet")
        prompts = [f"a photo of object number {i}" for i in range(args.rows)]
        pq.write_table(pa.table({"prompt": prompts, "seed": list(range(args.rows))}), manifest)
        results = {option: measure(option, args, manifest, work) for option in OPTIONS}
    print(f"{args.model}, {args.size} px, {args.steps} steps, batch {args.batch}, {args.rows} rows per run")
    print("| cache | skipped passes per image | skip rate | s per image | speed vs none |")
    print("| --- | --- | --- | --- | --- |")
    base = results["none"][0]
    for option, (seconds, skipped) in results.items():
        rate = skipped / args.steps
        print(f"| {option} | {skipped:.2f} | {rate:.2f} | {seconds:.4f} | {base / seconds:.2f}x |")


if __name__ == "__main__":
    main()
