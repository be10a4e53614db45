"""Image bytes have 64-bit offsets (`large_binary`) in memory and are stored a row group at a time as `binary`, so a
shard may hold more than 2 GiB of them while its files keep the type of earlier runs and of `datasets`' Image."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.cli.main import main
from tests.conftest import read_output, write_config, write_manifest
from workers.io import columns as C
from workers.io.rows import RowSpec, expand_images
from workers.io.writer import FOOTER_KEY, ShardFooter, read_footer, write_shard
from workers.pipeline.output import RowOutput, RowsToRun, RunLabels, build_output_table
from workers.tasks import ShardTask

LABELS = RunLabels(model="tiny", clip_model=None, scheduler="ddim", worker="worker-0@test")


def spec(row_id: str) -> RowSpec:
    return RowSpec(row_id, "a prompt", "", 1, 2, 7.5, 32, 32)


@pytest.mark.slow  # 2 GiB through the writer and back: ~10 s and ~5 GB of memory at peak on the 2-core machine
def test_a_shard_with_more_than_2_gib_of_image_bytes_is_written_and_read_back(tmp_path):
    # 3 images just past 2**31 - 1 bytes together, the most `binary` offsets address (no byte more to stream);
    # each a multiple of 8 bytes, read back as 64-bit words
    size, rows = (2**31 // 3 + 8) // 8 * 8, 3
    assert size * rows > 2**31
    # The output table as a worker builds it, then its images swapped for big ones, made without Python bytes.
    table = shard_table([f"r{i}" for i in range(rows)])
    data = pa.allocate_buffer(size * rows)
    for i in range(rows):
        np.frombuffer(data, dtype=np.uint8)[i * size : (i + 1) * size] = i + 1
    offsets = pa.py_buffer(np.arange(rows + 1, dtype=np.int64) * size)
    big = pa.Array.from_buffers(pa.large_binary(), rows, [None, offsets, data])
    images = pa.StructArray.from_arrays([big, pa.nulls(rows, pa.string())], fields=list(C.IMAGE_TYPE))
    table = table.set_column(table.schema.get_field_index(C.IMAGE), C.IMAGE, images)
    footer = ShardFooter(job_key="k", shard=0, rows=rows, ok=rows, failed=0)
    path = write_shard(table, str(tmp_path), footer)
    del table, images, big, data

    assert read_footer(path) == footer  # what a resume checks
    assert pq.read_schema(path).field(C.IMAGE).type == C.STORED_IMAGE_TYPE
    assert pq.read_metadata(path).num_row_groups == 3  # a row group per image where 64 would pass 1 GiB
    column = pq.read_table(path, columns=[C.IMAGE]).column(C.IMAGE)
    assert column.num_chunks == 3
    values = [value for chunk in column.chunks for value in chunk.field("bytes")]
    assert len(values) == rows
    for i, value in enumerate(values):  # every byte where it belongs, read without copying
        words = np.frombuffer(value.as_buffer(), dtype=np.uint64)  # all equal: smallest and largest are that value
        pattern = int.from_bytes(bytes([i + 1]) * 8, "little")
        assert (int(words.min()), int(words.max())) == (pattern, pattern) and len(value.as_buffer()) == size


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def legacy(table: pa.Table) -> pa.Table:
    """A shard table as genbatch built it before large_binary: the image column with 32-bit offsets."""
    index = table.schema.get_field_index(C.IMAGE)
    image = table.column(C.IMAGE).cast(C.STORED_IMAGE_TYPE)
    return table.set_column(index, pa.field(C.IMAGE, C.STORED_IMAGE_TYPE), image)


def shard_table(ids: list[str], error_at: int | None = None) -> pa.Table:
    outputs = [
        RowOutput(error="RuntimeError: boom") if i == error_at else RowOutput(png(10 * i), f"sha{i}", 0.25)
        for i in range(len(ids))
    ]
    manifest = pa.table({C.ID: ids, C.PROMPT: [f"prompt {i}" for i in ids]})
    return build_output_table(manifest, manifest.column(C.ID), [spec(i) for i in ids], outputs, LABELS)


def test_retrying_rows_of_a_shard_replaces_only_those_rows_with_wide_offsets(tmp_path):
    path = write_shard(shard_table(["a", "b", "c"], error_at=1), str(tmp_path), ShardFooter("k", 2, 3, 2, 1))
    todo = RowsToRun.of(str(tmp_path), ShardTask(2, "m.parquet", 0, 3, 0, True, retry_failed=True), 3)
    assert pq.read_schema(path).field(C.IMAGE).type == C.STORED_IMAGE_TYPE
    assert todo.positions == [1] and todo.previous is not None
    assert todo.previous.schema.field(C.IMAGE).type == C.IMAGE_TYPE
    merged = todo.merged(shard_table(["b"]))
    assert merged.schema.field(C.IMAGE).type == C.IMAGE_TYPE
    assert merged.column(C.IMAGE).to_pylist() == [
        {"bytes": png(0), "path": None},
        {"bytes": png(0), "path": None},  # fresh's row 0 image
        {"bytes": png(20), "path": None},
    ]
    assert merged.column(C.STATUS).to_pylist() == ["ok", "ok", "ok"]


def test_passed_through_init_images_get_64_bit_offsets_too():
    table = pa.table({C.ID: ["a", "b"], C.INIT_IMAGE: pa.array([b"x" * 3, b"y"], pa.binary())})
    rows = [spec("a"), spec("b")]
    expanded, ids, specs = expand_images(table, table.column(C.ID), rows, 2)
    assert ids.to_pylist() == ["a", "a", "b", "b"] and [s.image_index for s in specs] == [0, 1, 0, 1]
    assert expanded.schema.field(C.INIT_IMAGE).type == pa.large_binary()
    assert expanded.column(C.INIT_IMAGE).to_pylist() == [b"xxx", b"xxx", b"y", b"y"]
    output = build_output_table(table, table.column(C.ID), rows, [RowOutput(png(1), "s", 0.1)] * 2, LABELS)
    assert output.schema.field(C.INIT_IMAGE).type == pa.large_binary()
    assert output.column(C.INIT_IMAGE).to_pylist() == [b"xxx", b"y"]
    schema, groups = C.stored_row_groups(output, 1)  # as a file holds it: binary, a row group per row here
    assert schema.field(C.INIT_IMAGE).type == pa.binary() and schema.field(C.IMAGE).type == C.STORED_IMAGE_TYPE
    assert [g.column(C.INIT_IMAGE).to_pylist() for g in groups] == [[b"xxx"], [b"y"]]


def test_shards_from_before_and_after_load_together_in_datasets_as_images(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    old = write_shard(legacy(shard_table(["a", "b"])), str(tmp_path), ShardFooter("k", 0, 2, 2, 0))
    new = write_shard(shard_table(["c", "d"]), str(tmp_path), ShardFooter("k", 1, 2, 2, 0))
    assert pq.read_schema(old).field(C.IMAGE).type == pq.read_schema(new).field(C.IMAGE).type == C.STORED_IMAGE_TYPE
    for path in (old, new):  # both say `image` is an Image feature
        features = json.loads(pq.read_schema(path).metadata[b"huggingface"])["info"]["features"]
        assert features[C.IMAGE] == {"_type": "Image"}
    dataset = datasets.load_dataset(
        "parquet", data_files=[old, new], split="train", cache_dir=str(tmp_path / "hf-cache")
    )
    assert isinstance(dataset.features[C.IMAGE], datasets.Image)
    assert dataset[C.ID] == ["a", "b", "c", "d"]
    pixels = [np.asarray(image)[0, 0, 0] for image in dataset[C.IMAGE]]
    assert pixels == [0, 10, 0, 10]


@pytest.mark.slow  # two whole jobs
def test_an_old_binary_run_resumes_and_reports_with_its_new_shards(tmp_path, ray_session, capsys):
    manifest = write_manifest(tmp_path / "m.parquet", {C.ID: [f"p{i}" for i in range(6)], C.PROMPT: list("abcdef")})
    output = tmp_path / "out"
    config = write_config(tmp_path / "c.yaml", manifest, output, shard_size=3)
    assert main(["run", str(config), "--quiet"]) == 0
    expected = read_output(output)
    # Make it a run of an older genbatch: shard 0 with `binary` images (same footer), shard 1 lost.
    shard_0, shard_1 = output / "data" / "shard-00000.parquet", output / "data" / "shard-00001.parquet"
    old = pq.read_table(shard_0)
    pq.write_table(legacy(old).replace_schema_metadata(old.schema.metadata), shard_0, row_group_size=64)
    shard_1.unlink()
    (output / "stats" / "shard-00001.json").unlink()
    old_bytes = shard_0.read_bytes()

    assert main(["run", str(config), "--quiet"]) == 0
    assert shard_0.read_bytes() == old_bytes  # verified from its footer and kept
    assert pq.read_schema(shard_0).field(C.IMAGE).type == pq.read_schema(shard_1).field(C.IMAGE).type
    assert json.loads(pq.read_schema(shard_1).metadata[FOOTER_KEY])["rows"] == 3
    resumed = pq.read_table(output / "data")  # a folder of both kinds reads as one table
    assert resumed.column(C.IMAGE_SHA256).to_pylist() == expected.column(C.IMAGE_SHA256).to_pylist()
    assert [r["bytes"] for r in resumed.column(C.IMAGE).to_pylist()] == [
        r["bytes"] for r in expected.column(C.IMAGE).to_pylist()
    ]

    capsys.readouterr()
    assert main(["status", str(output), "--log-format", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["state"], status["rows_done"], status["ok"], status["shards_done"]) == ("finished", 6, 6, 2)
    assert main(["report", str(output)]) == 0
    report = json.loads((output / "report" / "report.json").read_text())
    assert (report["rows"], report["ok"], report["clip_score"]["n"]) == (6, 6, 6)
    html = (output / "report" / "report.html").read_text()
    assert html.count('src="data:image/jpeg;base64,') == 6  # thumbnails from both kinds of shard
