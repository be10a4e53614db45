"""Can one driver feed a 100-GPU cluster? Planning memory and the driver's dispatch rate, without a model.

Generates a manifest (id, prompt, category) split across Parquet files, then measures, each phase in a
fresh process so that its peak RSS (VmHWM) is its own:

1. planning: `read_manifest` (validates every row's id and prompt) + `plan_shards`, on the whole manifest;
2. dispatch: a full `run_job` on a local Ray instance with `StubWorker` actors, which read each shard's
   rows with `read_slice` like the real worker but skip the model and write no images. The rate is
   the steady state, from the first progress event to the last (actor start-up excluded), and the
   driver's CPU time per shard over the same window (what bounds it once it has a core to itself).

100 GPUs at 10 images/s each consume 1,000 rows/s; the table gives the dispatch rate as a multiple of that.

`read_slice` decodes whole row groups, so a stub shard from a 1Mi-row group (pyarrow's default) costs
~0.25 s of actor CPU: harmless next to a GPU's 25 s per 256-row shard, but on a small machine it would
measure the stub actors, not the driver. The manifest is therefore written with small row groups.

3. template: `genbatch manifest --template` writing a `--rows`-row Cartesian product (three lists);
4. status and report: `genbatch status` and `genbatch report` (its `build_report`, figures and thumbnails) of a
   finished run of that manifest, faked with stub images (one 8x8 PNG, unique ids, shas and scores) and written
   through the real shard writer, footers, stats files and job.json included.

    python benchmarks/driver_scale.py [--rows 10_000_000] [--files 10] [--shard-size 256] [--workers 8]
        [--id-kind int|string] [--row-group-rows 4096] [--dispatch-rows N] [--cpus N]
        [--phases plan,dispatch,template,status,report] [--run-shard-size 1024]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
GPU_ROWS_PER_S = 100 * 10  # 100 GPUs at 10 images/s each
_CATEGORIES = ["animals", "architecture", "food", "landscapes", "people", "vehicles", "abstract", "objects"]


def make_manifest(folder: Path, rows: int, files: int, id_kind: str, row_group_rows: int) -> Path:
    """`rows` rows split evenly across `files` files, one row group at a time so memory stays bounded."""
    folder.mkdir(parents=True)
    id_type = pa.int64() if id_kind == "int" else pa.string()
    schema = pa.schema([("id", id_type), ("prompt", pa.string()), ("category", pa.string())])
    per_file = math.ceil(rows / files)
    for number in range(files):
        first, last = number * per_file, min((number + 1) * per_file, rows)
        with pq.ParquetWriter(folder / f"part-{number:05d}.parquet", schema) as writer:
            for start in range(first, last, row_group_rows):
                stop = min(start + row_group_rows, last)
                span = range(start, stop)
                ids = list(span) if id_kind == "int" else [f"img-{i:010d}" for i in span]
                chunk = pa.table(
                    {
                        "id": pa.array(ids, id_type),
                        "prompt": [f"a photo of object number {i}, {_CATEGORIES[i % 8]} style, detailed" for i in span],
                        "category": [_CATEGORIES[i % 8] for i in span],
                    },
                    schema=schema,
                )
                writer.write_table(chunk)
    return folder


def prefix_manifest(manifest: Path, folder: Path, rows: int) -> Path:
    """A manifest made of the first whole files of `manifest` holding at least `rows` rows (symlinks)."""
    folder.mkdir(parents=True)
    taken = 0
    for path in sorted(manifest.glob("*.parquet")):
        if taken >= rows:
            break
        (folder / path.name).symlink_to(path)
        taken += pq.ParquetFile(path).metadata.num_rows
    return folder


def peak_rss_mb() -> float:
    """VmHWM: this process's peak resident memory (reset by exec, unlike ru_maxrss)."""
    return _status_kb("VmHWM") / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
    return _status_kb("VmRSS") / 1024


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def phase_plan(manifest: str, shard_size: int) -> dict:
    """Runs in a fresh process: validate and plan the whole manifest."""
    from jobs.inputs.manifest import read_manifest
    from jobs.inputs.planner import plan_shards

    baseline = rss_mb()
    started = time.perf_counter()
    parsed = read_manifest(manifest)
    validated = time.perf_counter()
    shards = plan_shards(parsed, shard_size)
    ended = time.perf_counter()
    return {
        "rows": parsed.rows,
        "shards": len(shards),
        "seconds": ended - started,
        "validate_seconds": validated - started,
        "plan_seconds": ended - validated,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": peak_rss_mb(),
    }


