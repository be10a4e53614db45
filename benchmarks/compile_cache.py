"""How much sooner an actor makes its first images when another one compiled before it (performance.compile_cache).

Each round starts two fresh Python processes one after the other, each holding one GenerationWorker
(the real actor class, `performance.compile: true`) that makes one shard, each on an empty local torch
cache (its own TORCHINDUCTOR_CACHE_DIR), as on a node that never compiled anything. The first finds an
empty compile_cache and compiles from scratch (cold); the second loads what the first saved (warm).
On the CPU, Inductor's C++ kernels are not part of torch's portable artifacts, so the warm actor still
builds them; a third actor on the cold one's local torch cache (same node: the C++ kernels are there)
shows what is left once kernels need no building, as on CUDA, where torch bundles the Triton kernels
into the artifacts. Printed per round: each actor's first micro-batch seconds (compiling included),
first-image seconds (from the actor's start), whether it hit the cache, whether all made the same
image bytes, and warm / cold.

    python benchmarks/compile_cache.py [--rounds 1] [--size 32] [--batch 2] [--steps 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def child(manifest: str, output: str, cache: str, size: int, batch: int, steps: int, gpus: int) -> None:
    """One actor, one shard; prints what it measured as one JSON line."""
    import pyarrow.parquet as pq

    from jobs.config.schema import JobConfig
    from jobs.runfolder.settings import worker_settings
    from workers.tasks import ShardTask
    from workers.worker import GenerationWorker

    rows = pq.read_metadata(manifest).num_rows
    config = JobConfig.model_validate(
        {
            "manifest": manifest,
            "output": output,
            "generation": {"steps": steps, "width": size, "height": size},
            "resources": {"gpus_per_worker": gpus, "batch_size": batch},
            "performance": {"compile": True, "compile_cache": cache},
        }
    )
    worker = GenerationWorker(worker_settings(config, output, "benchmark", num_threads=os.cpu_count()), 0)
    info = worker.ready()
    result = list(worker.run_shard(ShardTask(0, manifest, 0, rows, 0, has_id_column=False)))[-1]
    images = [image["bytes"] for image in pq.read_table(result.file).column("image").to_pylist()]
    print(
        json.dumps(
            {
                "device": info.device_name,
                "hit": info.compile_cache_hit,
                "load": info.load_seconds,
                "first_batch": result.startup.first_batch_seconds,
                "first_image": result.startup.first_image_seconds,
                "images": hashlib.sha256(b"".join(images)).hexdigest(),
            }
        )
    )


def fresh_actor(
    tmp: Path, name: str, manifest: Path, cache: Path, args: argparse.Namespace, node: str | None = None
) -> dict:
    """A new actor process; `node` names the local torch cache it finds (default: an empty one of its own)."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp / f"inductor-{node or name}"), "PYTHONPATH": os.getcwd()}
    command = [sys.executable, __file__, "--child", str(manifest), str(tmp / name), str(cache)]
    command += ["--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps)]
    command += ["--device", args.device]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name} actor failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--child", nargs=3, metavar=("MANIFEST", "OUTPUT", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.size, args.batch, args.steps, gpus=1 if args.device == "cuda" else 0)
        return

    import pyarrow as pa
    import pyarrow.parquet as pq

    ratios = []
    for round_ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="genbatch-compile-bench-") as folder:
            tmp = Path(folder)
            manifest = tmp / "prompts.parquet"
            pq.write_table(pa.table({"prompt": [f"prompt {i}" for i in range(args.batch)]}), manifest)
            cache = tmp / "compile-cache"
            cold = fresh_actor(tmp, "cold", manifest, cache, args)
            warm = fresh_actor(tmp, "warm", manifest, cache, args)
            same_node = fresh_actor(tmp, "same-node", manifest, cache, args, node="cold")
        ratio = warm["first_image"] / cold["first_image"]
        ratios.append(ratio)
        print(f"round {round_ + 1} on {cold['device']}:")
        for name, actor in (("cold", cold), ("warm", warm), ("warm, same node", same_node)):
            share = actor["first_image"] / cold["first_image"]
            print(
                f"  {name:16} first micro-batch {actor['first_batch']:6.1f} s, "
                f"first image {actor['first_image']:6.1f} s ({share:.2f} of cold), cache hit: {actor['hit']}"
            )
        print(f"  same image bytes: {cold['images'] == warm['images'] == same_node['images']}", flush=True)
    if args.rounds > 1:
        print(f"warm / cold first image: median {statistics.median(ratios):.2f} over {args.rounds} rounds")


if __name__ == "__main__":
    main()
