"""The actor's own logic, run in-process: one bad row does not sink its batch; storage errors are clean."""

from __future__ import annotations

import errno
import time
from dataclasses import replace
from importlib import metadata

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workers import generation, storage
from workers.fence import FencedOut, lock_record
from workers.provenance import pixel_versions
from workers.tasks import BatchProgress, GenerationDefaults, ShardResult, ShardTask, WorkerSettings
from workers.worker import GenerationWorker
from workers.writer import ShardFooter, ShardWriteError, read_footer, write_shard


def settings(output, batch_size=4):
    return WorkerSettings(
        model="tiny",
        revision=None,
        scheduler=None,
        dtype="fp32",
        clip_model="tiny",
        batch_size=batch_size,
        job_seed=0,
        defaults=GenerationDefaults(steps=1, guidance_scale=7.5, width=32, height=32, negative_prompt=""),
        output_dir=str(output),
        job_key="k",
        num_threads=1,
    )


def test_a_batch_that_raises_is_rerun_row_by_row_so_only_the_culprit_fails(tmp_path, monkeypatch, tiny_dirs):
    prompts = ["fine", "also fine", "poison", "still fine"]
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"prompt": prompts}), manifest)
    real_generate = generation.generate
    calls = []

    def generate(pipeline, rows, pad_to=None):
        calls.append(len(rows))
        if any(row.prompt == "poison" for row in rows):
            raise ValueError("cannot draw poison")
        return real_generate(pipeline, rows, pad_to)

    monkeypatch.setattr(generation, "generate", generate)
    worker = GenerationWorker(settings(tmp_path / "out"), 0)
    assert worker.load_error is None
    events = list(worker.run_shard(ShardTask(0, str(manifest), 0, 4, 0, has_id_column=False)))
    assert calls == [4, 1, 1, 1, 1]  # the batch, then each row alone
    assert replace(events[0], finished_at=0.0) == BatchProgress(shard=0, rows=4, failed=1)
    assert abs(events[0].finished_at - time.time()) < 60  # wall clock, comparable across processes
    assert isinstance(events[-1], ShardResult) and (events[-1].ok, events[-1].failed) == (3, 1)
    table = pq.read_table(events[-1].file)
    assert table.column("status").to_pylist() == ["ok", "ok", "error", "ok"]
    assert table.column("error").to_pylist() == [None, None, "ValueError: cannot draw poison", None]
    # The footer says where the images came from: the versions that decide pixels, and the device.
    footer = read_footer(tmp_path / "out" / "data" / "shard-00000.parquet")
    assert footer == ShardFooter("k", 0, 4, 3, 1, versions=pixel_versions(), device="cpu")
    assert set(footer.versions) == {"genbatch", "torch", "diffusers", "transformers"}
    assert footer.versions["diffusers"] == metadata.version("diffusers")


def test_an_actor_publishes_nothing_once_another_run_holds_the_folder(tmp_path, tiny_dirs):
    """Fencing: an actor orphaned by a killed driver must not publish after the next run took the lock."""
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b"]}), manifest)
    output = tmp_path / "out"
    output.mkdir()
    lock = output / ".genbatch.lock"
    lock.write_bytes(lock_record(4242, "first-run"))
    worker = GenerationWorker(replace(settings(output), run_token="first-run"), 0)
    task = ShardTask(0, str(manifest), 0, 2, 0, has_id_column=False)
    assert isinstance(list(worker.run_shard(task))[-1], ShardResult)  # its own run holds the folder: published
    (output / "data" / "shard-00000.parquet").unlink()
    (output / "stats" / "shard-00000.json").unlink()
    lock.write_bytes(lock_record(777, "next-run"))  # a new run took the folder over
    with pytest.raises(FencedOut, match=r"another genbatch run \(pid 777\) holds this output folder now"):
        list(worker.run_shard(task))
    assert sorted(p.name for p in output.rglob("*") if p.is_file()) == [lock.name]  # nothing, not even temp files


def test_a_worker_that_cannot_load_reports_one_line(tmp_path):
    worker = GenerationWorker(_with_model(settings(tmp_path), str(tmp_path)), 3)
    assert worker.load_error.startswith("OSError: ") and "model_index.json" in worker.load_error
    with pytest.raises(RuntimeError, match="model_index.json"):
        worker.ready()


def _with_model(base: WorkerSettings, model: str) -> WorkerSettings:
    return replace(base, model=model)


def test_a_full_disk_leaves_no_file_behind(tmp_path, monkeypatch):
    def disk_full(fd):  # the bytes are in the temporary file, but they cannot be made durable
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "fsync", disk_full)
    with pytest.raises(ShardWriteError, match=r"cannot write .*shard-00007.parquet: No space left on device"):
        write_shard(pa.table({"x": [1]}), str(tmp_path), ShardFooter("k", 7, 1, 1, 0))
    assert list((tmp_path / "data").iterdir()) == []


def test_footers_reject_partial_and_foreign_files(tmp_path):
    path = write_shard(pa.table({"x": [1, 2]}), str(tmp_path), ShardFooter("k", 0, 2, 2, 0))
    assert read_footer(tmp_path / "data" / "shard-00000.parquet") == ShardFooter("k", 0, 2, 2, 0)
    data = open(path, "rb").read()
    (tmp_path / "truncated.parquet").write_bytes(data[: len(data) // 2])
    assert read_footer(tmp_path / "truncated.parquet") is None
    pq.write_table(pa.table({"x": [1]}), tmp_path / "foreign.parquet")
    assert read_footer(tmp_path / "foreign.parquet") is None