def phase_dispatch(manifest: str, output: str, shard_size: int, workers: int, cpus: int) -> dict:
    """Runs in a fresh process: a whole job with stub actors on a local Ray instance."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray

    from benchmarks.stub_worker import StubWorker
    from jobs.config.schema import JobConfig
    from jobs.pool.dispatch import JobHooks
    from jobs.run.driver import run_job

    ray.init(num_cpus=cpus, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="ERROR")
    config = JobConfig.model_validate(
        {
            "manifest": manifest,
            "output": output,
            "shard_size": shard_size,
            "clip": {"model": None},
            "generation": {"steps": 1, "width": 64, "height": 64},
            "resources": {
                "workers": workers,
                "gpus_per_worker": 0,
                # Stub actors barely use a core: let them all fit on a small machine.
                "cpus_per_worker": min(0.1, cpus / workers),
                "batch_size": shard_size,
            },
        }
    )
    events = {"count": 0, "rows": 0, "first_rows": 0, "first": None, "last": None, "first_cpu": 0.0, "last_cpu": 0.0}

    def on_progress(rows: int, failed: int) -> None:
        now, cpu = time.perf_counter(), cpu_seconds()
        if events["first"] is None:
            events.update(first=now, first_cpu=cpu, first_rows=rows, rss_first=rss_mb())
        events["count"] += 1
        events["rows"] += rows
        events.update(last=now, last_cpu=cpu)

    started = time.perf_counter()
    summary = run_job(config, progress="off", hooks=JobHooks(on_progress=on_progress), worker_class=StubWorker)
    ended = time.perf_counter()
    rss_end = rss_mb()
    ray.shutdown()
    if summary.ok != summary.images:
        raise RuntimeError(f"stub job did not finish every row: {summary}")
    steady = events["last"] - events["first"]
    steady_cpu = events["last_cpu"] - events["first_cpu"]
    return {
        "rows": summary.images,
        "shards": summary.shards,
        "seconds": ended - started,
        "to_first_progress_seconds": events["first"] - started,
        "steady_seconds": steady,
        # Each stub shard reports once: events after the first are shards finished in the steady window.
        "shards_per_s": (events["count"] - 1) / steady,
        "rows_per_s": (events["rows"] - events["first_rows"]) / steady,
        # The driver process's CPU (Python loop and Ray's in-process core worker) over the same window.
        "driver_cpu_share": steady_cpu / steady,
        "driver_cpu_ms_per_shard": 1000 * steady_cpu / (events["count"] - 1),
        "rss_at_first_progress_mb": events["rss_first"],
        "rss_at_end_mb": rss_end,
        "peak_rss_mb": peak_rss_mb(),
    }


# Templates, status and report at scale (issue 16 section 3): a template manifest of `--rows` rows, then a
# finished run of it faked with stub images, read back as `genbatch status` and `genbatch report` read it.

_STUB_RUN_SHARD_SIZE = 1024


def template_lists(folder: Path, rows: int) -> tuple[str, list[str]]:
    """A template and its --var flags whose product has exactly `rows` rows: 10 styles x 100 lightings x the rest."""
    if rows % 1000:
        raise SystemExit(f"--rows {rows}: the template benchmark needs a multiple of 1,000")
    folder.mkdir(parents=True)
    sizes = {"style": 10, "lighting": 100, "object": rows // 1000}
    flags = []
    for name, count in sizes.items():
        (folder / f"{name}.txt").write_text("".join(f"{name} number {i}\n" for i in range(count)))
        flags.append(f"{name}={folder / f'{name}.txt'}")
    return "a {style} photo of a {object}, {lighting}, highly detailed", flags


def phase_template(folder: str, rows: int, output: str) -> dict:
    """Runs in a fresh process: `genbatch manifest --template ... --yes` for a `rows`-row product."""
    from jobs.inputs.templates import write_template_manifest

    template, flags = template_lists(Path(folder), rows)
    baseline = rss_mb()
    started = time.perf_counter()
    summary = write_template_manifest(template, flags, output, yes=True)
    seconds = time.perf_counter() - started
    return {
        "rows": summary.rows,
        "seconds": seconds,
        "rows_per_s": summary.rows / seconds,
        "file_mb": os.path.getsize(output) / 2**20,
        "row_groups": pq.ParquetFile(output).metadata.num_row_groups,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": peak_rss_mb(),
    }


def stub_png() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 127, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def make_stub_run(manifest: str, output: str, shard_size: int) -> dict:
    """Runs in a fresh process: a finished run of `manifest` as genbatch writes it, without a model.

    Every row is `ok` but one in 1,000 (`error`); ids, prompts and the manifest's columns are the manifest's, each
    image is the same 8x8 PNG, shas are unique, CLIP scores are random. Shards go through `write_shard` (footers
    and `datasets` metadata), stats through `write_shard_stats`, and job.json through `write_job_file`.

    One difference: row groups of `shard_size` rows, not 64 (`ROW_GROUP_ROWS`), which would take half an hour
    to write 10M rows on a small machine; the report reads light columns in batches whatever the row groups,
    and only the 24 shown rows' groups of images (larger here, so its figure is if anything pessimistic)."""
    import numpy as np

    from jobs.runfolder.jobfile import JobRecord, identity_key, write_job_file
    from workers.io import columns as C
    from workers.io import writer
    from workers.io.shard_stats import ShardStats, write_shard_stats
    from workers.io.writer import ShardFooter, write_shard

    writer.ROW_GROUP_ROWS = shard_size

    started = time.perf_counter()
    parquet = pq.ParquetFile(manifest)
    rows = parquet.metadata.num_rows
    identity = {"made_by": "benchmarks/driver_scale.py", "manifest_rows": rows, "shard_size": shard_size}
    key, image = identity_key(identity), stub_png()
    rng = np.random.default_rng(0)
    shards, ok_total, first = 0, 0, 0
    for batch in parquet.iter_batches(batch_size=shard_size):
        n = batch.num_rows
        positions = np.arange(first, first + n)
        failed = positions % 1000 == 999
        status = np.where(failed, C.STATUS_OK if False else C.STATUS_ERROR, C.STATUS_OK)
        scores = np.where(failed, np.nan, rng.normal(26, 3, n)).astype(np.float32)
        images = pa.array([None if bad else {"bytes": image, "path": None} for bad in failed], C.IMAGE_TYPE)
        table = pa.Table.from_batches([batch]).drop_columns([C.ID])
        generated = {
            C.IMAGE: images,
            C.CLIP_SCORE: pa.array(scores, C.GENERATED[C.CLIP_SCORE], from_pandas=True),
            C.CLIP_COSINE: pa.array(scores / 100, C.GENERATED[C.CLIP_COSINE], from_pandas=True),
            C.PROMPT_TRUNCATED: pa.array(np.zeros(n, dtype=bool)),
            C.SEED: pa.array(positions, pa.int64()),
            C.IMAGE_INDEX: pa.array(np.zeros(n, dtype=np.int32)),
            C.STEPS: pa.array(np.full(n, 30, dtype=np.int32)),
            C.GUIDANCE_SCALE: pa.array(np.full(n, 7.5, dtype=np.float32)),
            C.WIDTH: pa.array(np.full(n, 512, dtype=np.int32)),
            C.HEIGHT: pa.array(np.full(n, 512, dtype=np.int32)),
            C.STRENGTH: pa.nulls(n, pa.float32()),
            C.SCHEDULER: pa.array(["ddim"] * n),
            C.MODEL: pa.array(["stub"] * n),
            C.CLIP_MODEL: pa.array(["stub-clip"] * n),
            C.WORKER: pa.array([f"worker-{shards % 100}@stub"] * n),
            C.DURATION_S: pa.array(np.full(n, 0.1, dtype=np.float32)),
            C.IMAGE_SHA256: pa.compute.utf8_lpad(pa.array(positions).cast(pa.string()), 64, "0"),
            C.STATUS: pa.array(status.tolist(), pa.string()),
            C.ERROR: pa.array(["RuntimeError: stub" if bad else None for bad in failed], pa.string()),
        }
        table = pa.table({C.ID: batch.column(C.ID), **{n_: table[n_] for n_ in table.column_names}, **generated})
        ok = n - int(failed.sum())
        write_shard(table, output, ShardFooter(key, shards, n, ok, n - ok))
        stats = ShardStats(shards, n, ok, n - ok, n, 25.6, n / 25.6, f"worker-{shards % 100}@stub", "node", "10.0.0.1",
                           1, "2026-12-01T00:00:00+00:00", key)  # fmt: skip
        write_shard_stats(output, stats)
        shards, ok_total, first = shards + 1, ok_total + ok, first + n
    write_job_file(
        output,
        JobRecord.model_validate(
            {
                "status": "finished",
                "identity": identity,
                "shards": shards,
                "manifest": {"rows": rows, "files": [manifest]},
                "config": {
                    "model": {"id": "stub", "scheduler": "ddim", "dtype": "bfloat16"},
                    "generation": {"steps": 30, "guidance_scale": 7.5, "width": 512, "height": 512},
                    "clip": {"model": "stub-clip"},
                    "seed": 0,
                },
                "counts": {"ok": ok_total, "failed": rows - ok_total},
                "started_at": "2026-11-30T00:00:00+00:00",
                "finished_at": "2026-12-01T00:00:00+00:00",
                "images_per_s": 1000.0,
                "seconds": rows / 1000.0,
            }
        ),
    )
    data_mb = sum(f.stat().st_size for f in (Path(output) / "data").iterdir()) / 2**20
    return {"rows": rows, "shards": shards, "seconds": time.perf_counter() - started, "data_mb": data_mb}


