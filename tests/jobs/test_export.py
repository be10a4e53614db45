"""`genbatch export`: WebDataset shards and imagefolders that the real `webdataset` and `datasets` libraries
read back, with exact keys, prompts, image bytes and metadata; filters, dedup, resume, refusals, S3."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.cli.main import main
from jobs.export import webdataset as wds_format
from jobs.export.keys import sample_key
from jobs.runfolder.jobfile import identity_key
from tests.conftest import read_output, write_config
from tests.helpers.images import png
from tests.helpers.runs import refusal, rescore_shard, truncate_shard
from workers.io import columns as C
from workers.io.writer import ShardFooter, write_shard

# ---------------------------------------------------------------- helpers


def fake_run(
    path: Path, images: list[bytes], shard_size: int = 4, large: bool = False, scores=None, ids=None, image_format=None
) -> Path:
    """A run folder with genbatch's columns, written directly (no model): one row per image, in order."""
    image_type = pa.struct([("bytes", pa.large_binary() if large else pa.binary()), ("path", pa.string())])
    n = len(images)
    scores = scores if scores is not None else [20.0 + i for i in range(n)]
    ids = ids if ids is not None else [f"id.{i:03d}" for i in range(n)]  # a dot: keys must escape it
    identity = {"made_by": "tests.jobs.test_export.fake_run", "rows": n, "shard_size": shard_size}
    for index, start in enumerate(range(0, n, shard_size)):
        rows = range(start, min(start + shard_size, n))
        table = pa.table(
            {
                C.ID: [ids[i] for i in rows],
                C.PROMPT: [f"prompt {i}" for i in rows],
                "category": [["cat", "dog"][i % 2] for i in rows],
                C.IMAGE: pa.array([{"bytes": images[i], "path": None} for i in rows], image_type),
                C.CLIP_SCORE: pa.array([scores[i] for i in rows], pa.float32()),
                C.SEED: pa.array(list(rows), pa.int64()),
                C.IMAGE_INDEX: pa.array([0] * len(rows), pa.int32()),
                C.IMAGE_SHA256: [hashlib.sha256(images[i]).hexdigest() for i in rows],
                C.STATUS: ["ok"] * len(rows),
                C.ERROR: pa.array([None] * len(rows), pa.string()),
            }
        )
        write_shard(table, str(path), ShardFooter(identity_key(identity), index, len(rows), len(rows), 0))
        if large:  # as another writer (or a later genbatch) may store them: 64-bit offsets in the file too
            shard = path / "data" / f"shard-{index:05d}.parquet"
            pq.write_table(pq.read_table(shard).cast(pa.schema(
                [f.with_type(image_type) if f.name == C.IMAGE else f for f in table.schema]
            ).with_metadata(pq.read_schema(shard).metadata)), shard)  # fmt: skip
    config = {} if image_format is None else {"output": {"image_format": image_format}}
    job = {"status": "finished", "identity": identity, "shards": -(-n // shard_size), "config": config}
    (path / "job.json").write_text(json.dumps(job))
    return path


def export(*args: str) -> int:
    return main(["export", *args])


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file below `folder` (hidden ones included) by relative path, except stats.json (it has timings)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "stats.json"
    }


def read_tar(path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(member.name, tar.extractfile(member).read()) for member in tar.getmembers()]


def metadata_of(row: dict) -> dict:
    """What a sample's json holds: its key and every column but the image."""
    return {"key": sample_key(row[C.ID], row.get(C.IMAGE_INDEX)), **{k: v for k, v in row.items() if k != C.IMAGE}}


# ---------------------------------------------------------------- keys


def test_keys_are_webdataset_safe_and_unique():
    assert sample_key("000001", 0) == "000001_0"
    assert sample_key("a.b/c", 2) == "a_2eb_2fc_2"
    assert sample_key("a_b", 0) == "a_5fb_0"
    assert sample_key("é", 1) == "_c3_a9_1"
    assert sample_key(17, None) == "17_0"
    tricky = ["a", "a_0", "a_5f0", "a.0", "a 0", "../x", "x/..", ".", "", "A", "a-0", "\x00", "a" * 5000, "a" * 5001]
    keys = [sample_key(t, k) for t in tricky for k in (0, 1, 10)]
    assert len(set(keys)) == len(keys)
    for key in keys:
        assert "." not in key and "/" not in key and len(key) < 200
        assert set(key) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


# ---------------------------------------------------------------- webdataset on a fake run


def test_webdataset_shards_hold_every_sample_in_order_with_fixed_member_metadata(tmp_path):
    images = [png(i) for i in range(7)]
    run = fake_run(tmp_path / "run", images, shard_size=4)
    assert export(str(run), "--format", "webdataset", "-o", str(tmp_path / "wds"), "--shard-size", "3") == 0
    dest = tmp_path / "wds"
    assert sorted(p.name for p in dest.iterdir()) == [
        ".genbatch-export",
        "export.json",
        *[f"shard-00000{i}.{ext}" for i in range(3) for ext in ("parquet", "tar")],
        "stats.json",
    ]
    table = read_output(run)
    rows = table.to_pylist()
    members = [m for shard in range(3) for m in read_tar(dest / f"shard-00000{shard}.tar")]
    expected = []
    for row in rows:
        key = sample_key(row[C.ID], 0)
        expected += [
            (f"{key}.png", row[C.IMAGE]["bytes"]),
            (f"{key}.txt", row[C.PROMPT].encode()),
            (f"{key}.json", json.dumps(metadata_of(row)).encode()),
        ]
    assert members == expected
    # The bytes are those of Python's own tarfile writing the same members (and so the same each time).
    for shard in range(3):
        reference = io.BytesIO()
        with tarfile.open(fileobj=reference, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for name, data in read_tar(dest / f"shard-00000{shard}.tar"):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
                tar.addfile(info, io.BytesIO(data))
        assert (dest / f"shard-00000{shard}.tar").read_bytes() == reference.getvalue()
    with tarfile.open(dest / "shard-000000.tar") as tar:
        for member in tar.getmembers():
            assert (member.mtime, member.uid, member.gid, member.uname, member.gname, member.mode) == (
                0, 0, 0, "", "", 0o644,
            )  # fmt: skip
    sidecar = pq.read_table(dest / "shard-000001.parquet")
    assert sidecar.column_names == ["key", *[n for n in table.column_names if n != C.IMAGE]]
    assert sidecar.to_pylist() == [metadata_of(row) for row in rows[3:6]]
    stats = json.loads((dest / "stats.json").read_text())
    assert {k: stats[k] for k in ("rows_in", "rows_filtered", "duplicates", "rows_out", "shards")} == {
        "rows_in": 7, "rows_filtered": 0, "duplicates": 0, "rows_out": 7, "shards": 3,
    }  # fmt: skip
    assert stats["bytes"] == sum(p.stat().st_size for p in dest.glob("shard-*"))


def test_dedup_keeps_the_first_of_each_image_in_run_order(tmp_path, capsys):
    # Images 0 1 0 2 1 | 3 0 3 4: duplicates within a run shard and across shards.
    order = [0, 1, 0, 2, 1, 3, 0, 3, 4]
    run = fake_run(tmp_path / "run", [png(i) for i in order], shard_size=5)
    dest = tmp_path / "wds"
    assert export(str(run), "--format", "webdataset", "-o", str(dest), "--dedup", "--where", "clip_score >= 21") == 0
    assert capsys.readouterr().out.startswith(
        "genbatch: exported 5 of 9 rows (1 filtered, 3 duplicates) in 1 webdataset shards"
    )
    # Row 0 (score 20) is filtered out first, so image 0's first kept copy is row 2.
    kept, seen = [], set()
    for row, image in enumerate(order):
        if row >= 1 and image not in seen:
            seen.add(image)
            kept.append(row)
    assert kept == [1, 2, 3, 5, 8]
    members = read_tar(dest / "shard-000000.tar")
    assert [name for name, _ in members if name.endswith(".png")] == [f"id_2e{i:03d}_0.png" for i in kept]
    assert [data for name, data in members if name.endswith(".png")] == [png(order[i]) for i in kept]
    stats = json.loads((dest / "stats.json").read_text())
    assert (stats["rows_in"], stats["rows_filtered"], stats["duplicates"], stats["rows_out"]) == (9, 1, 3, 5)


def test_large_binary_image_columns_export_the_same_bytes(tmp_path):
    images = [png(i) for i in range(5)]
    small = fake_run(tmp_path / "small", images)
    large = fake_run(tmp_path / "large", images, large=True)
    assert pq.read_schema(large / "data" / "shard-00000.parquet").field(C.IMAGE).type[0].type == pa.large_binary()
    assert export(str(small), "--format", "webdataset", "-o", str(tmp_path / "a")) == 0
    assert export(str(large), "--format", "webdataset", "-o", str(tmp_path / "b")) == 0
    assert read_tar(tmp_path / "a" / "shard-000000.tar") == read_tar(tmp_path / "b" / "shard-000000.tar")


def test_long_and_unusual_ids_give_keys_that_webdataset_reads_back(tmp_path):
    import webdataset

    ids = ["x" * 150, "a.b.c", "dir/../name", "émoji 🙂", "x" * 151]
    run = fake_run(tmp_path / "run", [png(i) for i in range(5)], ids=ids)
    assert export(str(run), "--format", "webdataset", "-o", str(tmp_path / "wds")) == 0
    samples = list(webdataset.WebDataset(str(tmp_path / "wds" / "shard-000000.tar"), shardshuffle=False))
    assert [s["__key__"] for s in samples] == [sample_key(i, 0) for i in ids]
    assert [json.loads(s["json"])["id"] for s in samples] == ids
    assert [s["png"] for s in samples] == [png(i) for i in range(5)]


@pytest.mark.parametrize(("image_format", "extension"), [("webp", "webp"), ("jpeg", "jpg")])
def test_members_take_the_runs_image_format(tmp_path, image_format, extension):
    def encoded(seed: int) -> bytes:
        buffer = io.BytesIO()
        Image.open(io.BytesIO(png(seed))).save(buffer, format=image_format.upper())
        return buffer.getvalue()

    run = fake_run(tmp_path / "run", [encoded(0), encoded(1)], image_format=image_format)
    assert export(str(run), "--format", "webdataset", "-o", str(tmp_path / "wds")) == 0
    assert [name for name, _ in read_tar(tmp_path / "wds" / "shard-000000.tar")][::3] == [
        f"id_2e000_0.{extension}",
        f"id_2e001_0.{extension}",
    ]
    assert export(str(run), "--format", "imagefolder", "-o", str(tmp_path / "folder")) == 0
    assert (tmp_path / "folder" / "shard-000000" / f"id_2e001_0.{extension}").read_bytes() == encoded(1)


# ---------------------------------------------------------------- resume and refusals


class Interrupted(KeyboardInterrupt):
    pass


def test_an_interrupted_export_resumes_to_the_same_bytes(tmp_path, monkeypatch, capsys):
    # Rows 8 and 9 repeat the images of rows 0 and 1; row 4 is filtered out: 7 samples in shards of 3, 3, 1.
    run = fake_run(tmp_path / "run", [png(i % 8) for i in range(10)], shard_size=4)
    options = ["--format", "webdataset", "--shard-size", "3", "--where", "seed != 4", "--dedup"]
    assert export(str(run), "-o", str(tmp_path / "whole"), *options) == 0
    whole = tree_bytes(tmp_path / "whole")

    # Stop in the middle of shard 1: shard 0 is published, shard 1's temporary tar is removed, nothing else is.
    add = wds_format.WebDatasetShard.add

    def add_then_stop(self, keys, rows, images):
        add(self, keys, rows, images)
        if self.shard == 1:
            raise Interrupted

    monkeypatch.setattr(wds_format.WebDatasetShard, "add", add_then_stop)
    dest = tmp_path / "resumed"
    assert export(str(run), "-o", str(dest), *options) == 130
    assert "interrupted by SIGINT" in capsys.readouterr().err
    assert sorted(p.name for p in dest.iterdir()) == [
        ".genbatch-export", "export.json", "shard-000000.parquet", "shard-000000.tar",
    ]  # fmt: skip
    monkeypatch.setattr(wds_format.WebDatasetShard, "add", add)
    # A killed run's half-written temporary file is removed by the rerun; a lost tar is redone.
    (dest / ".shard-000002.tar.0123abcd.tmp").write_bytes(b"half a tar")
    assert export(str(run), "-o", str(dest), *options) == 0
    assert "1 already complete" in capsys.readouterr().out
    assert tree_bytes(dest) == whole
    stats = json.loads((dest / "stats.json").read_text())
    assert (stats["shards"], stats["shards_skipped"], stats["rows_out"]) == (3, 1, 7)

    # A finished export rerun rewrites nothing; a shard whose tar went missing is redone.
    before = {p.name: p.stat().st_mtime_ns for p in dest.glob("shard-*")}
    (dest / "shard-000001.tar").unlink()
    assert export(str(run), "-o", str(dest), *options) == 0
    assert tree_bytes(dest) == whole
    after = {p.name: p.stat().st_mtime_ns for p in dest.glob("shard-*")}
    assert [name for name in sorted(after) if after[name] != before.get(name)] == [
        "shard-000001.parquet", "shard-000001.tar",
    ]  # fmt: skip


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_an_imagefolder_shard_that_lost_an_image_is_redone(tmp_path, capsys, damage):
    run = fake_run(tmp_path / "run", [png(i) for i in range(6)])
    dest = tmp_path / "folder"
    options = ["--format", "imagefolder", "-o", str(dest), "--shard-size", "2"]
    assert export(str(run), *options) == 0
    whole = tree_bytes(dest)
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in dest.glob("shard-*/*")}
    image = dest / "shard-000001" / "id_2e003_0.png"
    if damage == "deleted":
        image.unlink()
    else:
        image.write_bytes(image.read_bytes()[:10])
    capsys.readouterr()
    assert export(str(run), *options) == 0
    assert "in 3 imagefolder shards, 2 already complete" in capsys.readouterr().out
    assert tree_bytes(dest) == whole
    rewritten = sorted(
        p.relative_to(dest).as_posix()
        for p in dest.glob("shard-*/*")
        if (p.stat().st_ino, p.stat().st_mtime_ns) != before.get(p)
    )
    assert rewritten == ["shard-000001/id_2e002_0.png", "shard-000001/id_2e003_0.png", "shard-000001/metadata.jsonl"]


@pytest.mark.parametrize("damage", [truncate_shard, rescore_shard], ids=["truncated", "being rescored"])
def test_a_run_with_a_shard_not_whole_or_not_its_jobs_is_refused_unless_partial(tmp_path, capsys, damage):
    run = fake_run(tmp_path / "run", [png(i) for i in range(10)], shard_size=4)
    why = damage(run)
    dest = tmp_path / "wds"
    assert export(str(run), "--format", "webdataset", "-o", str(dest)) == 2
    assert capsys.readouterr().err == refusal(run, why)
    assert not dest.exists()
    assert export(str(run), "--format", "webdataset", "-o", str(dest), "--partial") == 0
    out = capsys.readouterr().out
    assert "genbatch: exported 6 of 6 rows (0 filtered, 0 duplicates) in 1 webdataset shards; partial: 1 of the " in out
    assert [name for name, _ in read_tar(dest / "shard-000000.tar")][::3] == [
        f"{sample_key(f'id.{i:03d}', 0)}.png" for i in (0, 1, 2, 3, 8, 9)
    ]
    assert json.loads((dest / "stats.json").read_text())["shards_left_out"] == [f"shard-00001.parquet {why}"]


def test_another_export_to_the_same_destination_is_refused_unless_overwrite(tmp_path, capsys):
    run = fake_run(tmp_path / "run", [png(i) for i in range(6)])
    dest = tmp_path / "wds"
    assert export(str(run), "--format", "webdataset", "-o", str(dest), "--where", "seed >= 1") == 0
    capsys.readouterr()
    assert export(str(run), "--format", "imagefolder", "-o", str(dest), "--where", "seed>=2", "--dedup") == 2
    assert capsys.readouterr().err == (
        f"genbatch: error: {dest}: holds an export with other settings (dedup: False -> True; "
        "format: 'webdataset' -> 'imagefolder'; where: 'seed >= 1' -> 'seed >= 2'); "
        "rerun with --overwrite to replace it, or choose another destination\n"
    )
    (dest / "notes.txt").write_text("mine")
    assert export(str(run), "--format", "imagefolder", "-o", str(dest), "--overwrite", "--where", "seed>=2") == 0
    assert sorted(p.name for p in dest.iterdir()) == [
        ".genbatch-export", "export.json", "notes.txt", "shard-000000", "stats.json",
    ]  # fmt: skip
    assert sorted(p.name for p in (dest / "shard-000000").iterdir()) == [
        "id_2e002_0.png", "id_2e003_0.png", "id_2e004_0.png", "id_2e005_0.png", "metadata.jsonl",
    ]  # fmt: skip
    lines = [json.loads(line) for line in (dest / "shard-000000" / "metadata.jsonl").read_text().splitlines()]
    assert [(line["file_name"], line["key"], line["prompt"]) for line in lines] == [
        (f"id_2e00{i}_0.png", f"id_2e00{i}_0", f"prompt {i}") for i in range(2, 6)
    ]
    rows = read_output(run).to_pylist()
    assert lines[0] == {"file_name": "id_2e002_0.png", **metadata_of(rows[2])}
    assert (dest / "shard-000000" / "id_2e003_0.png").read_bytes() == rows[3][C.IMAGE]["bytes"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--where", "clip > 1"], "--where: unknown column 'clip'; the run has: {columns}"),
        (["--where", "image is null"], "--where: unknown column 'image'; the run has: {columns}"),
        (["--where", "__import__('os').system('touch x')"], "--where: function calls not allowed: {call}"),
        (["--shard-size", "0"], "--shard-size: must be at least 1, got 0"),
    ],
)
def test_bad_options_are_one_line_and_write_nothing(tmp_path, capsys, args, message):
    run = fake_run(tmp_path / "run", [png(0)])
    columns = ", ".join(n for n in pq.read_schema(run / "data" / "shard-00000.parquet").names if n != C.IMAGE)
    dest = tmp_path / "wds"
    assert export(str(run), "--format", "webdataset", "-o", str(dest), *args) == 2
    call = "__import__('os').system('touch x')"
    assert capsys.readouterr().err == "genbatch: error: " + message.format(columns=columns, call=call) + "\n"
    assert not dest.exists()
    assert not (Path.cwd() / "x").exists()


