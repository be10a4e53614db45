"""Manifests and outputs on an S3-compatible server (moto, on loopback), through the same client code users run."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.cli import main
from tests.conftest import read_output, write_config, write_manifest

BUCKET = "genbatch-test"
MANIFEST = {"id": [f"p{i}" for i in range(6)], "prompt": [f"a small picture of thing {i}" for i in range(6)]}


def keys(s3, prefix: str) -> list[str]:
    """Object keys under `prefix`, without the empty `folder/` markers pyarrow leaves when it deletes a temp object."""
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    objects = listed.get("Contents", [])
    assert all(item["Size"] == 0 for item in objects if item["Key"].endswith("/"))
    return sorted(item["Key"] for item in objects if not item["Key"].endswith("/"))


def read_object_table(s3, key: str) -> pa.Table:
    return pq.read_table(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()))


@pytest.fixture(scope="module")
def bucket(s3_server, tmp_path_factory):
    s3_server.create_bucket(Bucket=BUCKET)
    local = write_manifest(tmp_path_factory.mktemp("s3") / "prompts.parquet", MANIFEST)
    s3_server.upload_file(str(local), BUCKET, "manifests/prompts.parquet")
    return s3_server, local


def test_a_job_reads_its_manifest_from_s3_and_writes_its_output_there(bucket, tmp_path, ray_session):
    s3, local_manifest = bucket
    remote = write_config(tmp_path / "s3.yaml", f"s3://{BUCKET}/manifests/prompts.parquet", f"s3://{BUCKET}/runs/a")
    assert main(["run", str(remote), "--quiet"]) == 0
    assert keys(s3, "runs/a/") == [
        "runs/a/data/shard-00000.parquet",
        "runs/a/data/shard-00001.parquet",
        "runs/a/job.json",
        "runs/a/stats/shard-00000.json",
        "runs/a/stats/shard-00001.json",
    ]

    # The same job on local files gives the same rows and the same image bytes.
    reference = write_config(tmp_path / "local.yaml", local_manifest, tmp_path / "local")
    assert main(["run", str(reference), "--quiet"]) == 0
    expected = read_output(tmp_path / "local")
    got = pa.concat_tables([read_object_table(s3, f"runs/a/data/shard-0000{i}.parquet") for i in (0, 1)])
    assert got.column("id").to_pylist() == MANIFEST["id"]
    assert got.column("status").to_pylist() == ["ok"] * 6
    assert got.column("image").to_pylist() == expected.column("image").to_pylist()
    assert got.column("clip_score").to_pylist() == expected.column("clip_score").to_pylist()

    # Resume on S3: a lost shard is redone, a complete one is left alone, a dead writer's temp object is removed.
    before = s3.head_object(Bucket=BUCKET, Key="runs/a/data/shard-00000.parquet")["ETag"]
    s3.delete_object(Bucket=BUCKET, Key="runs/a/data/shard-00001.parquet")
    s3.put_object(Bucket=BUCKET, Key="runs/a/data/.shard-00001.parquet.0123abcd.tmp", Body=b"PAR1 half an upload")
    assert main(["run", str(remote), "--quiet"]) == 0
    assert keys(s3, "runs/a/") == [
        "runs/a/data/shard-00000.parquet",
        "runs/a/data/shard-00001.parquet",
        "runs/a/job.json",
        "runs/a/stats/shard-00000.json",
        "runs/a/stats/shard-00001.json",
    ]
    assert s3.head_object(Bucket=BUCKET, Key="runs/a/data/shard-00000.parquet")["ETag"] == before
    redone = read_object_table(s3, "runs/a/data/shard-00001.parquet")
    assert redone.column("image").to_pylist() == expected.column("image").to_pylist()[4:]


def test_a_missing_manifest_prefix_is_a_one_line_error(bucket, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", f"s3://{BUCKET}/no-such-prefix", f"s3://{BUCKET}/runs/never")
    assert main(["run", str(config), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == f"genbatch: error: s3://{BUCKET}/no-such-prefix: no Parquet files found"
    assert bucket[0].list_objects_v2(Bucket=BUCKET, Prefix="runs/never/").get("Contents") is None


def test_an_output_in_a_missing_bucket_is_a_one_line_error(bucket, tmp_path, capsys):
    manifest = f"s3://{BUCKET}/manifests/prompts.parquet"
    config = write_config(tmp_path / "c.yaml", manifest, "s3://no-such-bucket-here/runs/a")
    assert main(["run", str(config), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (
        "genbatch: error: s3://no-such-bucket-here/runs/a: bucket s3://no-such-bucket-here does not exist"
    )


def test_status_reads_a_job_on_s3(bucket, tmp_path, capsys, ray_session):
    config = write_config(tmp_path / "c.yaml", f"s3://{BUCKET}/manifests/prompts.parquet", f"s3://{BUCKET}/runs/b")
    assert main(["run", str(config), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["status", f"s3://{BUCKET}/runs/b/"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("job:      finished")
    assert lines[1:3] == ["rows:     6 / 6 done (100.0%): 6 ok, 0 failed", "shards:   2 / 2 written"]
