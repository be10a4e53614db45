"""Resume, retries and failures: nothing lost, nothing duplicated, every failure visible."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from jobs.cli.main import main
from jobs.pool.dispatch import JobHooks
from jobs.runfolder.lock import OutputLock
from tests.conftest import read_output, write_config, write_manifest
from tests.helpers.stub_worker import WritingStubWorker as Stub

ROWS = 24
GENERATION = {"steps": 3, "guidance_scale": 7.5, "width": 32, "height": 32}
RESOURCES = {"workers": 1, "gpus_per_worker": 0, "cpus_per_worker": 1, "batch_size": 2}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("resume")


@pytest.fixture(scope="module")
def manifest(workdir):
    return write_manifest(
        workdir / "prompts.parquet",
        {"id": [f"row-{i:02d}" for i in range(ROWS)], "prompt": [f"a picture of thing {i}" for i in range(ROWS)]},
    )


def config_for(workdir, manifest, name, **overrides):
    sections = {"generation": GENERATION, "resources": RESOURCES, "shard_size": 4, **overrides}
    return write_config(workdir / f"{name}.yaml", manifest, workdir / name, **sections)


@pytest.fixture(scope="module")
def reference(workdir, manifest, ray_session):
    """An uninterrupted run: what every recovered run must equal, image for image."""
    assert main(["run", str(config_for(workdir, manifest, "reference")), "--quiet"]) == 0
    return read_output(workdir / "reference")


@pytest.fixture(scope="module")
def stub_reference(workdir, manifest, ray_session):
    """An uninterrupted run on actors that load no model (tests.helpers.stub_worker), for the tests of how the driver
    handles a killed process: each kill costs a new actor, which takes seconds to start, not ten."""
    from jobs.config.schema import load_config
    from jobs.run.driver import run_job

    summary = run_job(load_config(config_for(workdir, manifest, "stub-reference")), progress="off", worker_class=Stub)
    assert summary.exit_code == 0
    return read_output(workdir / "stub-reference")


def assert_same_output(output, reference):
    table = read_output(output)
    assert table.column("id").to_pylist() == reference.column("id").to_pylist()  # each id once, in order
    assert table.column("status").to_pylist() == ["ok"] * ROWS
    assert table.column("image_sha256").to_pylist() == reference.column("image_sha256").to_pylist()
    assert table.column("image").equals(reference.column("image"))
    assert sorted(p.name for p in (output / "data").iterdir()) == [f"shard-{i:05d}.parquet" for i in range(6)]


@pytest.mark.slow  # kills processes, retries whole shards
def test_kill_9_of_the_driver_then_a_rerun_equals_an_uninterrupted_run(
    workdir, manifest, stub_reference, session_address, monkeypatch
):
    """On actors that load no model (tests.helpers.stub_worker), here and in the killed CLI: what is tested is the
    driver's."""
    from jobs.run import driver

    monkeypatch.setattr(driver, "run_job", functools.partial(driver.run_job, worker_class=Stub))
    config = config_for(workdir, manifest, "killed")
    output = workdir / "killed"
    command = ["run", str(config), "--quiet", "--address", session_address]
    cli = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.stub_worker", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, killed whole below
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    deadline = time.monotonic() + 120
    while len(list((output / "data").glob("shard-*.parquet"))) < 2:
        assert cli.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    os.killpg(cli.pid, signal.SIGKILL)
    cli.wait()
    done_before = len(list((output / "data").glob("shard-*.parquet")))
    assert done_before < 6, "the kill came too late to test anything"
    assert json.loads((output / "job.json").read_text())["status"] == "running"
    # The rerun redoes only what is missing and ends with exactly the uninterrupted output.
    assert main(["run", str(config), "--quiet"]) == 0
    assert_same_output(output, stub_reference)
    counts = json.loads((output / "job.json").read_text())["counts"]
    assert counts["shards_run"] == 6 - done_before and counts["ok"] == ROWS


@pytest.mark.slow  # kills processes, retries whole shards
def test_an_actor_killed_mid_shard_is_replaced_and_its_shard_retried(workdir, manifest, stub_reference):
    from jobs.config.schema import load_config
    from jobs.run.driver import run_job

    pids, kills = [], []

    def kill_first_worker_once(rows, failed):
        if not kills and pids:
            kills.append(pids[0])
            os.kill(pids[0], signal.SIGKILL)

    hooks = JobHooks(on_progress=kill_first_worker_once, on_worker_ready=lambda info: pids.append(info.pid))
    config = load_config(config_for(workdir, manifest, "actor-killed"))
    summary = run_job(config, progress="off", hooks=hooks, worker_class=Stub)
    assert kills and summary.replaced_workers == 1 and summary.retries >= 1
    assert (summary.ok, summary.failed, summary.exit_code) == (ROWS, 0, 0)
    assert_same_output(workdir / "actor-killed", stub_reference)
    assert len(set(pids)) == 2  # the replacement is a new process


