"""SIGTERM and SIGHUP (batch schedulers, hang-ups) stop a job the way Ctrl-C does, at any moment.

Each test runs the CLI in a child process, sends a real signal at start-up or mid-job, and checks the
exit code, the output streams, job.json and that what is on disk is whole and counted exactly. Generation
jobs run on actors that load no model (tests.helpers.stub_worker): what is tested is the driver's handling.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import write_config, write_manifest

pytestmark = pytest.mark.slow
ROWS, SHARD_SIZE = 200, 4


def start_job(tmp_path: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, Path]:
    manifest = write_manifest(tmp_path / "p.parquet", {"prompt": [f"prompt {i}" for i in range(ROWS)]})
    output = tmp_path / "out"
    config = write_config(tmp_path / "job.yaml", manifest, output, shard_size=SHARD_SIZE, generation={"steps": 4})
    return start_cli("run", str(config), "--quiet", *args, env=env, cli="tests.helpers.stub_worker"), output


def start_cli(*args: str, env: dict | None = None, cli: str = "jobs.cli.main") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", cli, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd(), **(env or {})},
        start_new_session=True,  # a signal to the test runner's group must not reach it; its own group, as `setsid`
    )


def own_ray_env() -> dict:
    """The environment of a CLI that starts a Ray instance of its own (no RAY_ADDRESS to join)."""
    return {**{key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}, "RAY_ADDRESS": ""}


@contextmanager
def ended_at_exit(process: subprocess.Popen) -> Iterator[None]:
    """A CLI in a session of its own outlives a failed test: kill it (its Ray instance follows it)."""
    try:
        yield
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def process_group(pgid: int) -> list[int]:
    """The pids of the processes in group `pgid`, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.getpgid(int(entry.name)) == pgid:
                members.append(int(entry.name))
        except ProcessLookupError:  # gone meanwhile
            continue
    return members


def wait_until(process: subprocess.Popen, ready, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)


def job_record(output: Path) -> dict:
    path = output / "job.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def shards_on_disk(output: Path) -> list[Path]:
    return sorted((output / "data").glob("*.parquet")) if (output / "data").is_dir() else []


def assert_stopped_cleanly(output: Path, stdout: str, stderr: str, name: str) -> None:
    """Only whole shards remain, and the summary and job.json count exactly what is on disk."""
    files = sorted((output / "data").iterdir()) if (output / "data").is_dir() else []
    assert all(f.name.startswith("shard-") and f.suffix == ".parquet" for f in files), files  # no temp files
    on_disk = sum(pq.read_table(f).num_rows for f in files)
    assert on_disk == SHARD_SIZE * len(files)  # every visible shard is complete
    record = job_record(output)
    assert record["status"] == "interrupted" and record["signal"] == name
    counts = record["counts"]
    assert (counts["ok"], counts["failed"], counts["not_run"]) == (on_disk, 0, ROWS - on_disk)
    assert "Traceback" not in stderr and "Error" not in stderr, stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_mid_job_stops_it_like_ctrl_c(tmp_path, session_address, sig, sigint_as_in_a_terminal):
    process, output = start_job(tmp_path, "--address", session_address)
    wait_until(process, lambda: len(shards_on_disk(output)) >= 2)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + sig
    name = signal.Signals(sig).name
    assert f"genbatch: interrupted by {name}" in stderr
    (summary,) = [line for line in stdout.splitlines() if line.startswith("genbatch: interrupted: ")]
    assert_stopped_cleanly(output, stdout, stderr, name)
    ok = job_record(output)["counts"]["ok"]
    assert summary.startswith(f"genbatch: interrupted: {ok} ok, 0 failed, {ROWS - ok} not run of {ROWS} rows")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_workers_load_stops_the_job_with_json_only_output(
    tmp_path, session_address, sig, sigint_as_in_a_terminal
):
    process, output = start_job(tmp_path, "--address", session_address, "--log-format", "json")
    wait_until(process, lambda: job_record(output).get("status") == "running")  # recorded; Ray and actors starting
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + sig, stderr
    records = [json.loads(line) for line in stderr.splitlines()]  # raises on any line that is not JSON
    errors = [r for r in records if r.get("event") == "error"]
    assert errors == [
        {"event": "error", "message": f"interrupted by {signal.Signals(sig).name}", "exit_code": 128 + sig}
    ]
    (summary,) = [json.loads(line) for line in stdout.splitlines()]
    assert (summary["event"], summary["interrupted"], summary["signal"]) == ("summary", True, signal.Signals(sig).name)
    assert summary["exit_code"] == 128 + sig
    assert_stopped_cleanly(output, stdout, stderr, signal.Signals(sig).name)


