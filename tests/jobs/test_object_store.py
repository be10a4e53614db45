"""Manifests and outputs on an S3-compatible server (moto, on loopback), through the same client code users run."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.cli.main import main
from tests.conftest import read_output, write_config, write_manifest
from tests.helpers.runs import make_run

pytestmark = pytest.mark.slow  # moto's S3 server and whole jobs against it

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
    published = [
        "runs/a/data/shard-00000.parquet",
        "runs/a/data/shard-00001.parquet",
        "runs/a/job.json",
        "runs/a/stats/shard-00000.json",
        "runs/a/stats/shard-00001.json",
    ]
    assert keys(s3, "runs/a/") == published

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
    assert keys(s3, "runs/a/") == published
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


def upload_folder(s3, folder, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")


def without_volatile(report: dict) -> dict:
    """A report's figures without when it was made and where the run lives."""
    return {**report, "generated_at": None, "settings": {**report["settings"], "run": None}}


def test_report_and_compare_read_runs_on_s3_and_write_there(bucket, tmp_path, capsys):
    s3, _ = bucket
    scores = [float(x) for x in np.random.default_rng(3).normal(25, 4, 30).astype(np.float32)]
    local = make_run(tmp_path / "run", scores, failed={4})
    upload_folder(s3, local, "reports/run")
    remote = f"s3://{BUCKET}/reports/run"

    assert main(["report", remote + "/"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"genbatch: report: {remote}/report/report.html (also report.md, report.json)"
    )
    assert keys(s3, "reports/run/report/") == [
        "reports/run/report/report.html",
        "reports/run/report/report.json",
        "reports/run/report/report.md",
    ]
    assert main(["report", str(local)]) == 0
    got = json.loads(s3.get_object(Bucket=BUCKET, Key="reports/run/report/report.json")["Body"].read())
    expected = json.loads((local / "report" / "report.json").read_text())
    assert got["settings"]["run"] == remote
    assert without_volatile(got) == without_volatile(expected)
    assert (got["rows"], got["ok"], got["failed"]) == (30, 29, 1)
    html = s3.get_object(Bucket=BUCKET, Key="reports/run/report/report.html")["Body"].read().decode()
    assert html.count("data:image/png;base64,") == (local / "report" / "report.html").read_text().count(
        "data:image/png;base64,"
    )

    # A local run against its copy on S3: every scored id pairs up, with no difference.
    capsys.readouterr()
    assert main(["compare", str(local), remote]) == 0
    assert capsys.readouterr().out.strip() == (
        f"genbatch: comparison: {remote}/compare/compare.html (also compare.md, compare.json)"
    )
    comparison = json.loads(s3.get_object(Bucket=BUCKET, Key="reports/run/compare/compare.json")["Body"].read())
    assert comparison["pairs"] == 29
    assert comparison["mean_delta"] == 0.0
    assert comparison["unpaired_rows"] == {"a": 1, "b": 1}
    assert comparison["run_b"]["run"] == remote


def test_report_of_a_prefix_without_a_run_is_a_one_line_error(bucket, capsys):
    assert main(["report", f"s3://{BUCKET}/no-run-here"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"genbatch: error: s3://{BUCKET}/no-run-here: not a genbatch run folder (no job.json)"
    )
