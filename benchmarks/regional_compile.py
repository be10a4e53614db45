"""Compile seconds of `performance.compile: true` (the whole denoiser) against `regional` (diffusers'
compile_repeated_blocks: each repeated transformer block class compiled once, reused down the stack).

Each mode runs in a fresh Python process on an empty local torch cache (its own TORCHINDUCTOR_CACHE_DIR) and no
compile_cache file, holding one GenerationWorker (the real actor class) that makes one shard of `--rows` rows,
one micro-batch of `--batch` rows at a time. Printed per mode: the first micro-batch's seconds (compiling
included), the steady seconds per micro-batch after it, their difference (the compile seconds), and how far
its images are from the uncompiled ones (max difference in 8-bit levels; float rounding allows 1).

    python benchmarks/regional_compile.py [--model tiny-flux] [--size 32] [--steps 2] [--rows 3] [--batch 1]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = {"uncompiled": False, "full": True, "regional": "regional"}


def child(mode: str, model: str, manifest: str, output: str, size: int, steps: int, batch: int, gpus: int) -> None:
    """One actor, one shard, compiled as `mode` says; prints its timings and images as one JSON line."""
    import pyarrow.parquet as pq

    from jobs.config.schema import JobConfig
    from jobs.runfolder.settings import worker_settings
    from workers.tasks import BatchProgress, ShardTask
    from workers.worker import GenerationWorker

    rows = pq.read_metadata(manifest).num_rows
    config = JobConfig.model_validate(
        {
            "manifest": manifest,
            "output": output,
            "model": {"id": model},
            "generation": {"steps": steps, "width": size, "height": size},
            "clip": {"model": None},
            "resources": {"gpus_per_worker": gpus, "batch_size": batch},
            "performance": {"compile": MODES[mode], "compile_cache": str(Path(output) / "kernels")},
        }
    )
    worker = GenerationWorker(worker_settings(config, output, "benchmark", num_threads=os.cpu_count()), 0)
    info = worker.ready()
    events = list(worker.run_shard(ShardTask(0, manifest, 0, rows, 0, has_id_column=False)))
    done = [event.finished_at for event in events if isinstance(event, BatchProgress)]
    result = events[-1]
    steady = (done[-1] - done[0]) / (len(done) - 1) if len(done) > 1 else float("nan")
    images = [image["bytes"].hex() for image in pq.read_table(result.file).column("image").to_pylist()]
    print(
        json.dumps(
            {
                "device": info.device_name,
                "compile": info.compile_reason,
                "first_batch": result.startup.first_batch_seconds,
                "steady_batch": steady,
                "images": images,
            }
        )
    )


def run_mode(mode: str, args: argparse.Namespace, manifest: str, work: Path) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(work / f"inductor-{mode}")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH")]))
    command = [sys.executable, __file__, "--child", mode, "--model", args.model, "--manifest", manifest]
    command += ["--output", str(work / mode), "--size", str(args.size), "--steps", str(args.steps)]
    command += ["--batch", str(args.batch), "--gpus", str(args.gpus)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def max_level_difference(a: list[str], b: list[str]) -> int:
    import numpy as np
    from PIL import Image

    def pixels(data: str):
        return np.asarray(Image.open(io.BytesIO(bytes.fromhex(data))).convert("RGB")).astype(int)

    return max(int(np.abs(pixels(x) - pixels(y)).max()) for x, y in zip(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-flux")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rows", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--gpus", type=int, default=0, help="1: run the workers on a GPU")
    parser.add_argument("--child", choices=list(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.model, args.manifest, args.output, args.size, args.steps, args.batch, args.gpus)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        manifest = str(work / "prompts.parquet")
        prompts = [f"a photo of object number {i}" for i in range(args.rows)]
        pq.write_table(pa.table({"prompt": prompts, "seed": list(range(args.rows))}), manifest)
        results = {mode: run_mode(mode, args, manifest, work) for mode in MODES}
    base = results["uncompiled"]
    print(f"{args.model}, {args.size} px, {args.steps} steps, batch {args.batch}, {args.rows} rows, {base['device']}")
    print("| mode | first micro-batch s | steady s per micro-batch | compile s | max diff vs uncompiled (levels) |")
    print("| --- | --- | --- | --- | --- |")
    for mode, result in results.items():
        compile_s = result["first_batch"] - result["steady_batch"] if mode != "uncompiled" else 0.0
        diff = max_level_difference(result["images"], base["images"])
        print(f"| {mode} | {result['first_batch']:.2f} | {result['steady_batch']:.3f} | {compile_s:.1f} | {diff} |")
    full, regional = results["full"], results["regional"]
    ratio = (full["first_batch"] - full["steady_batch"]) / (regional["first_batch"] - regional["steady_batch"])
    print(f"regional compiles in 1/{ratio:.1f} of the full compile's time")


if __name__ == "__main__":
    main()