@pytest.mark.slow  # kills processes, retries whole shards
def test_an_actors_death_charges_a_retry_only_to_the_shard_it_was_running(workdir, manifest, ray_session):
    """With no retries allowed, the shard running on a killed actor fails; the one queued behind it does not
    (on actors that load no model, tests.helpers.stub_worker)."""
    from jobs.config.schema import load_config
    from jobs.run.driver import run_job

    pids, kills, finished = [], [], []

    def kill_worker_mid_first_shard(rows, failed):
        if not kills and pids:
            kills.append(pids[0])
            os.kill(pids[0], signal.SIGKILL)

    hooks = JobHooks(
        on_progress=kill_worker_mid_first_shard,
        on_worker_ready=lambda info: pids.append(info.pid),
        on_shard_done=lambda result: finished.append(result.shard),
    )
    config = config_for(workdir, manifest, "no-retries", resources={**RESOURCES, "max_shard_retries": 0})
    summary = run_job(load_config(config), progress="off", hooks=hooks, worker_class=Stub)
    assert (summary.ok, summary.failed, summary.shards_failed, summary.retries) == (ROWS - 4, 4, 1, 0)
    record = json.loads((workdir / "no-retries" / "job.json").read_text())
    assert [failure["shard"] for failure in record["failed_shards"]] == [0]  # shard 1 was queued: requeued, not failed
    assert sorted(finished) == [1, 2, 3, 4, 5]


