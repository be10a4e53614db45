"""genbatch against a plain single-process diffusers loop and Ray Data doing the same work, side by side.

All three generate, CLIP-score, PNG-encode (zlib level 1, genbatch's default) and write Parquet for the
same rows, at the same batch size, with the same number of CPU threads and one worker:

- plain loop: what a user would write by hand, in this process;
- genbatch: one actor, through `jobs.run.driver.run_job`;
- ray data: `read_parquet` -> `map_batches` with an actor pool of one -> `write_parquet`.

Start-up (Ray, actor, model loading and the first micro-batch: from the start of a run to the end of
its first micro-batch) is timed apart from the steady state, which is measured from the end of the first
micro-batch to the end of the last, as clocked where the work runs (in the actor for the two Ray
runners). Runs alternate (plain loop, genbatch, ray data, then again), so drift on a shared machine
hits all alike.

A last section takes Ray out: the genbatch actor's class, in this process, runs micro-batches
alternately with the plain loop's code (generate, CLIP-score, encode; same rows), so the two see the
same machine within a second of each other. It measures what genbatch's own code costs per micro-batch,
free of the drift between whole runs. And the plain loop's own code runs in a Ray actor and in this
process, alternately: what running inside a Ray worker costs any runner, genbatch or Ray Data.

    python benchmarks/throughput.py [--rows 128] [--batch-size 8] [--steps 4] [--size 64] [--repeats 5]
                                   [--interleaved-batches 40]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from workers.models.loading import quiet_libraries  # in the driver and in each actor

PNG_COMPRESS_LEVEL = 1  # genbatch's default (`output.png_compress_level`)


def make_manifest(path: Path, rows: int) -> Path:
    """`rows` prompts with ids and seeds 0..rows-1 (also used by gpu_throughput.py)."""
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


def load_tiny_models(threads: int):
    """The built-in tiny pipeline and CLIP, loaded as a user would, on `threads` CPU threads."""
    import torch
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPModel, CLIPProcessor

    from workers.models import tiny

    torch.set_num_threads(threads)
    pipe = StableDiffusionPipeline.from_pretrained(tiny.tiny_pipeline_dir(), use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    clip = CLIPModel.from_pretrained(tiny.tiny_clip_dir()).eval()
    processor = CLIPProcessor.from_pretrained(tiny.tiny_clip_dir())
    return pipe, clip, processor


def generate_batch(models, rows: list[dict], steps: int, size: int) -> tuple[list[bytes], list[float]]:
    """Generate, CLIP-score and PNG-encode one batch of manifest rows: (png bytes, clip_score) per row."""
    import torch

    pipe, clip, processor = models
    prompts = [row["prompt"] for row in rows]
    images = pipe(
        prompts,
        num_inference_steps=steps,
        width=size,
        height=size,
        generator=[torch.Generator("cpu").manual_seed(row["seed"]) for row in rows],
    ).images
    inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        output = clip(**inputs)
    cosines = torch.nn.functional.cosine_similarity(output.image_embeds, output.text_embeds).tolist()
    pngs = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        pngs.append(buffer.getvalue())
    return pngs, [100 * max(cosine, 0.0) for cosine in cosines]


def plain_loop(manifest: Path, out: Path, args) -> tuple[float, float]:
    """What a user would write by hand: load, loop over batches, write one Parquet file per shard."""
    started = time.perf_counter()
    models = load_tiny_models(args.threads)
    table = pq.read_table(manifest).to_pylist()
    out.mkdir(parents=True)
    batch_done, records = [], []
    for start in range(0, len(table), args.batch_size):
        batch = table[start : start + args.batch_size]
        pngs, scores = generate_batch(models, batch, args.steps, args.size)
        batch_done.append(time.perf_counter())
        for row, png, score in zip(batch, pngs, scores):
            records.append({**row, "image": png, "clip_score": score})
        if len(records) >= args.shard_size or start + args.batch_size >= len(table):
            pq.write_table(pa.Table.from_pylist(records), out / f"shard-{start:05d}.parquet")
            records = []
    # Steady state for every runner: from the end of the first micro-batch to the end of the last one.
    steady = (len(table) - args.batch_size) / (batch_done[-1] - batch_done[0])
    first_batch_done = batch_done[0]
    return first_batch_done - started, steady


def job_config(manifest: Path, out: Path, args):
    """The benchmark's job: the same work as the plain loop, one worker with `threads` CPUs."""
    from jobs.config.schema import JobConfig

    return JobConfig.model_validate(
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


def genbatch_job(manifest: Path, out: Path, args) -> tuple[float, float]:
    from jobs.pool.dispatch import JobHooks
    from jobs.run.driver import run_job

    config = job_config(manifest, out, args)
    started = time.time()  # wall clock, comparable with the actor's `finished_at` on this machine
    marks: list[float] = []
    hooks = JobHooks(on_batch=lambda batch: marks.append(batch.finished_at))
    run_job(config, progress="off", hooks=hooks)
    marks.sort()
    steady = (args.rows - args.batch_size) / (marks[-1] - marks[0])
    return marks[0] - started, steady


def interleaved_batches(manifest: Path, out: Path, args) -> tuple[list[float], list[float]]:
    """Seconds per micro-batch of the plain loop's code and of genbatch's worker, run alternately in
    this process on the same rows (no Ray)."""
    from jobs.runfolder.settings import worker_settings
    from workers.io.rows import read_slice, resolve_rows, row_ids
    from workers.tasks import ShardTask
    from workers.worker import GenerationWorker

    config = job_config(manifest, out, args)
    out.mkdir(parents=True)
    worker = GenerationWorker(worker_settings(config, str(out), "benchmark", num_threads=args.threads), index=0)
    models = load_tiny_models(args.threads)
    task = ShardTask(index=0, file=str(manifest), start=0, stop=args.batch_size, first_row=0, has_id_column=True)
    table = read_slice(task.file, task.start, task.stop)
    specs = resolve_rows(table, row_ids(table, task), worker.settings.defaults, worker.settings.job_seed)
    rows = table.to_pylist()
    plain, genbatch = [], []
    for _ in range(args.interleaved_batches + 1):  # the first pair warms up and is dropped
        started = time.perf_counter()
        generate_batch(models, rows, args.steps, args.size)
        plain.append(time.perf_counter() - started)
        started = time.perf_counter()
        result = worker.batch_runner.run(dict(enumerate(specs)))
        for _, future in result.encoding:
            future.result()
        genbatch.append(time.perf_counter() - started)
    return plain[1:], genbatch[1:]


class PlainLoopActor:
    """The plain loop's models and per-batch code, in a Ray actor (see `in_actor_batches`)."""

    def __init__(self, threads: int):
        quiet_libraries()
        self.models = load_tiny_models(threads)

    def run(self, rows: list[dict], batches: int, steps: int, size: int) -> list[float]:
        times = []
        for _ in range(batches):
            started = time.perf_counter()
            generate_batch(self.models, rows, steps, size)
            times.append(time.perf_counter() - started)
        return times


def in_actor_batches(manifest: Path, args) -> tuple[list[float], list[float]]:
    """Seconds per micro-batch of the same plain-loop code in this process and in a Ray actor, taking
    turns (a few batches each, so one waits while the other runs)."""
    import ray

    rows = pq.read_table(manifest).slice(0, args.batch_size).to_pylist()
    actor = ray.remote(num_cpus=args.threads)(PlainLoopActor).remote(args.threads)
    models = load_tiny_models(args.threads)
    here, there = [], []
    ray.get(actor.run.remote(rows, 1, args.steps, args.size))  # warm up
    generate_batch(models, rows, args.steps, args.size)
    turn = 5
    for _ in range(max(1, args.interleaved_batches // turn)):
        for _ in range(turn):
            started = time.perf_counter()
            generate_batch(models, rows, args.steps, args.size)
            here.append(time.perf_counter() - started)
        there += ray.get(actor.run.remote(rows, turn, args.steps, args.size))
    return here, there


class RayDataGenerator:
    """The `map_batches` callable class: one per actor, the plain loop's models and per-batch work.

    Each output batch carries `t_done`, the wall-clock time at which the batch was finished, so the
    steady state can be measured inside the actor, as for the other runners.
    """

    def __init__(self, steps: int, size: int, threads: int):
        quiet_libraries()
        self.models = load_tiny_models(threads)
        self.steps = steps
        self.size = size

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        pngs, scores = generate_batch(self.models, rows, self.steps, self.size)
        return pa.table(
            {
                "id": [row["id"] for row in rows],
                "image": pa.array(pngs, pa.binary()),
                "clip_score": pa.array(scores, pa.float64()),
                "t_done": pa.array([time.time()] * len(rows), pa.float64()),
            }
        )


def ray_data_job(manifest: Path, out: Path, args) -> tuple[float, float]:
    """read_parquet -> map_batches (an actor pool of one) -> write_parquet; timings from `t_done`."""
    import ray.data

    started = time.time()  # wall clock, comparable with `t_done` from the actor on this machine
    (
        ray.data.read_parquet(str(manifest))
        .map_batches(
            RayDataGenerator,
            fn_constructor_kwargs={"steps": args.steps, "size": args.size, "threads": args.threads},
            batch_size=args.batch_size,
            compute=ray.data.ActorPoolStrategy(size=1),
            num_cpus=args.threads,
            batch_format="pyarrow",
        )
        .write_parquet(str(out), min_rows_per_file=args.shard_size)
    )
    done = pq.read_table(out, columns=["t_done"])["t_done"].to_pylist()
    if len(done) != args.rows:
        raise RuntimeError(f"ray data wrote {len(done)} rows, expected {args.rows}")
    batches = sorted(Counter(done).items())  # (t_done, rows) per batch, in order of completion
    first, last = batches[0][0], batches[-1][0]
    steady = (len(done) - batches[0][1]) / (last - first)
    return first - started, steady


def configure_ray_data() -> None:
    """Quiet and deterministic: no progress bars, no stats logs, output in input order.

    Ray Data's console log is cut to errors; its full log still goes to the session's `logs/ray-data/` folder.
    """
    import ray.data

    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    context.verbose_stats_logs = False
    context.execution_options.preserve_order = True
    context.execution_options.verbose_progress = False


@contextlib.contextmanager
def fresh_ray(threads: int, enabled: bool):
    """A new local Ray instance per run, shut down after it: actors a runner leaves behind (Ray Data
    keeps a stats actor and others alive) must not take CPU from the next runner on two cores."""
    if not enabled:
        yield
        return
    import ray

    # One logical CPU more than the worker takes: Ray Data's own list/read/write tasks need one, or
    # `read_parquet` waits forever behind the actor. "local": never a cluster left running on the machine.
    ray.init(
        address="local",
        num_cpus=threads + 1,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="ERROR",
    )
    configure_ray_data()
    try:
        yield
    finally:
        ray.shutdown()


RUNNERS = {"plain loop": plain_loop, "genbatch": genbatch_job, "ray data": ray_data_job}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--interleaved-batches", type=int, default=40, help="0 skips the in-process section")
    args = parser.parse_args()

    import torch

    quiet_libraries()
    torch.set_num_threads(args.threads)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in RUNNERS}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_manifest(Path(tmp) / "prompts.parquet", args.rows)
        for repeat in range(args.repeats):  # alternate, so drift on a shared machine hits all alike
            for name, runner in RUNNERS.items():
                out = Path(tmp) / f"{name.replace(' ', '-')}-{repeat}"
                with fresh_ray(args.threads, enabled=name != "plain loop"):
                    results[name].append(runner(manifest, out, args))
        if args.interleaved_batches:
            plain, genbatch = interleaved_batches(manifest, Path(tmp) / "interleaved", args)
            with fresh_ray(args.threads, enabled=True):
                here, in_actor = in_actor_batches(manifest, args)

    print(
        f"\n{args.rows} rows, {args.size}x{args.size} px, {args.steps} steps, batch {args.batch_size}, "
        f"{args.threads} threads, one worker, tiny model, CPU; median of {args.repeats} alternating runs\n"
    )
    print(f"{'runner':<12} {'start-up s':>11} {'steady images/s':>16} {'min':>7} {'max':>7}")
    medians = {}
    for name, runs in results.items():
        startup = statistics.median(r[0] for r in runs)
        rates = [r[1] for r in runs]
        medians[name] = statistics.median(rates)
        print(f"{name:<12} {startup:>11.2f} {medians[name]:>16.2f} {min(rates):>7.2f} {max(rates):>7.2f}")
    print()
    # Two ratios: of the medians, and the median of each round's own ratio (the runs of one round are
    # at most a minute apart, so it cancels most of the slow drift of a shared machine).
    print(f"{'steady state':<22} {'of medians':>10} {'per round: median (min-max)':>29}  target")
    for other, target in (("plain loop", 0.95), ("ray data", 1.0)):
        ratio = medians["genbatch"] / medians[other]
        paired = [g[1] / o[1] for g, o in zip(results["genbatch"], results[other])]
        spread = f"{statistics.median(paired):.3f}x ({min(paired):.3f}-{max(paired):.3f})"
        print(f"{'genbatch / ' + other:<22} {ratio:>9.3f}x {spread:>29}  >= {target:.2f}x")
    if args.interleaved_batches:
        plain_ms, genbatch_ms = 1000 * statistics.median(plain), 1000 * statistics.median(genbatch)
        paired = statistics.median(p / g for p, g in zip(plain, genbatch))
        print(
            f"\nin this process, no Ray, {args.interleaved_batches} micro-batches each, alternating: "
            f"plain loop {plain_ms:.1f} ms, genbatch worker {genbatch_ms:.1f} ms per micro-batch; "
            f"genbatch / plain loop (speed) {plain_ms / genbatch_ms:.3f}x, per pair median {paired:.3f}x"
        )
        here_ms, actor_ms = 1000 * statistics.median(here), 1000 * statistics.median(in_actor)
        print(
            f"the plain loop's code, taking turns in this process and in a Ray actor: {here_ms:.1f} ms here, "
            f"{actor_ms:.1f} ms in the actor per micro-batch; in actor / here (speed) {here_ms / actor_ms:.3f}x"
        )


if __name__ == "__main__":
    main()
