"""The command line as a user meets it: the console script, its summary, exit codes, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from jobs.cli import main
from tests.conftest import write_config, write_manifest


def test_console_script_is_installed_and_shows_usage():
    script = Path(sys.executable).parent / "genbatch"
    result = subprocess.run([str(script), "run", "--help"], capture_output=True, text=True, check=True)
    assert "--set KEY=VALUE" in result.stdout and "--address" in result.stdout


def test_run_prints_a_summary_and_exits_0(tmp_path, capsys, ray_session):
    manifest = write_manifest(tmp_path / "p.parquet", {"prompt": ["a", "b", "c"]})
    config = write_config(tmp_path / "job.yaml", manifest, tmp_path / "out", generation={"steps": 1})
    assert main(["run", str(config), "--quiet", "--set", "shard_size=2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "genbatch: done: 3 ok, 0 failed of 3 rows in 2 shards"
    assert lines[1].startswith("genbatch: ") and "images/s after start-up" in lines[1]
    assert lines[2] == f"genbatch: output: {(tmp_path / 'out').resolve()}"


def test_ctrl_c_stops_the_job_exits_130_and_leaves_only_whole_files(tmp_path, ray_session, sigint_as_in_a_terminal):
    manifest = write_manifest(tmp_path / "p.parquet", {"prompt": [f"prompt {i}" for i in range(400)]})
    output = tmp_path / "out"
    config = write_config(tmp_path / "job.yaml", manifest, output, shard_size=4, generation={"steps": 4})
    address = ray_session.get_runtime_context().gcs_address
    process = subprocess.Popen(
        [sys.executable, "-m", "jobs.cli", "run", str(config), "--quiet", "--address", address],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    deadline = time.monotonic() + 120
    while len(list((output / "data").glob("*.parquet"))) < 2:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert stdout.startswith("genbatch: interrupted: "), stdout
    # Workers are gone before the driver tidies up: none fails a write afterwards (their tracebacks would show).
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    files = sorted((output / "data").iterdir())
    assert files and all(f.name.startswith("shard-") and f.suffix == ".parquet" for f in files)
    for file in files:
        assert pq.read_table(file).num_rows == 4  # every visible shard is complete
    assert len(files) < 100
    assert json.loads((output / "job.json").read_text())["status"] == "interrupted"


def test_the_session_ray_instance_listens_on_loopback_only(ray_session):
    assert {node["NodeManagerAddress"] for node in ray_session.nodes()} == {"127.0.0.1"}


def test_manifest_command_turns_a_prompt_list_into_a_runnable_manifest(tmp_path, capsys):
    from jobs.manifest import read_manifest

    source = tmp_path / "parti.tsv"
    source.write_text(
        'Prompt\tCategory\tChallenge\tNote\na "quoted" cat\tAnimals\tBasic\t\ncafé ☕ 東京\tPlaces\tWriting\tx\n'
    )
    target = tmp_path / "m.parquet"
    assert main(["manifest", str(source), "-o", str(target), "--images-per-prompt", "2"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"genbatch: wrote 4 rows (2 prompts) to {target}; columns: id, prompt, category, challenge, note"
    )
    manifest = read_manifest(str(target))
    assert manifest.rows == 4 and manifest.has_id_column
    assert main(["manifest", str(source), "-o", str(target), "--seed", "7"]) == 0
    assert capsys.readouterr().out.strip() == (
        f"genbatch: wrote 2 rows (2 prompts) to {target}; columns: id, prompt, seed, category, challenge, note"
    )
    assert read_manifest(str(target)).seeded_rows == 2
    assert main(["manifest", str(tmp_path / "nope.csv"), "-o", str(tmp_path / "x.parquet")]) == 2
    assert f"genbatch: error: {tmp_path / 'nope.csv'}: file not found" in capsys.readouterr().err