def test_dedup_needs_image_sha256_and_a_destination_must_be_ours(tmp_path, capsys):
    run = fake_run(tmp_path / "run", [png(0), png(1)])
    table = pq.read_table(run / "data" / "shard-00000.parquet")
    footer = ShardFooter(**json.loads(table.schema.metadata[b"genbatch"]))
    write_shard(table.drop_columns([C.IMAGE_SHA256]).replace_schema_metadata(None), str(run), footer)
    assert export(str(run), "--format", "webdataset", "-o", str(tmp_path / "a"), "--dedup") == 2
    assert capsys.readouterr().err.startswith(
        "genbatch: error: --dedup: the run has no column image_sha256; it has: id, prompt, category, image,"
    )
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.pdf").write_bytes(b"%PDF")
    assert export(str(run), "--format", "webdataset", "-o", str(other)) == 2
    assert capsys.readouterr().err == (
        f"genbatch: error: {other}: not empty and not a genbatch export (no export.json); choose another destination\n"
    )
    (tmp_path / "a-file").write_text("x")
    assert export(str(run), "--format", "webdataset", "-o", str(tmp_path / "a-file")) == 2
    assert capsys.readouterr().err.startswith(f"genbatch: error: {tmp_path / 'a-file'}: cannot use the destination (")
    assert export(str(tmp_path / "nope"), "--format", "webdataset", "-o", str(tmp_path / "b")) == 2
    assert capsys.readouterr().err == f"genbatch: error: {tmp_path / 'nope'}: not a genbatch run folder (no job.json)\n"


