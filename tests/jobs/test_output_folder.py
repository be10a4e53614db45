"""One job per output folder, proven from the shard files themselves; library versions are part of a resume's check."""

from __future__ import annotations

import json
import re
import shutil
from importlib import metadata

import pyarrow.parquet as pq
import pytest

from jobs.cli.main import main
from jobs.errors import OutputError
from jobs.inputs.manifest import _find_remote_files, find_manifest_files
from jobs.runfolder.versions import VersionGuard, version_changes
from tests.conftest import read_output, write_config, write_manifest
from workers.io.provenance import pixel_versions
from workers.tasks import WorkerInfo

IDS = [f"r{i}" for i in range(8)]
OTHER_JOB = "f" * 64  # a job key no job here has


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("output-folder")


@pytest.fixture(scope="module")
def manifest(workdir):
    return write_manifest(workdir / "prompts.parquet", {"id": IDS, "prompt": [f"a picture of {i}" for i in IDS]})


def config_for(workdir, manifest, name, variant="", **sections):
    """A job of 8 rows in shards of 4 (unless `shard_size` says otherwise) writing to `workdir/name`."""
    sections = {"generation": {"steps": 1}, "shard_size": 4, **sections}
    return write_config(workdir / f"{name}-{variant}.yaml", manifest, workdir / name, **sections)


@pytest.fixture(scope="module")
def finished(workdir, manifest, ray_session):
    """One finished run (2 shards of 4 rows); tests derive their folders from copies of it."""
    assert main(["run", str(config_for(workdir, manifest, "finished")), "--quiet"]) == 0
    return workdir / "finished"


def copy_of(finished, name):
    output = finished.parent / name
    shutil.copytree(finished, output)
    return output


def written(output):
    """Every file genbatch may write and its modification time (the run lock is not output)."""
    return {
        p.relative_to(output).as_posix(): p.stat().st_mtime_ns
        for p in output.rglob("*")
        if p.is_file() and p.name != ".genbatch.lock"
    }


def footer_of(path) -> dict:
    return json.loads(pq.read_schema(path).metadata[b"genbatch"])


def rewrite_footer(path, **changes) -> None:
    table = pq.read_table(path)
    footer = {**json.loads(table.schema.metadata[b"genbatch"]), **changes}
    pq.write_table(
        table.replace_schema_metadata({**table.schema.metadata, b"genbatch": json.dumps(footer).encode()}), path
    )