def test_sigterm_while_ray_itself_starts_is_handled_by_genbatch_not_ray(tmp_path, ray_session):
    """Without --address genbatch starts Ray; Ray's own SIGTERM handlers (exit 1, 15, or 134 with a stack
    dump) must not take over while it does."""
    process, output = start_job(tmp_path, "--log-format", "json", env=own_ray_env())
    wait_until(process, lambda: job_record(output).get("status") == "running")
    time.sleep(1.0)  # well inside ray.init, which takes several seconds here
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    for line in stderr.splitlines():
        json.loads(line)  # nothing from Ray or a stack dump
    assert json.loads(stdout)["signal"] == "SIGTERM"
    assert_stopped_cleanly(output, stdout, stderr, "SIGTERM")


def test_more_signals_during_shutdown_do_not_cut_it_short(tmp_path, session_address, sigint_as_in_a_terminal):
    process, output = start_job(tmp_path, "--address", session_address)
    wait_until(process, lambda: len(shards_on_disk(output)) >= 2)
    process.send_signal(signal.SIGTERM)
    for second in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        time.sleep(0.05)
        if process.poll() is None:
            process.send_signal(second)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr  # the first signal decides
    assert_stopped_cleanly(output, stdout, stderr, "SIGTERM")


def test_sigterm_to_the_whole_process_group_reaches_the_driver_alone(tmp_path):
    """systemd, Slurm and `timeout` signal the whole process group (`setsid genbatch run …; kill -TERM -- -PGID`).
    The Ray instance the driver started is out of the group: the driver stops its actors through a live
    cluster (Ray killed with the group left it waiting ~40 s on calls that could not be answered, and an
    orphaned actor publishing a shard after job.json counted), and what is on disk is what job.json says."""
    process, output = start_job(tmp_path, env=own_ray_env())
    with ended_at_exit(process):
        wait_until(process, lambda: len(shards_on_disk(output)) >= 2)
        assert process_group(process.pid) == [process.pid]  # Ray's processes and the actors are elsewhere
        os.killpg(process.pid, signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)  # Slurm's grace is 30 s; it takes a few here
    assert process.returncode == 143, stderr
    assert_stopped_cleanly(output, stdout, stderr, "SIGTERM")


def test_sigterm_to_the_whole_process_group_stops_a_rescore_with_whole_shards(tmp_path, ray_session, monkeypatch):
    from jobs.cli.main import main
    from jobs.run import driver
    from tests.helpers.stub_worker import WritingStubWorker
    from workers.io.writer import read_footer

    manifest = write_manifest(tmp_path / "p.parquet", {"prompt": [f"prompt {i}" for i in range(32)]})
    run = tmp_path / "run"
    # The run to rescore, on actors that load no model (its images are placeholders); the rescore's actor is real.
    monkeypatch.setattr(driver, "run_job", functools.partial(driver.run_job, worker_class=WritingStubWorker))
    assert main(["run", str(write_config(tmp_path / "job.yaml", manifest, run, shard_size=1)), "--quiet"]) == 0
    before = job_record(run)
    old_key = read_footer(str(shards_on_disk(run)[0])).job_key

    def keys() -> list[str]:
        return [read_footer(str(path)).job_key for path in shards_on_disk(run)]

    process = start_cli("rescore", str(run), "--set", "scores.pickscore.model=tiny-pickscore", env=own_ray_env())
    with ended_at_exit(process):
        wait_until(process, lambda: sum(key != old_key for key in keys()) >= 2)
        assert process_group(process.pid) == [process.pid]
        os.killpg(process.pid, signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    assert (process.returncode, stdout) == (143, ""), stderr
    assert stderr.splitlines()[-1] == "genbatch: interrupted by SIGTERM"
    assert "Traceback" not in stderr
    # Each shard whole, as the run wrote it or rescored; nothing half-written; the run's record untouched.
    assert [path.name for path in sorted((run / "data").iterdir())] == [path.name for path in shards_on_disk(run)]
    rescored = sum(key != old_key for key in keys())
    assert len(keys()) == 32 and 2 <= rescored < 32
    # job.json keeps the run's identity and says a rescore is under way (genbatch status shows how far it got).
    after = job_record(run)
    assert after.pop("rescoring")["job_key"] != old_key
    assert after == before
