"""genbatch against a plain single-process diffusers loop doing the same work, side by side.

Both generate, CLIP-score, PNG-encode and write Parquet for the same rows, at the same batch size,
with the same number of CPU threads. Start-up (Ray, actor, model loading) is timed apart from the
steady state, which is measured from the end of the first micro-batch to the end of the last.

    python benchmarks/throughput.py [--rows 128] [--batch-size 8] [--steps 4] [--size 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def make_manifest(folder: Path, rows: int) -> Path:
    path = folder / "prompts.parquet"
    pq.write_table(
        pa.table(
            {
                "id": list(range(rows)),
                "prompt": [f"a photo of object number {i}" for i in range(rows)],
                "seed": list(range(rows)),
            }
        ),
        path,
    )
    return path


def plain_loop(manifest: Path, out: Path, args) -> tuple[float, float]:
    """What a user would write by hand: load, loop over batches, write one Parquet file per shard."""
    import torch
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel, CLIPProcessor

    from workers import tiny

    started = time.perf_counter()
    pipe = StableDiffusionPipeline.from_pretrained(tiny.tiny_pipeline_dir(), use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    clip = CLIPModel.from_pretrained(tiny.tiny_clip_dir()).eval()
    processor = CLIPProcessor.from_pretrained(tiny.tiny_clip_dir())
    startup = time.perf_counter() - started
    table = pq.read_table(manifest).to_pylist()
    out.mkdir(parents=True)
    first_batch_done, records = None, []
    for start in range(0, len(table), args.batch_size):
        batch = table[start : start + args.batch_size]
        prompts = [row["prompt"] for row in batch]
        images = pipe(
            prompts,
            num_inference_steps=args.steps,
            width=args.size,
            height=args.size,
            generator=[torch.Generator("cpu").manual_seed(row["seed"]) for row in batch],
        ).images
        inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True, truncation=True)
        with torch.no_grad():
            output = clip(**inputs)
        cosines = torch.nn.functional.cosine_similarity(output.image_embeds, output.text_embeds).tolist()
        for row, image, cosine in zip(batch, images, cosines):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            records.append({**row, "image": buffer.getvalue(), "clip_score": 100 * max(cosine, 0.0)})
        if len(records) >= args.shard_size or start + args.batch_size >= len(table):
            pq.write_table(pa.Table.from_pylist(records), out / f"shard-{start:05d}.parquet")
            records = []
        if first_batch_done is None:
            first_batch_done = time.perf_counter()
    steady = (len(table) - args.batch_size) / (time.perf_counter() - first_batch_done)
    return startup, steady


def genbatch_job(manifest: Path, out: Path, args) -> tuple[float, float]:
    from jobs.config import JobConfig
    from jobs.dispatch import JobHooks
    from jobs.driver import run_job

    config = JobConfig.model_validate(
        {
            "manifest": str(manifest),
            "output": str(out),
            "shard_size": args.shard_size,
            "model": {"id": "tiny"},
            "clip": {"model": "tiny"},
            "generation": {"steps": args.steps, "width": args.size, "height": args.size},
            "resources": {
                "workers": 1,
                "gpus_per_worker": 0,
                "cpus_per_worker": args.threads,
                "batch_size": args.batch_size,
            },
        }
    )
    started = time.perf_counter()
    marks: list[float] = []
    hooks = JobHooks(on_progress=lambda rows, failed: marks.append(time.perf_counter()))
    run_job(config, show_progress=False, hooks=hooks)
    steady = (args.rows - args.batch_size) / (marks[-1] - marks[0])
    return marks[0] - started, steady


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import diffusers
    import ray
    import torch
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    ray.init(num_cpus=args.threads, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="ERROR")
    results: dict[str, list[tuple[float, float]]] = {"plain loop": [], "genbatch": []}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_manifest(Path(tmp), args.rows)
        for repeat in range(args.repeats):  # alternate, so drift on a shared machine hits both alike
            results["plain loop"].append(plain_loop(manifest, Path(tmp) / f"plain-{repeat}", args))
            results["genbatch"].append(genbatch_job(manifest, Path(tmp) / f"genbatch-{repeat}", args))
    ray.shutdown()

    print(
        f"\n{args.rows} rows, {args.size}x{args.size} px, {args.steps} steps, batch {args.batch_size}, "
        f"{args.threads} threads, tiny model, CPU; median of {args.repeats} alternating runs\n"
    )
    print(f"{'runner':<12} {'start-up s':>11} {'steady images/s':>16}")
    medians = {}
    for name, runs in results.items():
        startup = statistics.median(r[0] for r in runs)
        medians[name] = statistics.median(r[1] for r in runs)
        print(f"{name:<12} {startup:>11.2f} {medians[name]:>16.2f}")
    print(f"\ngenbatch / plain loop (steady state): {medians['genbatch'] / medians['plain loop']:.3f}x")


if __name__ == "__main__":
    main()
