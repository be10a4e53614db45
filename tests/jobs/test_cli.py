"""The command line as a user meets it: the console script, its summary, exit codes, Ctrl-C."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from jobs.cli.main import main
from jobs.cli.parser import build_parser
from jobs.run.progress import Progress
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


# Run as a script by the test below: genbatch's own start of a local Ray instance, in a fresh process (Ray not
# imported before genbatch connects, as in the CLI); prints the addresses its processes listen on.
START_LOCAL_RAY = """
import json
import psutil
from jobs.pool.cluster import connect

connect(None)
import ray

here = psutil.Process()
listening = {
    connection.laddr.ip
    for process in [here, *here.children(recursive=True)]
    for connection in process.net_connections(kind="inet")
    if connection.status == psutil.CONN_LISTEN
}
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address, "listening": sorted(listening)}))
ray.shutdown()
"""


@pytest.mark.slow  # starts a Ray instance of its own
def test_the_local_ray_instance_that_genbatch_starts_listens_on_loopback_only():
    # A user's environment: none of the Ray settings that this test session sets for its own instance.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    started = subprocess.run(
        [sys.executable, "-c", START_LOCAL_RAY], env=env, capture_output=True, text=True, timeout=300
    )
    assert started.returncode == 0, started.stderr[-3000:]
    addresses = json.loads(started.stdout.splitlines()[-1])
    assert addresses["gcs"].rpartition(":")[0] == "127.0.0.1"
    assert addresses["listening"] and set(addresses["listening"]) <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def test_manifest_command_turns_a_prompt_list_into_a_runnable_manifest(tmp_path, capsys):
    from jobs.inputs.manifest import read_manifest

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


def _run_on(tmp_path, output, capsys) -> tuple[int, list[str]]:
    manifest = write_manifest(tmp_path / "p.parquet", {"prompt": ["a", "b"]})
    config = write_config(tmp_path / "job.yaml", manifest, output)
    code = main(["run", str(config), "--quiet"])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.startswith("genbatch:")]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda out: out.write_text("a file"), "{out}: cannot create the output folder (File exists)"),
        (
            lambda out: (out.mkdir(), (out / ".genbatch.lock").mkdir()),
            "{out}/.genbatch.lock: cannot open the output folder's lock file (Is a directory)",
        ),
        (
            lambda out: (out.mkdir(), (out / "data").write_text("a file")),
            "{out}/data: not a folder; genbatch writes its shard files there",
        ),
        (
            lambda out: (out.mkdir(), (out / "stats").write_text("a file")),
            "{out}/stats: not a folder; genbatch writes its shard files there",
        ),
        (None, "/proc/genbatch-out: cannot create the output folder (No such file or directory)"),
    ],
)
def test_unusable_output_folders_exit_2_with_one_line(tmp_path, capsys, make, expected):
    output = tmp_path / "out" if make else Path("/proc/genbatch-out")
    if make:
        make(output)
    code, lines = _run_on(tmp_path, output, capsys)
    assert code == 2
    assert lines == [f"genbatch: error: {expected.format(out=output)}"]
    assert not (output / "job.json").exists()


def test_an_output_folder_the_kernel_will_not_write_exits_2(tmp_path, capsys):
    code, lines = _run_on(tmp_path, "/sys/kernel", capsys)
    assert code == 2
    (line,) = lines
    prefix = "genbatch: error: /sys/kernel/.genbatch.lock: cannot open the output folder's lock file "
    assert line in (prefix + "(Permission denied)", prefix + "(Read-only file system)")


def test_a_full_disk_when_job_json_is_first_written_leaves_no_job_json(tmp_path, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    output = tmp_path / "out"
    code, lines = _run_on(tmp_path, output, capsys)
    assert code == 2
    assert lines == [f"genbatch: error: {output}/job.json: cannot write (No space left on device)"]
    assert sorted(p.name for p in output.iterdir()) == [".genbatch.lock"]  # no job.json, no temporary file


def test_verbose_goes_before_or_after_the_command_and_version_prints(capsys):
    parser = build_parser()
    assert parser.parse_args(["run", "job.yaml"]).verbose is False
    assert parser.parse_args(["-v", "run", "job.yaml"]).verbose is True
    assert parser.parse_args(["run", "job.yaml", "-v"]).verbose is True
    assert parser.parse_args(["status", "out", "--verbose"]).verbose is True
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"genbatch {metadata.version('genbatch')}\n"


def test_usage_errors_are_json_with_json_logs(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["run", "job.yaml", "--log-format", "json", "--bogus"])
    assert stop.value.code == 2
    assert json.loads(capsys.readouterr().err) == {
        "event": "error",
        "message": "genbatch: error: unrecognized arguments: --bogus",
        "exit_code": 2,
    }


def test_the_bar_says_what_starts_until_a_worker_is_ready(capsys):
    follow = Progress(total=4, mode="bar")
    assert follow.bar.desc == "loading models"
    follow.workers(0, 2)
    follow.worker_ready("worker-0@host", "cpu", 4.21)
    follow.workers(1, 2)
    assert follow.bar.desc == "generating"
    follow.close()
    assert "genbatch: worker-0@host ready in 4.2 s on cpu\n" in capsys.readouterr().err


@pytest.mark.slow  # a whole job in a child process
def test_text_logs_off_a_terminal_show_start_up_without_colour(tmp_path, session_address):
    manifest = write_manifest(tmp_path / "p.parquet", {"prompt": ["a", "b"]})
    broken = tmp_path / "not-a-model"
    broken.mkdir()
    config = write_config(tmp_path / "job.yaml", manifest, tmp_path / "out", model={"id": str(broken)})
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli.main", "run", str(config), "--address", session_address, "-v"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert lines[:2] == [
        f"INFO genbatch.progress: connecting to Ray at {session_address}",
        f"INFO genbatch.progress: loading {broken} on 1 worker",
    ]
    # The actor's own line, forwarded by Ray with its `(GenerationWorker pid=N)` prefix, uncoloured.
    assert any(line.startswith("(GenerationWorker pid=") and "could not load its models" in line for line in lines)
    assert "\x1b[" not in result.stderr
    assert [line for line in lines if line.startswith("genbatch:")] == [
        f"genbatch: error: no worker could load the models: OSError: no file named model_index.json in {broken}: "
        "not a diffusers pipeline folder"
    ]
