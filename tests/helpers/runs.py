"""Run folders as genbatch writes them, built directly (no model, no Ray), and ways to damage their shards."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.runfolder.jobfile import identity_key
from tests.conftest import small_config
from tests.helpers.images import png
from workers.io import columns as C
from workers.io.writer import ShardFooter, write_shard

CATEGORIES = ["animals", "food", "scenes"]


def make_run(path, scores, clip_model="tiny", prompts=None, seeds=None, failed=(), shard_size=64, image=None):
    """A run folder as genbatch writes it, built directly (no model needed)."""
    n = len(scores)
    identity = {"made_by": "tests.helpers.runs.make_run", "rows": n, "shard_size": shard_size}
    prompts = prompts or [f"prompt {i}" for i in range(n)]
    seeds = seeds if seeds is not None else list(range(n))
    for index, start in enumerate(range(0, n, shard_size)):
        rows = range(start, min(start + shard_size, n))
        bad = [i in failed for i in rows]
        table = pa.table(
            {
                C.ID: [f"r{i:06d}" for i in rows],
                C.PROMPT: [prompts[i] for i in rows],
                "category": [CATEGORIES[i % 3] for i in rows],
                C.IMAGE: pa.array(
                    [None if b else {"bytes": image or png(i), "path": None} for i, b in zip(rows, bad)],
                    C.IMAGE_TYPE,
                ),
                C.CLIP_SCORE: pa.array([None if b else scores[i] for i, b in zip(rows, bad)], pa.float32()),
                C.SEED: pa.array([seeds[i] for i in rows], pa.int64()),
                C.SCHEDULER: ["ddim"] * len(rows),
                C.STATUS: ["error" if b else "ok" for b in bad],
                C.ERROR: ["RuntimeError: boom" if b else None for b in bad],
            }
        )
        footer = ShardFooter(identity_key(identity), index, len(rows), len(rows) - sum(bad), sum(bad))
        write_shard(table, str(path), footer)
    job = {
        "status": "finished",
        "identity": identity,
        "shards": -(-n // shard_size),
        "config": {
            "model": {"id": "tiny", "scheduler": "ddim", "dtype": "auto"},
            "generation": {"steps": 4, "guidance_scale": 7.5, "width": 64, "height": 64},
            "clip": {"model": clip_model},
            "seed": 0,
        },
        "images_per_s": 12.5,
        "seconds": 3.0,
    }
    (path / "job.json").write_text(json.dumps(job))
    return path


def truncate_shard(run, index: int = 1):
    """Cut shard `index` short; returns how a refusal names that shard's state."""
    shard = run / "data" / f"shard-{index:05d}.parquet"
    shard.write_bytes(shard.read_bytes()[:1000])  # cut short: no footer
    return "(cut short or unreadable)"


def rescore_shard(run, index: int = 1):
    """Shard `index` as a rescore that has not finished leaves it: rewritten with the rescored job's key; returns how a
    refusal names that shard's state."""
    shard = run / "data" / f"shard-{index:05d}.parquet"
    table = pa.Table.from_batches(pq.ParquetFile(shard).iter_batches())
    footer = ShardFooter(**json.loads(pq.read_schema(shard).metadata[b"genbatch"]))
    write_shard(table, str(run), ShardFooter(identity_key({"rescored": True}), index, footer.rows, footer.ok, 0))
    return "(another job's, e.g. a rescore not finished)"


def refusal(run, why: str) -> str:
    """The one-line refusal of a 3-shard run whose shard 1 is `why` (what truncate_shard or rescore_shard return)."""
    fix = (
        "remove the files cut short and rerun genbatch run to redo them" if "cut short" in why else "finish the rescore"
    )
    return (
        f"genbatch: error: {run}: 1 of 3 shards cannot be read as this job's: shard-00001.parquet {why}; "
        f"{fix}, or rerun with --partial to go on without their rows\n"
    )


def record_only_run(tmp_path, shards: int = 0):
    """An output folder whose job.json is a genbatch record (no Ray needed to test the refusals)."""
    run = tmp_path / "run"
    run.mkdir()
    record = {"identity": {"seed": 0}, "shards": shards, "config": small_config("m.parquet", run)}
    (run / "job.json").write_text(json.dumps(record))
    return run