# ---------------------------------------------------------------- a real tiny-model run, end to end

STYLES = ["watercolor", "pencil"]
OBJECTS = ["cat", "boat", "tree"]


@pytest.fixture(scope="module")
def synthesized(tmp_path_factory, ray_session):
    """The issue's path: a template -> `genbatch manifest` -> `genbatch run` (tiny model), 12 images.

    Two images per prompt: different ids, so different seeds and images, which --dedup must keep."""
    tmp = tmp_path_factory.mktemp("synth")
    (tmp / "styles.txt").write_text("\n".join(STYLES) + "\n")
    (tmp / "objects.txt").write_text("\n".join(OBJECTS) + "\n")
    template = ["--template", "a {style} photo of a {object}"]
    variables = ["--var", f"style={tmp / 'styles.txt'}", "--var", f"object={tmp / 'objects.txt'}"]
    out = ["-o", str(tmp / "prompts.parquet"), "--images-per-prompt", "2", "--seed", "7"]
    assert main(["manifest", *template, *variables, *out]) == 0
    config = write_config(tmp / "job.yaml", tmp / "prompts.parquet", tmp / "run", shard_size=5)
    assert main(["run", str(config), "--quiet"]) == 0
    return tmp, tmp / "run"


def expected_samples(run: Path, keep) -> list[dict]:
    """The run's rows that an export with this filter keeps, deduplicated by image bytes, in run order."""
    seen, kept = set(), []
    for row in read_output(run).to_pylist():
        digest = hashlib.sha256(row[C.IMAGE]["bytes"]).digest()
        if keep(row) and digest not in seen:
            seen.add(digest)
            kept.append(row)
    return kept


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.slow
def test_synthesize_export_webdataset_and_load_it_with_webdataset_and_datasets(synthesized, capsys):
    import datasets
    import webdataset

    tmp, run = synthesized
    scores = sorted(read_output(run).column(C.CLIP_SCORE).to_pylist())
    threshold = scores[len(scores) // 3]  # keeps about two thirds; a real float32 score, so >= is exact
    where = f"status == 'ok' and clip_score >= {threshold!r} and style in ['watercolor', 'pencil']"
    dest = tmp / "wds"
    capsys.readouterr()
    code = export(str(run), "--format", "webdataset", "-o", str(dest), "--where", where, "--dedup", "--shard-size", "3")
    assert code == 0
    expected = expected_samples(run, lambda r: r[C.STATUS] == "ok" and r[C.CLIP_SCORE] >= threshold)
    assert 4 <= len(expected) < 12
    keys = [sample_key(row[C.ID], row[C.IMAGE_INDEX]) for row in expected]
    assert keys == [f"{row[C.ID]}_0" for row in expected]  # template ids are hex digits and a dash: kept as they are
    tars = sorted(dest.glob("shard-*.tar"))
    assert len(tars) == -(-len(expected) // 3)

    # The real webdataset library: keys, prompt, image bytes and metadata of every sample, in order.
    samples = list(webdataset.WebDataset([str(t) for t in tars], shardshuffle=False))
    assert [s["__key__"] for s in samples] == keys
    assert [s["png"] for s in samples] == [row[C.IMAGE]["bytes"] for row in expected]
    assert [s["txt"].decode() for s in samples] == [row[C.PROMPT] for row in expected]
    assert [json.loads(s["json"]) for s in samples] == [metadata_of(row) for row in expected]
    assert {"style", "object", "clip_score", "seed", "image_sha256", "model"} <= set(json.loads(samples[0]["json"]))

    # Hugging Face datasets' webdataset loader: the same samples, images decoded to the same pixels.
    loaded = datasets.load_dataset(
        "webdataset", data_files={"train": [str(t) for t in tars]}, split="train", cache_dir=str(tmp / "hf")
    )
    assert loaded["__key__"] == keys
    assert loaded["txt"] == [row[C.PROMPT] for row in expected]
    for sample, row in zip(loaded, expected):
        assert np.array_equal(np.asarray(sample["png"].convert("RGB")), pixels(row[C.IMAGE]["bytes"]))
        assert sample["json"]["clip_score"] == row[C.CLIP_SCORE]
        assert (sample["json"]["seed"], sample["json"]["style"]) == (row[C.SEED], row["style"])

    # The sidecars hold the same metadata, a file per tar.
    sidecars = pa.concat_tables([pq.read_table(t.with_suffix(".parquet")) for t in tars])
    assert sidecars.to_pylist() == [metadata_of(row) for row in expected]
    stats = json.loads((dest / "stats.json").read_text())
    assert (stats["rows_in"], stats["rows_out"], stats["duplicates"]) == (12, len(expected), 0)
    assert stats["rows_filtered"] == 12 - len(expected)


@pytest.mark.slow
def test_an_imagefolder_export_loads_with_datasets(synthesized):
    import datasets

    tmp, run = synthesized
    dest = tmp / "folder"
    assert (
        export(str(run), "--format", "imagefolder", "-o", str(dest), "--where", "object != 'boat'", "--shard-size", "5")
        == 0
    )
    expected = expected_samples(run, lambda r: r["object"] != "boat")
    assert len(expected) == 8
    assert sorted(p.name for p in dest.glob("shard-*")) == ["shard-000000", "shard-000001"]
    loaded = datasets.load_dataset("imagefolder", data_dir=str(dest), split="train", cache_dir=str(tmp / "hf"))
    # datasets does not promise the folders' order: compare by key.
    by_key = {sample["key"]: sample for sample in loaded}
    assert sorted(by_key) == sorted(sample_key(row[C.ID], 0) for row in expected)
    for row in expected:
        sample = by_key[sample_key(row[C.ID], 0)]
        assert np.array_equal(np.asarray(sample["image"].convert("RGB")), pixels(row[C.IMAGE]["bytes"]))
        assert (sample["prompt"], sample["object"], sample["seed"]) == (row[C.PROMPT], row["object"], row[C.SEED])
        assert sample["clip_score"] == pytest.approx(row[C.CLIP_SCORE], abs=0)


# ---------------------------------------------------------------- object stores

BUCKET = "genbatch-export"


@pytest.mark.slow
def test_a_run_on_s3_exports_to_s3_with_the_bytes_of_a_local_export(s3_server, tmp_path, capsys):
    s3 = s3_server
    s3.create_bucket(Bucket=BUCKET)
    run = fake_run(tmp_path / "run", [png(i % 5) for i in range(7)], shard_size=3)
    for path in sorted(run.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), BUCKET, f"runs/a/{path.relative_to(run).as_posix()}")
    options = ["--format", "webdataset", "--shard-size", "2", "--dedup", "--where", "category == 'cat' or seed > 3"]
    assert export(str(run), "-o", str(tmp_path / "local"), *options) == 0
    assert export(f"s3://{BUCKET}/runs/a", "-o", f"s3://{BUCKET}/exports/a/", *options) == 0
    local = tree_bytes(tmp_path / "local")
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="exports/a/")["Contents"]
    keys = sorted(item["Key"] for item in listed if not item["Key"].endswith("/"))
    assert keys == sorted(f"exports/a/{name}" for name in [*local, "stats.json"])
    for name, data in local.items():
        assert s3.get_object(Bucket=BUCKET, Key=f"exports/a/{name}")["Body"].read() == data, name
    # A rerun finds every shard complete on the bucket and rewrites none.
    capsys.readouterr()
    assert export(f"s3://{BUCKET}/runs/a", "-o", f"s3://{BUCKET}/exports/a", *options) == 0
    assert (
        "4 of 7 rows (2 filtered, 1 duplicates) in 2 webdataset shards, 2 already complete" in capsys.readouterr().out
    )