def errors(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def status_of(output, capsys) -> dict:
    assert main(["status", str(output), "--log-format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def report_of(output, capsys, *options: str) -> dict:
    assert main(["report", str(output), *options]) == 0
    capsys.readouterr()
    return json.loads((output / "report" / "report.json").read_text())


def test_a_lost_job_json_does_not_let_another_job_in(workdir, manifest, finished, capsys):
    output = copy_of(finished, "reshard")
    (output / "job.json").unlink()
    before = written(output)
    # Shards of 2 rows: the files of shards 0 and 1 exist, but hold 4 rows of the other job each.
    config = config_for(workdir, manifest, "reshard", shard_size=2)
    assert main(["run", str(config), "--quiet"]) == 2
    assert errors(capsys) == [
        f"genbatch: error: {output}/data: 2 shard files are not part of this job: shard-00000.parquet (another job), "
        "shard-00001.parquet (another job); rerun with --overwrite to replace them, or choose another output folder"
    ]
    # One shard of 8 rows: shard 1's file is one this job never plans.
    bigger = config_for(workdir, manifest, "reshard", "bigger", shard_size=8)
    assert main(["run", str(bigger), "--quiet"]) == 2
    assert errors(capsys) == [
        f"genbatch: error: {output}/data: 2 shard files are not part of this job: shard-00000.parquet (another job), "
        "shard-00001.parquet (not planned: this job has 1 shards); rerun with --overwrite to replace them, "
        "or choose another output folder"
    ]
    assert written(output) == before  # nothing written, not even job.json

    assert main(["run", str(config), "--quiet", "--overwrite"]) == 0
    assert read_output(output).column("id").to_pylist() == IDS  # each id once
    assert sorted(p.name for p in (output / "data").iterdir()) == [f"shard-0000{i}.parquet" for i in range(4)]


def test_files_that_are_not_the_jobs_are_refused_by_a_run_and_never_counted(workdir, manifest, finished, capsys):
    output = copy_of(finished, "strays")
    # Mid-job, as a killed run left it, with two strays: a copy of shard 0 under a name this job never
    # plans, and another job's shard 1 (its file and its stats) where this job's would go.
    record = json.loads((output / "job.json").read_text())
    (output / "job.json").write_text(json.dumps({**record, "status": "running", "counts": None}))
    shutil.copy(output / "data" / "shard-00000.parquet", output / "data" / "shard-00099.parquet")
    stats = json.loads((output / "stats" / "shard-00000.json").read_text())
    (output / "stats" / "shard-00099.json").write_text(json.dumps({**stats, "shard": 99}))
    rewrite_footer(output / "data" / "shard-00001.parquet", job_key=OTHER_JOB)
    stats = json.loads((output / "stats" / "shard-00001.json").read_text())
    (output / "stats" / "shard-00001.json").write_text(json.dumps({**stats, "job_key": OTHER_JOB}))
    before = written(output)

    assert main(["run", str(config_for(workdir, manifest, "strays")), "--quiet"]) == 2
    assert errors(capsys) == [
        f"genbatch: error: {output}/data: 2 shard files are not part of this job: shard-00001.parquet (another job), "
        "shard-00099.parquet (not planned: this job has 2 shards); rerun with --overwrite to replace them, "
        "or choose another output folder"
    ]
    assert written(output) == before

    status = status_of(output, capsys)
    assert (status["state"], status["rows_done"], status["ok"], status["shards_done"]) == ("stopped", 4, 4, 1)
    assert [(w["shards"], w["generated"]) for w in status["workers"]] == [(1, 4)]
    assert main(["report", str(output)]) == 2  # shard 1's rows are the job's, but the file is not: not silently
    assert errors(capsys) == [
        f"genbatch: error: {output}: 1 of 2 shards cannot be read as this job's: shard-00001.parquet (another "
        "job's, e.g. a rescore not finished); finish the rescore, or rerun with --partial to go on without their rows"
    ]
    report = report_of(output, capsys, "--partial")
    assert (report["rows"], report["ok"], report["clip_score"]["n"]) == (4, 4, 4)


def test_stats_from_before_job_keys_count_only_with_their_jobs_shard(finished, capsys):
    output = copy_of(finished, "old-stats")
    for index in (0, 1):
        path = output / "stats" / f"shard-0000{index}.json"
        stats = json.loads(path.read_text())
        del stats["job_key"]  # as genbatch wrote them before it kept the key
        path.write_text(json.dumps(stats))
    rewrite_footer(output / "data" / "shard-00001.parquet", job_key=OTHER_JOB)
    assert status_of(output, capsys)["shards_done"] == 1


def test_a_lost_job_json_is_rebuilt_from_the_jobs_complete_shards(workdir, manifest, finished, capsys):
    output = copy_of(finished, "lost-record")
    (output / "job.json").unlink()
    shards = {name: mtime for name, mtime in written(output).items() if name.startswith("data/")}
    assert main(["run", str(config_for(workdir, manifest, "lost-record")), "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "genbatch: nothing to do: all 2 shards are complete (8 ok, 0 failed of 8 rows)"
    )
    assert {name: mtime for name, mtime in written(output).items() if name.startswith("data/")} == shards
    record = json.loads((output / "job.json").read_text())
    original = json.loads((finished / "job.json").read_text())
    assert record["identity"] == original["identity"] and record["shards"] == 2
    assert (record["status"], record["counts"]["ok"], record["counts"]["failed"]) == ("finished", 8, 0)
    assert record["pixel_versions"] == original["pixel_versions"]

    status = status_of(output, capsys)
    assert (status["state"], status["rows_done"], status["ok"], status["shards_done"]) == ("finished", 8, 8, 2)
    assert report_of(output, capsys)["rows"] == 8


def test_a_run_killed_after_its_last_shard_is_recorded_finished_by_the_rerun(workdir, manifest, finished, capsys):
    output = copy_of(finished, "killed-at-the-end")
    record = json.loads((finished / "job.json").read_text())
    (output / "job.json").write_text(json.dumps({**record, "status": "running", "finished_at": None, "counts": None}))
    assert main(["run", str(config_for(workdir, manifest, "killed-at-the-end")), "--quiet"]) == 0
    rewritten = json.loads((output / "job.json").read_text())
    assert (rewritten["status"], rewritten["counts"]["ok"]) == ("finished", 8)
    assert rewritten["started_at"] == record["started_at"]


@pytest.mark.slow  # whole jobs, one or more per case
@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("not JSON", "unreadable (Expecting value: line 1 column 1 (char 0))"),
        ("[]", "not a genbatch job record"),
        ('{"identity": 5}', "not a genbatch job record"),
        ("a folder", "not a file"),
    ],
)
def test_a_corrupt_job_json_is_one_line_and_overwrite_starts_over(workdir, manifest, finished, capsys, kind, message):
    name = "corrupt-" + re.sub(r"\W+", "-", kind).strip("-")
    output = copy_of(finished, name)
    job_file = output / "job.json"
    job_file.unlink()
    if kind == "a folder":
        job_file.mkdir()
    else:
        job_file.write_text("not JSON" if kind == "not JSON" else kind)
    config = config_for(workdir, manifest, name)
    assert main(["run", str(config), "--quiet"]) == 2
    assert errors(capsys) == [f"genbatch: error: {job_file}: {message}; rerun with --overwrite to start over"]

    assert main(["run", str(config), "--quiet", "--overwrite"]) == 0
    assert read_output(output).column("id").to_pylist() == IDS
    assert json.loads(job_file.read_text())["status"] == "finished"


@pytest.mark.slow  # whole jobs, one or more per case
@pytest.mark.parametrize("failure", ["empty model folder", "no node can host a worker"])
def test_a_run_that_ends_before_any_shard_leaves_a_folder_any_job_can_use(workdir, manifest, capsys, failure):
    name = "no-shard-" + failure.replace(" ", "-")
    if failure == "empty model folder":
        empty = workdir / "not-a-model"
        empty.mkdir(exist_ok=True)
        broken = config_for(workdir, manifest, name, model={"id": str(empty)})
        expected = "genbatch: error: no worker could load the models: "
    else:
        broken = config_for(workdir, manifest, name, resources={"cpus_per_worker": 64})
        expected = "genbatch: error: resources: no Ray node can host a worker needing 64 CPU and 0 GPU"
    assert main(["run", str(broken), "--quiet"]) == 2
    assert errors(capsys)[-1].startswith(expected)
    output = workdir / name
    assert not list((output / "data").glob("*.parquet"))
    # The next run, of the corrected job or of any other, is no resume: nothing in the folder is a job's.
    corrected = config_for(workdir, manifest, name, "corrected", seed=1)
    assert main(["run", str(corrected), "--quiet"]) == 0
    assert read_output(output).column("id").to_pylist() == IDS
    record = json.loads((output / "job.json").read_text())
    assert (record["status"], record["identity"]["seed"], record["identity"]["model"]["id"]) == ("finished", 1, "tiny")
    assert record["resumed_at"] is None


@pytest.mark.slow  # whole jobs, one or more per case
def test_an_output_folder_inside_the_manifest_folder_is_not_read_as_manifest(workdir, ray_session, capsys):
    folder = workdir / "inside"
    write_manifest(folder / "prompts.parquet", {"id": IDS, "prompt": [f"a picture of {i}" for i in IDS]})
    config = write_config(workdir / "inside.yaml", folder, folder / "out", generation={"steps": 1})
    assert main(["run", str(config), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["run", str(config), "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "genbatch: nothing to do: all 2 shards are complete (8 ok, 0 failed of 8 rows)"
    )
    assert json.loads((folder / "out" / "job.json").read_text())["manifest"]["files"] == [
        {"path": str(folder / "prompts.parquet"), "rows": 8}
    ]


def test_manifest_discovery_skips_output_folders_below_the_manifest_folder(tmp_path):
    for name in ["a.parquet", "sub/b.parquet", "out/job.json", "out/data/shard-00000.parquet"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    for name in [
        "killed/.genbatch.lock",
        "killed/data/shard-00000.parquet",
        "sub/deep/out/job.json",
        "sub/deep/out/x.parquet",
    ]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert find_manifest_files(str(tmp_path)) == [str(tmp_path / "a.parquet"), str(tmp_path / "sub" / "b.parquet")]
    # The folder asked for is read even if it is an output folder itself (a run's output as a manifest).
    assert find_manifest_files(str(tmp_path / "out")) == [str(tmp_path / "out" / "data" / "shard-00000.parquet")]


@pytest.mark.slow  # moto's S3 server
def test_remote_manifest_discovery_skips_output_prefixes(s3_server):
    bucket = "genbatch-output-folder-test"
    s3_server.create_bucket(Bucket=bucket)
    for key in [
        "m/a.parquet",
        "m/sub/b.parquet",
        "m/out/job.json",
        "m/out/data/shard-00000.parquet",
        "m/outer.parquet",
    ]:
        s3_server.put_object(Bucket=bucket, Key=key, Body=b"")
    assert _find_remote_files(f"s3://{bucket}/m") == [
        f"s3://{bucket}/m/a.parquet",
        f"s3://{bucket}/m/outer.parquet",
        f"s3://{bucket}/m/sub/b.parquet",
    ]
    assert _find_remote_files(f"s3://{bucket}/m/out/") == [f"s3://{bucket}/m/out/data/shard-00000.parquet"]


@pytest.mark.slow  # whole jobs, one or more per case
def test_a_resume_under_other_library_versions_is_refused_unless_allowed(workdir, manifest, finished, capsys):
    output = copy_of(finished, "upgraded")
    installed = pixel_versions()
    old = {**installed, "diffusers": "0.0.1"}
    for path in (output / "data").glob("shard-*.parquet"):
        rewrite_footer(path, versions=old)
    (output / "data" / "shard-00001.parquet").unlink()
    (output / "stats" / "shard-00001.json").unlink()
    before = {name: mtime for name, mtime in written(output).items() if name != "job.json"}
    config = config_for(workdir, manifest, "upgraded")

    assert main(["run", str(config), "--quiet"]) == 2
    (line,) = [line for line in errors(capsys) if line.startswith("genbatch:")]
    assert re.fullmatch(
        rf"genbatch: error: {re.escape(str(output))}: worker-0@\S+ runs other library versions than its shards were "
        rf"made with \(diffusers 0\.0\.1 -> {re.escape(metadata.version('diffusers'))}\); rerun with "
        r"--allow-version-change to mix them in one dataset \(job\.json records both\), or --overwrite to start over",
        line,
    ), line
    assert {name: mtime for name, mtime in written(output).items() if name != "job.json"} == before

    assert main(["run", str(config), "--quiet", "--allow-version-change"]) == 0
    assert read_output(output).column("id").to_pylist() == IDS
    new = footer_of(output / "data" / "shard-00001.parquet")
    assert (new["versions"], new["device"]) == (installed, "cpu")
    assert footer_of(output / "data" / "shard-00000.parquet")["versions"] == old
    assert json.loads((output / "job.json").read_text())["pixel_versions"] == [old, installed]


def test_footers_record_the_versions_and_the_device(finished):
    for path in sorted((finished / "data").glob("shard-*.parquet")):
        footer = footer_of(path)
        assert (footer["versions"], footer["device"]) == (pixel_versions(), "cpu")
    assert json.loads((finished / "job.json").read_text())["pixel_versions"] == [pixel_versions()]


def test_version_changes_name_each_package_that_differs():
    before = {"diffusers": "0.42.1", "torch": "2.4.0", "transformers": None}
    assert version_changes(before, {**before, "diffusers": "0.43.0"}) == ["diffusers 0.42.1 -> 0.43.0"]
    assert version_changes(before, {**before, "torch": "2.5.0", "transformers": "4.44.0"}) == [
        "torch 2.4.0 -> 2.5.0",
        "transformers not installed -> 4.44.0",
    ]
    assert version_changes(before, {"diffusers": "0.42.1", "torch": "2.4.0"}) == [
        "transformers not installed -> not recorded"
    ]
    assert version_changes(before, dict(before)) == []
    assert version_changes(None, {"torch": "2.4.0", "diffusers": "0.42.1"}) == [
        "versions not recorded -> diffusers 0.42.1, torch 2.4.0"
    ]
    assert version_changes({"torch": "2.4.0"}, None) == ["torch 2.4.0 -> versions not recorded"]


def worker(name: str, versions: dict | None) -> WorkerInfo:
    return WorkerInfo(name, "cpu", "float32", "ddim", 0.0, 1, "node", versions=versions)


def test_the_version_guard_refuses_other_versions_than_the_shards_or_the_first_worker():
    v1, v2 = {"diffusers": "0.42.1"}, {"diffusers": "0.43.0"}
    guard = VersionGuard("out", [v1], allow_change=False)
    guard.check(worker("worker-0@a", v1))
    with pytest.raises(
        OutputError,
        match=r"^out: worker-1@b runs other library versions than its shards were made "
        r"with \(diffusers 0\.42\.1 -> 0\.43\.0\); rerun with --allow-version-change",
    ):
        guard.check(worker("worker-1@b", v2))
    fresh = VersionGuard("out", [], allow_change=False)
    fresh.check(worker("worker-0@a", v2))  # the first worker decides a new job's versions
    with pytest.raises(OutputError, match=r"than the job's first worker \(diffusers 0\.43\.0 -> 0\.42\.1\)"):
        fresh.check(worker("worker-1@b", v1))
    allowed = VersionGuard("out", [v1], allow_change=True)
    allowed.check(worker("worker-0@a", v2))
    allowed.check(worker("worker-1@b", v2))
    assert allowed.seen == [v1, v2]
