"""The actor's own logic, run in-process: one bad row does not sink its batch; storage errors are clean."""

from __future__ import annotations

import errno
import time
from dataclasses import replace
from importlib import metadata

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import worker_settings_for
from workers.errors import FencedOut, ShardWriteError
from workers.io import storage
from workers.io.fence import lock_record
from workers.io.provenance import pixel_versions
from workers.io.rows import RowSpec
from workers.io.writer import ShardFooter, read_footer, write_shard
from workers.pipeline import generation
from workers.pipeline.batch import micro_batches
from workers.pipeline.images import encode_and_hash
from workers.tasks import BatchProgress, RunBinding, ShardResult, ShardTask, WorkerSettings
from workers.worker import GenerationWorker


def settings(output, batch_size=4):
    return worker_settings_for(output, key="k", generation={"steps": 1}, resources={"batch_size": batch_size})


def test_a_batch_that_raises_is_rerun_row_by_row_so_only_the_culprit_fails(tmp_path, monkeypatch, tiny_dirs):
    prompts = ["fine", "also fine", "poison", "still fine"]
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"prompt": prompts}), manifest)
    real_generate = generation.generate
    calls = []

    def generate(pipeline, rows, pad_to=None, **options):
        calls.append(len(rows))
        if any(row.prompt == "poison" for row in rows):
            raise ValueError("cannot draw\n  poison")  # a multi-line message: rows keep one line
        return real_generate(pipeline, rows, pad_to, **options)

    monkeypatch.setattr(generation, "generate", generate)
    worker = GenerationWorker(settings(tmp_path / "out"), 0)
    assert worker.load_error is None
    events = list(worker.run_shard(ShardTask(0, str(manifest), 0, 4, 0, has_id_column=False)))
    assert calls == [4, 1, 1, 1, 1]  # the batch, then each row alone
    assert replace(events[0], finished_at=0.0) == BatchProgress(shard=0, images=4, failed=1)
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


def spec(prompt: str, seed: int, steps: int = 1) -> RowSpec:
    return RowSpec(prompt, prompt, "", seed, steps, 7.5, 32, 32)


def test_micro_batches_keep_shard_positions_through_grouping_and_retry_subsets():
    rows = [spec(f"p{i}", i, steps=1 + i % 2) for i in range(8)]
    batches = micro_batches(rows, [1, 2, 3, 4, 5, 6, 7], batch_size=2)  # --retry-failed: position 0 was ok
    assert [list(batch) for batch in batches] == [[1, 3], [5, 7], [2, 4], [6]]
    assert all(batch[position] is rows[position] for batch in batches for position in batch)


def test_the_one_by_one_fall_back_keeps_each_rows_position(tmp_path, monkeypatch, tiny_dirs):
    real_generate = generation.generate

    def generate(pipeline, rows, pad_to=None, **options):
        if any(row.prompt == "poison" for row in rows):
            raise ValueError("cannot draw poison")
        return real_generate(pipeline, rows, pad_to, **options)

    worker = GenerationWorker(settings(tmp_path / "out"), 0)
    batch = {5: spec("a cat", 1), 9: spec("poison", 2), 12: spec("a dog", 3)}  # shard positions, not 0, 1, 2

    def alone(position):  # the row's image, encoded, as a batch of its own makes it
        pixels = generation.to_uint8(real_generate(worker.pipeline, [batch[position]]))
        return encode_and_hash(pixels[0].cpu().numpy(), worker.settings.encoding)

    expected = {5: alone(5), 12: alone(12)}
    monkeypatch.setattr(generation, "generate", generate)
    result = worker.batch_runner.run(batch)
    assert list(result.outputs) == [5, 9, 12]
    assert [out.error for out in result.outputs.values()] == [None, "ValueError: cannot draw poison", None]
    assert result.outputs[9].duration_s == 0.0 and result.outputs[5].duration_s > 0
    assert {position: future.result() for position, future in result.encoding} == expected  # no image moved


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
    with pytest.raises(RuntimeError, match=r"model_index\.json"):
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


def test_a_reused_actor_and_a_sweep_run_apply_their_own_init_image_policy(tmp_path, tiny_dirs):
    from PIL import Image

    wrong_size = tmp_path / "wide.png"
    Image.new("RGB", (48, 32), (200, 30, 30)).save(wrong_size)
    manifest = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": ["a red wall"], "init_image": [str(wrong_size)]}), manifest)
    task = ShardTask(0, str(manifest), 0, 1, 0, has_id_column=False)

    def img2img(folder, key: str, **generation) -> WorkerSettings:  # 3 steps: img2img at strength 0.8 runs 2
        return worker_settings_for(folder, key=key, generation={"steps": 3, **generation})

    worker = GenerationWorker(img2img(tmp_path / "resize", "k"), 0)  # the config's default: resize

    def status_of(result: ShardResult) -> list:
        return pq.read_table(result.file).column("error").to_pylist()

    assert status_of(list(worker.run_shard(task))[-1]) == [None]
    strict = img2img(tmp_path / "error", "k2", init_image_policy="error")
    refused = ["init_image is 48x32 px, the row asks for 32x32 (generation.init_image_policy: error)"]
    worker.rebind(RunBinding.of(strict), 4)  # a later job of the driver (jobs.pool.worker_reuse)
    assert status_of(list(worker.run_shard(task))[-1]) == refused
    worker.rebind(RunBinding.of(img2img(tmp_path / "resize-again", "k")), 4)
    sweep_run = replace(task, run=RunBinding.of(replace(strict, output_dir=str(tmp_path / "sweep"))))
    assert status_of(list(worker.run_shard(sweep_run))[-1]) == refused