def test_the_digest_set_keeps_exactly_the_first_of_each_digest():
    from jobs.export.digests import DigestSet

    rng = np.random.default_rng(5)
    pool = [rng.bytes(32) for _ in range(300)] + [b"\x00" * 32, b"\x00" * 31 + b"\x01", b"\x01" + b"\x00" * 31]
    stream = [pool[i] for i in rng.integers(0, len(pool), 2000)]
    digests, seen, expected = DigestSet(flush_at=37), set(), []
    got = []
    for start in range(0, len(stream), 64):
        got += digests.first_seen(stream[start : start + 64])
    for digest in stream:
        expected.append(digest not in seen)
        seen.add(digest)
    assert got == expected
    assert len(digests) == len(seen)


def test_images_are_read_only_for_kept_rows_of_shards_still_to_write(tmp_path, monkeypatch):
    from jobs.export import source

    run = fake_run(tmp_path / "run", [png(i) for i in range(12)], shard_size=4)  # 3 files, a row group each
    read = []
    images = source.Selection.images

    def counted(self):
        read.append((Path(self.file).name, self.group, self.positions.to_pylist()))
        return images(self)

    monkeypatch.setattr(source.Selection, "images", counted)
    dest = str(tmp_path / "wds")
    assert export(str(run), "--format", "webdataset", "-o", dest, "--where", "seed >= 9 or seed == 1") == 0
    assert read == [("shard-00000.parquet", 0, [1]), ("shard-00002.parquet", 0, [1, 2, 3])]
    read.clear()
    assert export(str(run), "--format", "webdataset", "-o", dest, "--where", "seed >= 9 or seed == 1") == 0
    assert read == []  # every shard is complete: no image is read again