@pytest.mark.slow  # kills processes, retries whole shards
def test_a_shard_that_keeps_failing_is_recorded_and_the_others_finish(workdir, manifest, reference, capsys):
    config = config_for(workdir, manifest, "blocked", resources={**RESOURCES, "max_shard_retries": 2})
    output = workdir / "blocked"
    # A folder squatting on shard 2's file name: every write of that shard fails.
    (output / "data" / "shard-00002.parquet" / "squatter").mkdir(parents=True)
    assert main(["run", str(config), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("genbatch: done: 20 ok, 4 failed of 24 rows in 6 shards (1 failed)")
    assert "recovered: 2 shard retries" in out
    record = json.loads((output / "job.json").read_text())
    assert record["failed_shards"] == [
        {"shard": 2, "error": f"ShardWriteError: cannot write {output}/data/shard-00002.parquet: Is a directory"}
    ]
    done = read_output_files(output, exclude=2)
    assert done.column("id").to_pylist() == [f"row-{i:02d}" for i in range(ROWS) if not 8 <= i < 12]
    assert not [p for p in (output / "data").iterdir() if p.name.endswith(".tmp")]
    # Once the obstacle is gone, a rerun does only that shard.
    (output / "data" / "shard-00002.parquet" / "squatter").rmdir()
    (output / "data" / "shard-00002.parquet").rmdir()
    assert main(["run", str(config), "--quiet"]) == 0
    assert "in 6 shards, 5 already complete" in capsys.readouterr().out
    assert_same_output(output, reference)


def read_output_files(output, exclude):
    files = sorted(
        p for p in (output / "data").glob("shard-*.parquet") if p.is_file() and p.name != f"shard-{exclude:05d}.parquet"
    )
    return pa.concat_tables([pq.read_table(f) for f in files])


def test_retry_failed_reruns_only_the_error_rows_of_their_shards(workdir, manifest, reference, capsys):
    import shutil

    output = workdir / "retry"
    shutil.copytree(workdir / "reference", output)
    config = config_for(workdir, manifest, "retry")
    # Turn rows 5 and 6 (shard 1) into errors, as a failed run would have left them.
    shard = output / "data" / "shard-00001.parquet"
    table = pq.read_table(shard)
    footer = json.loads(table.schema.metadata[b"genbatch"])
    broken = pa.array([i in (1, 2) for i in range(4)])
    table = table.set_column(
        table.schema.get_field_index("status"), "status", pc.if_else(broken, "error", table["status"])
    )
    table = table.set_column(table.schema.get_field_index("error"), "error", pc.if_else(broken, "boom", table["error"]))
    footer.update(ok=2, failed=2)
    pq.write_table(table.replace_schema_metadata({b"genbatch": json.dumps(footer).encode()}), shard)
    untouched = {p.name: p.stat().st_mtime_ns for p in (output / "data").iterdir() if p.name != shard.name}

    assert main(["run", str(config), "--quiet"]) == 1  # a plain rerun keeps the errors
    assert "nothing to do" in capsys.readouterr().out
    assert main(["run", str(config), "--log-format", "json", "--retry-failed"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert (summary["ok"], summary["failed"], summary["shards"], summary["shards_run"]) == (24, 0, 6, 1)
    # Progress counts the 2 images regenerated, not the 4 of the shard.
    progress = [json.loads(line) for line in captured.err.splitlines() if '"progress"' in line]
    assert (progress[-1]["rows_done"], progress[-1]["rows_total"]) == (2, 2)
    stats = json.loads((output / "stats" / "shard-00001.json").read_text())
    assert stats["generated"] == 2
    assert_same_output(output, reference)
    assert {p.name: p.stat().st_mtime_ns for p in (output / "data").iterdir() if p.name != shard.name} == untouched
    durations = pq.read_table(shard).column("duration_s").to_pylist()
    expected = reference.column("duration_s").to_pylist()[4:8]
    assert (durations[0], durations[3]) == (expected[0], expected[3])  # untouched rows are kept as they were


@pytest.mark.slow  # more whole jobs
def test_a_changed_manifest_is_refused_and_overwrite_starts_over(workdir, manifest, reference, capsys):
    import shutil

    output = workdir / "changed"
    shutil.copytree(workdir / "reference", output)
    changed = write_manifest(workdir / "changed.parquet", pq.read_table(manifest).slice(0, ROWS - 1))
    config = config_for(workdir, changed, "changed")
    assert main(["run", str(config), "--quiet"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("genbatch:")]
    assert err == [
        f"genbatch: error: {output}: holds a job with other settings (manifest contents changed; manifest.rows: "
        f"{ROWS} -> {ROWS - 1}); rerun with --overwrite to replace it, or choose another output folder"
    ]
    assert main(["run", str(config), "--quiet", "--overwrite"]) == 0
    table = read_output(output)
    assert table.num_rows == ROWS - 1 and table.column("id").to_pylist() == [f"row-{i:02d}" for i in range(ROWS - 1)]
    assert sorted(p.name for p in (output / "data").iterdir())[-1] == "shard-00005.parquet"


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_holds_it(workdir, manifest, capsys):
    output = workdir / "locked"
    output.mkdir()
    config = config_for(workdir, manifest, "locked")
    with OutputLock(output):
        assert main(["run", str(config), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"genbatch: error: {output}: another genbatch run (pid {os.getpid()}) is using this output folder" in err
    assert not (output / "data").exists() and not (output / "job.json").exists()


def test_a_crashed_run_does_not_leave_the_lock_stuck(workdir):
    output = workdir / "crashed-lock"
    output.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from jobs.runfolder.lock import OutputLock; l = OutputLock({str(output)!r}).__enter__(); "
            "print('locked', flush=True); import time; time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(Exception, match="another genbatch run"):
        OutputLock(output).__enter__()
    holder.kill()
    holder.wait()
    with OutputLock(output):
        pass


@pytest.mark.slow  # more whole jobs
def test_hostile_ids_never_become_file_names(workdir, ray_session):
    hostile = ["../../escape", "/etc/passwd", "a/b/c", "nul\0byte", "x" * 5000, "", "..", "shard-00000.parquet"]
    manifest = write_manifest(workdir / "hostile.parquet", {"id": hostile, "prompt": ["p"] * len(hostile)})
    output = workdir / "hostile-out"
    config = write_config(workdir / "hostile.yaml", manifest, output, generation={"steps": 1}, shard_size=3)
    before = set(workdir.parent.rglob("*"))
    assert main(["run", str(config), "--quiet"]) == 0
    assert read_output(output).column("id").to_pylist() == hostile
    created = set(workdir.parent.rglob("*")) - before
    assert all(p == output or output in p.parents for p in created), created
    assert sorted(p.relative_to(output).as_posix() for p in created if p != output) == [
        ".genbatch.lock",
        "data",
        "data/shard-00000.parquet",
        "data/shard-00001.parquet",
        "data/shard-00002.parquet",
        "job.json",
        "stats",
        "stats/shard-00000.json",
        "stats/shard-00001.json",
        "stats/shard-00002.json",
    ]