def phase_status(output: str) -> dict:
    """Runs in a fresh process: `genbatch status` of the stub run (job.json and every stats file)."""
    from jobs.runfolder.status import format_status, job_status

    baseline = rss_mb()
    started = time.perf_counter()
    status = job_status(output)
    text = format_status(status)
    seconds = time.perf_counter() - started
    if status.rows_done != status.rows:
        raise RuntimeError(f"status of the stub run: {text}")
    return {"rows": status.rows, "shards": status.shards_done, "seconds": seconds, "baseline_rss_mb": baseline,
            "peak_rss_mb": peak_rss_mb()}  # fmt: skip


def phase_report(output: str, by: str) -> dict:
    """Runs in a fresh process: `genbatch report --by BY` of the stub run (report.json, .md and .html)."""
    from jobs.report.summary import write_report

    baseline = rss_mb()
    started = time.perf_counter()
    folder = write_report(output, by=by)
    seconds = time.perf_counter() - started
    report = json.loads((Path(folder) / "report.json").read_text())
    return {"rows": report["rows"], "ok": report["ok"], "groups": len(report["groups"][by]), "seconds": seconds,
            "baseline_rss_mb": baseline, "peak_rss_mb": peak_rss_mb()}  # fmt: skip


def run_scale_phases(args, tmp: Path) -> dict:
    """The template, status and report phases, each in a fresh process."""
    results: dict = {}
    manifest = tmp / "template.parquet"
    print(f"template manifest of {args.rows:,} rows (fresh process) ...", flush=True)
    results["template"] = run_phase("template", str(tmp / "lists"), str(args.rows), str(manifest))
    if {"status", "report"} & set(args.phases):
        print(f"faking a finished run of it, {args.run_shard_size} rows per shard (fresh process) ...", flush=True)
        results["run"] = run_phase("stub-run", str(manifest), str(tmp / "run"), str(args.run_shard_size))
    if "status" in args.phases:
        print("status (fresh process) ...", flush=True)
        results["status"] = run_phase("status", str(tmp / "run"))
    if "report" in args.phases:
        print("report (fresh process) ...", flush=True)
        results["report"] = run_phase("report", str(tmp / "run"), "style")
    return results


