"""What an operator sees: JSON logs for batch systems, per-shard stats, `genbatch status`, the summary in job.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta

import pyarrow.parquet as pq
import pytest

from jobs.cli.main import main
from jobs.runfolder.lock import OutputLock
from jobs.runfolder.status import job_status
from tests.conftest import write_config, write_manifest

PROMPTS = {"id": [f"q{i}" for i in range(7)], "prompt": [f"an operator's picture {i}" for i in range(7)]}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ray_session):
    tmp_path = tmp_path_factory.mktemp("operator")
    manifest = write_manifest(tmp_path / "p.parquet", PROMPTS)
    output = tmp_path / "out"
    config = write_config(tmp_path / "job.yaml", manifest, output, shard_size=3)  # shards of 3, 3, 1 rows
    assert main(["run", str(config), "--quiet"]) == 0
    return output


@pytest.mark.slow  # a CLI process of its own: its own actors (which load no model: tests.helpers.stub_worker)
def test_json_logs_put_one_json_object_on_every_line(tmp_path, session_address):
    manifest = write_manifest(tmp_path / "p.parquet", {"prompt": ["a", "b", "c", "d", "e"]})
    config = write_config(tmp_path / "job.yaml", manifest, tmp_path / "out", generation={"steps": 1})
    command = ["run", str(config), "--log-format", "json", "--address", session_address]
    result = subprocess.run(
        [sys.executable, "-m", "tests.helpers.stub_worker", *command],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]  # raises on any line that is not JSON
    assert [(r["event"], r["message"]) for r in records[:2]] == [
        ("startup", f"connecting to Ray at {session_address}"),
        ("startup", "loading tiny on 1 worker"),
    ]
    (ready,) = [r for r in records if r.get("event") == "worker_ready"]
    assert ready["worker"].startswith("worker-0@") and ready["device"] == "cpu" and ready["load_seconds"] > 0
    assert ready["message"] == f"{ready['worker']} ready in {ready['load_seconds']:.1f} s on cpu"
    progress = [r for r in records if r.get("event") == "progress"]
    assert progress and progress[-1]["rows_done"] == 5 and progress[-1]["rows_total"] == 5
    assert {"images_per_s", "eta_seconds", "failed", "workers_ready", "time", "level"} <= set(progress[-1])
    (summary,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert summary["event"] == "summary"
    assert (summary["rows"], summary["ok"], summary["failed"], summary["shards"], summary["exit_code"]) == (
        5,
        5,
        0,
        2,
        0,
    )


@pytest.mark.slow  # a CLI process and a Ray instance of its own (actors of tests.helpers.stub_worker)
def test_json_logs_of_a_new_local_ray_instance_hold_no_line_of_ray_s_own(tmp_path):
    manifest = write_manifest(tmp_path / "p.parquet", {"prompt": ["a", "b"]})
    config = write_config(tmp_path / "job.yaml", manifest, tmp_path / "out", generation={"steps": 1})
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    result = subprocess.run(
        [sys.executable, "-m", "tests.helpers.stub_worker", "run", str(config), "--log-format", "json"],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": os.getcwd()},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]  # raises on any line that is not JSON
    assert records[0]["message"] == "starting Ray"
    assert [r["level"] for r in records] == ["INFO"] * len(records)  # Ray's start-up warnings are gone
    assert json.loads(result.stdout)["ok"] == 2


def test_json_errors_are_json_too(tmp_path, capsys):
    config = write_config(tmp_path / "job.yaml", tmp_path / "missing.parquet", tmp_path / "out")
    assert main(["run", str(config), "--log-format", "json"]) == 2
    error = json.loads(capsys.readouterr().err)
    assert error == {
        "event": "error",
        "message": f"error: {tmp_path / 'missing.parquet'}: manifest not found",
        "exit_code": 2,
    }


def test_every_shard_leaves_stats_that_match_its_file(finished):
    files = sorted((finished / "data").glob("shard-*.parquet"))
    stats = [json.loads(p.read_text()) for p in sorted((finished / "stats").glob("shard-*.json"))]
    assert [s["shard"] for s in stats] == [0, 1, 2]
    for file, record in zip(files, stats):
        table = pq.read_table(file)
        assert (record["rows"], record["ok"], record["failed"], record["generated"]) == (table.num_rows,) * 2 + (
            0,
            table.num_rows,
        )
        assert {record["worker"]} == set(table.column("worker").to_pylist())
        assert record["node_ip"] == "127.0.0.1" and len(record["node"]) == 56  # Ray node ids are 28 bytes, hex
        assert record["images_per_s"] == pytest.approx(record["generated"] / record["seconds"], rel=1e-2)
    job = json.loads((finished / "job.json").read_text())
    assert job["status"] == "finished"
    assert job["counts"]["ok"] == 7 and job["counts"]["shards"] == 3 and job["images_per_s"] > 0


def test_status_of_a_finished_job(finished, capsys):
    assert main(["status", str(finished)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("job:      finished (started ")
    assert lines[1] == "rows:     7 / 7 done (100.0%): 7 ok, 0 failed"
    assert lines[2] == "shards:   3 / 3 written"
    assert main(["status", str(finished), "--log-format", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert (status["state"], status["rows_done"], status["shards_done"], status["eta_seconds"]) == (
        "finished",
        7,
        3,
        None,
    )
    assert sum(w["generated"] for w in status["workers"]) == 7


def test_job_json_and_status_say_how_each_worker_started(finished, capsys):
    (worker,) = json.loads((finished / "job.json").read_text())["workers"]
    compiled = (worker["compile"], worker["compile_reason"], worker["compile_cache_hit"])
    assert compiled == (False, "off: auto compiles on GPUs only, this actor runs on cpu", None)
    assert 0 < worker["first_batch_seconds"] < worker["first_image_seconds"]
    assert 0 < worker["load_seconds"] < worker["first_image_seconds"]  # first images come after loading
    assert main(["status", str(finished)]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = lines.index("start-up: name, device, load s, compile, first micro-batch s, first image s")
    seconds = [f"{worker[key]:.1f}" for key in ("load_seconds", "first_batch_seconds", "first_image_seconds")]
    assert lines[at + 1].split() == [worker["name"], "cpu", seconds[0], "off", *seconds[1:]]
    assert main(["status", str(finished), "--log-format", "json"]) == 0
    (startup,) = json.loads(capsys.readouterr().out)["startup"]
    assert startup == {
        "worker": worker["name"],
        "device": "cpu",
        "load_seconds": worker["load_seconds"],
        "compile": False,
        "compile_cache_hit": None,
        "first_batch_seconds": worker["first_batch_seconds"],
        "first_image_seconds": worker["first_image_seconds"],
    }


def test_status_tells_a_live_run_from_a_killed_one(finished, tmp_path):
    # The same folder as it looked mid-job: job.json says running, the last shard is not written yet.
    import shutil

    output = tmp_path / "midway"
    shutil.copytree(finished, output)
    record = json.loads((output / "job.json").read_text())
    record.update(status="running", finished_at=None, counts=None, resumed_at=None)
    (output / "job.json").write_text(json.dumps(record))
    (output / "stats" / "shard-00002.json").unlink()
    (output / "data" / "shard-00002.parquet").unlink()

    stopped = job_status(str(output))
    assert (stopped.state, stopped.rows_done, stopped.shards_done, stopped.eta_seconds) == ("stopped", 6, 2, None)

    started = datetime.fromisoformat(record["started_at"])
    shard_times = [json.loads(p.read_text())["finished_at"] for p in (output / "stats").glob("*.json")]
    now = max(datetime.fromisoformat(t) for t in shard_times) + timedelta(seconds=1)
    with OutputLock(output):  # a live run holds the lock
        live = job_status(str(output), now=now)
    rate = 6 / (now - started).total_seconds()
    assert live.state == "running"
    assert live.images_per_s == pytest.approx(rate)
    assert live.eta_seconds == pytest.approx(1 / rate)


def test_status_of_a_folder_without_a_job_is_a_one_line_error(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"genbatch: error: {tmp_path}: no job.json here; is this a genbatch output folder?"
    )