def print_scale_table(results: dict) -> None:
    template = results["template"]
    lines = [
        ("template manifest rows", f"{template['rows']:,} ({template['row_groups']:,} row groups, "
         f"{template['file_mb']:,.0f} MB)"),
        ("template s, rows/s", f"{template['seconds']:.1f}, {template['rows_per_s']:,.0f}"),
        ("template peak RSS MB", f"{template['peak_rss_mb']:,.0f} (after imports: {template['baseline_rss_mb']:,.0f})"),
    ]  # fmt: skip
    if "run" in results:
        run = results["run"]
        lines.append(("stub run", f"{run['rows']:,} rows, {run['shards']:,} shards, {run['data_mb']:,.0f} MB, "
                      f"faked in {run['seconds']:.0f}s"))  # fmt: skip
    for name in ("status", "report"):
        if name in results:
            phase = results[name]
            lines.append((f"{name} s", f"{phase['seconds']:.1f}"))
            lines.append((f"{name} peak RSS MB", f"{phase['peak_rss_mb']:,.0f} (after imports: "
                          f"{phase['baseline_rss_mb']:,.0f})"))  # fmt: skip
    width = max(len(name) for name, _ in lines)
    print()
    for name, value in lines:
        print(f"{name:<{width}}  {value}")


def run_phase(*args: str) -> dict:
    """Run this script's `--phase ...` in a fresh interpreter; its last stdout line is the JSON result."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    done = subprocess.run(
        [sys.executable, __file__, "--phase", *args], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of the manifest that is planned")
    parser.add_argument("--files", type=int, default=10, help="Parquet files the manifest is split across")
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=8, help="stub actors")
    parser.add_argument("--id-kind", choices=["int", "string"], default="int")
    parser.add_argument(
        "--dispatch-rows",
        type=int,
        default=None,
        help="dispatch only the first whole files holding at least this many rows (default: all)",
    )
    parser.add_argument(
        "--row-group-rows", type=int, default=4096, help="Parquet row group size of the generated manifest"
    )
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs of the local Ray instance")
    parser.add_argument("--export-rows", type=int, default=100_000, help="images of the export benchmark (0: skip it)")
    parser.add_argument("--export-only", action="store_true", help="run only the export benchmark")
    parser.add_argument(
        "--phases",
        type=lambda text: text.split(","),
        default=["plan", "dispatch"],
        help="comma-separated: plan,dispatch (together), template, status, report (default: plan,dispatch)",
    )
    parser.add_argument(
        "--run-shard-size", type=int, default=_STUB_RUN_SHARD_SIZE, help="rows per shard of the stub run"
    )
    parser.add_argument("--phase", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        name, *rest = args.phase
        if name == "plan":
            result = phase_plan(rest[0], int(rest[1]))
        elif name == "export":
            result = phase_export(*rest)
        elif name == "template":
            result = phase_template(rest[0], int(rest[1]), rest[2])
        elif name == "stub-run":
            result = make_stub_run(rest[0], rest[1], int(rest[2]))
        elif name == "status":
            result = phase_status(rest[0])
        elif name == "report":
            result = phase_report(rest[0], rest[1])
        else:
            result = phase_dispatch(rest[0], rest[1], *(int(value) for value in rest[2:]))
        print(json.dumps(result))
        return
    if args.export_only:
        export_section(args.export_rows)
        return

    if {"template", "status", "report"} & set(args.phases):
        with tempfile.TemporaryDirectory(prefix="driver-scale-") as tmp:
            print_scale_table(run_scale_phases(args, Path(tmp)))
    if not {"plan", "dispatch"} & set(args.phases):
        return
    with tempfile.TemporaryDirectory(prefix="driver-scale-") as tmp:
        # 1. Generate the manifest.
        started = time.perf_counter()
        manifest = make_manifest(Path(tmp) / "manifest", args.rows, args.files, args.id_kind, args.row_group_rows)
        generate_seconds = time.perf_counter() - started
        size_mb = sum(p.stat().st_size for p in manifest.glob("*.parquet")) / 2**20
        print(f"generated {args.rows:,} rows in {args.files} files ({size_mb:,.0f} MB) in {generate_seconds:.1f}s")
        print("planning (fresh process) ...", flush=True)
        # 2. Planning alone, on the whole manifest.
        plan = run_phase("plan", str(manifest), str(args.shard_size))
        print(f"planned in {plan['seconds']:.1f}s; dispatching with stub actors (fresh process) ...", flush=True)
        # 3. Dispatch with stub actors, on the whole manifest or its first files.
        dispatched = manifest
        if args.dispatch_rows is not None and args.dispatch_rows < args.rows:
            dispatched = prefix_manifest(manifest, Path(tmp) / "dispatch", args.dispatch_rows)
        dispatch = run_phase(
            "dispatch",
            str(dispatched),
            str(Path(tmp) / "out"),
            str(args.shard_size),
            str(args.workers),
            str(args.cpus),
        )
    print_table(args, generate_seconds, plan, dispatch)
    if args.export_rows:
        export_section(args.export_rows)


def print_table(args, generate_seconds: float, plan: dict, dispatch: dict) -> None:
    prefix = dispatch["rows"] < plan["rows"]
    lines = [
        ("manifest rows (planned)", f"{plan['rows']:,}"),
        ("files", f"{args.files}"),
        ("id column", args.id_kind),
        ("row group rows", f"{args.row_group_rows:,}"),
        ("shard size", f"{args.shard_size}"),
        ("shards (planned)", f"{plan['shards']:,}"),
        ("manifest generation s", f"{generate_seconds:.1f}"),
        (
            "planning s (validate + plan)",
            f"{plan['seconds']:.1f} ({plan['validate_seconds']:.1f} + {plan['plan_seconds']:.2f})",
        ),
        ("planning rows/s", f"{plan['rows'] / plan['seconds']:,.0f}"),
        ("planning peak RSS MB", f"{plan['peak_rss_mb']:,.0f} (after imports: {plan['baseline_rss_mb']:,.0f})"),
        (
            "dispatched rows" + (" (first files only)" if prefix else ""),
            f"{dispatch['rows']:,} in {dispatch['shards']:,} shards",
        ),
        ("stub actors / Ray CPUs", f"{args.workers} / {args.cpus}"),
        (
            "job s (of which before 1st event)",
            f"{dispatch['seconds']:.1f} ({dispatch['to_first_progress_seconds']:.1f})",
        ),
        ("dispatch shards/s (steady)", f"{dispatch['shards_per_s']:,.0f}"),
        ("dispatch rows/s (steady)", f"{dispatch['rows_per_s']:,.0f}"),
        (
            "driver CPU per shard, busy share",
            f"{dispatch['driver_cpu_ms_per_shard']:.2f} ms, {dispatch['driver_cpu_share']:.0%} of one core",
        ),
        (
            "driver-bound shards/s, rows/s (1 / CPU per shard)",
            f"{1000 / dispatch['driver_cpu_ms_per_shard']:,.0f}, "
            f"{1000 / dispatch['driver_cpu_ms_per_shard'] * dispatch['rows'] / dispatch['shards']:,.0f} (extrapolated)",
        ),
        (
            "driver peak RSS MB (whole job)",
            f"{dispatch['peak_rss_mb']:,.0f} (RSS at 1st event {dispatch['rss_at_first_progress_mb']:,.0f}, "
            f"at end {dispatch['rss_at_end_mb']:,.0f})",
        ),
        (
            f"dispatch rows/s / {GPU_ROWS_PER_S:,} rows/s (100 GPUs x 10 img/s)",
            f"{dispatch['rows_per_s'] / GPU_ROWS_PER_S:,.1f}x",
        ),
    ]
    width = max(len(name) for name, _ in lines)
    print()
    for name, value in lines:
        print(f"{name:<{width}}  {value}")
    if prefix:
        print(
            f"\nPlanning used all {plan['rows']:,} rows; dispatch ran on the first files ({dispatch['rows']:,} rows)."
        )


# ---------------------------------------------------------------- export: `genbatch export` of a large run
# A fake run (the run's own schema, stub PNGs of 16x16 px, 1% exact duplicates, 5% failed rows) is written
# directly as shard files; each export runs in a fresh process so that its peak RSS is its own.

EXPORT_SHARD_ROWS = 256  # rows per run shard, as a job's default shard_size
EXPORT_WHERE = "status == 'ok' and clip_score >= 20"


def make_export_run(folder: Path, rows: int) -> Path:
    """A finished run of `rows` images with every column genbatch writes, one shard file at a time."""
    import hashlib
    import io

    import numpy as np
    from PIL import Image

    from jobs.runfolder.jobfile import identity_key
    from workers.io import columns as C
    from workers.io.writer import ShardFooter, write_shard

    identity = {"made_by": "benchmarks.driver_scale.make_export_run", "rows": rows}
    rng = np.random.default_rng(0)
    shards = math.ceil(rows / EXPORT_SHARD_ROWS)
    for index in range(shards):
        span = range(index * EXPORT_SHARD_ROWS, min((index + 1) * EXPORT_SHARD_ROWS, rows))
        images, failed = [], [i % 20 == 7 for i in span]
        for i, bad in zip(span, failed):
            buffer = io.BytesIO()
            source = i - 1 if i % 100 == 99 else i  # every 100th image repeats the one before it
            pixels = np.random.default_rng(source).integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
            images.append(None if bad else buffer.getvalue())
        n = len(span)
        arrays = {
            C.ID: pa.array([f"img-{i:010d}" for i in span]),
            C.PROMPT: [f"a photo of object number {i}, {_CATEGORIES[i % 8]} style, detailed" for i in span],
            "category": [_CATEGORIES[i % 8] for i in span],
            C.IMAGE: [None if b is None else {"bytes": b, "path": None} for b in images],
            C.CLIP_SCORE: [None if b is None else float(x) for b, x in zip(images, rng.normal(25, 4, n))],
            C.CLIP_COSINE: [None if b is None else 0.25 for b in images],
            C.PROMPT_TRUNCATED: [False] * n,
            C.SEED: list(span),
            C.IMAGE_INDEX: [0] * n,
            C.STEPS: [30] * n,
            C.GUIDANCE_SCALE: [7.5] * n,
            C.WIDTH: [512] * n,
            C.HEIGHT: [512] * n,
            C.STRENGTH: [None] * n,
            C.SCHEDULER: ["DDIMScheduler"] * n,
            C.MODEL: ["tiny"] * n,
            C.CLIP_MODEL: ["tiny"] * n,
            C.WORKER: ["worker-0@bench"] * n,
            C.DURATION_S: [0.1] * n,
            C.IMAGE_SHA256: [None if b is None else hashlib.sha256(b).hexdigest() for b in images],
            C.STATUS: [C.STATUS_ERROR if bad else C.STATUS_OK for bad in failed],
            C.ERROR: ["RuntimeError: stub" if bad else None for bad in failed],
        }
        types = {C.ID: pa.string(), C.PROMPT: pa.string(), "category": pa.string(), **C.GENERATED}
        table = pa.table({name: pa.array(values, types[name]) for name, values in arrays.items()})
        footer = ShardFooter(identity_key(identity), index, n, n - sum(failed), sum(failed))
        write_shard(table, str(folder), footer)
    job = {"status": "finished", "identity": identity, "shards": shards, "config": {"output": {"image_format": "png"}}}
    (folder / "job.json").write_text(json.dumps(job))
    return folder


def phase_export(run: str, dest: str, format: str) -> dict:
    """Runs in a fresh process: one `genbatch export` with --where and --dedup."""
    from jobs.export.run import export_run

    baseline = rss_mb()
    summary = export_run(run, dest, format, where=EXPORT_WHERE, dedup=True)  # type: ignore[arg-type]
    return {**summary.as_dict(), "baseline_rss_mb": baseline, "peak_rss_mb": peak_rss_mb()}


def export_section(rows: int) -> None:
    """Export throughput and peak RSS for a run of `rows` stub images, to WebDataset and to an imagefolder."""
    with tempfile.TemporaryDirectory(prefix="export-scale-") as tmp:
        started = time.perf_counter()
        run = make_export_run(Path(tmp) / "run", rows)
        size_mb = sum(p.stat().st_size for p in (run / "data").glob("*.parquet")) / 2**20
        print(f"\nwrote a stub run of {rows:,} images ({size_mb:,.0f} MB) in {time.perf_counter() - started:.1f}s")
        results = {}
        for format in ("webdataset", "imagefolder"):
            print(f"exporting to {format} (fresh process) ...", flush=True)
            results[format] = run_phase("export", str(run), str(Path(tmp) / format), format)
        print_export_table(rows, results)  # before the clean-up: deleting 100,000s of files can take minutes


def print_export_table(rows: int, results: dict) -> None:
    print(f'\nexport of {rows:,} images, --where "{EXPORT_WHERE}" --dedup, 10,000 samples per shard')
    lines = [("format", "rows in / out", "filtered", "duplicates", "shards", "MB", "s", "images/s", "peak RSS MB")]
    for format, r in results.items():
        lines.append(
            (
                format,
                f"{r['rows_in']:,} / {r['rows_out']:,}",
                f"{r['rows_filtered'] + r['rows_without_image']:,}",
                f"{r['duplicates']:,}",
                f"{r['shards']}",
                f"{r['bytes'] / 2**20:,.0f}",
                f"{r['seconds']:.1f}",
                f"{r['images_per_s']:,.0f}",
                f"{r['peak_rss_mb']:,.0f} (after imports {r['baseline_rss_mb']:,.0f})",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)))


if __name__ == "__main__":
    main()
