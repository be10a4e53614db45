"""`ray job submit` against a Ray head that the test starts on loopback: the README's cluster recipe, for real."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import free_ports, read_output, write_config, write_manifest

pytestmark = pytest.mark.slow  # starts a Ray head with `ray start` and submits a job

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # `ray` and `genbatch` live next to this interpreter


@pytest.fixture
def ray_head():
    """A separate single-node cluster with its dashboard (the Jobs API) on 127.0.0.1; yields its address."""
    names = [
        "--port",
        "--dashboard-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
        "--metrics-export-port",
        "--ray-client-server-port",
        "--node-manager-port",
        "--object-manager-port",
    ]
    ports = dict(zip(names, free_ports(len(names))))  # distinct: Ray refuses a port given to two components
    temp_dir = tempfile.mkdtemp(prefix="rayjobs-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    # Token authentication, as README recommends: the head and every client share a secret.
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)})
    env.pop("RAY_ADDRESS", None)
    # At SIGTERM the head would first drain the node for 30 s (for Ray Serve's traffic); nothing to drain here.
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    command = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1"]
    command += ["--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=2", "--num-gpus=0"]
    command += ["--disable-usage-stats", f"--temp-dir={temp_dir}"] + [f"{k}={v}" for k, v in ports.items()]
    log = open(Path(temp_dir) / "head.log", "wb")
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{ports['--dashboard-port']}"
    try:
        deadline = time.monotonic() + 90
        while subprocess.run(_ray("job", "list", address), env=env, capture_output=True).returncode != 0:
            if time.monotonic() > deadline or head.poll() is not None:
                raise RuntimeError("the Ray head did not start: " + (Path(temp_dir) / "head.log").read_text()[-3000:])
            time.sleep(1)
        yield address, env
    finally:
        os.killpg(head.pid, 15)  # --block: the head takes its processes down with it
        head.wait(timeout=60)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _ray(*args: str) -> list[str]:
    *words, address = args
    return [str(BIN / "ray"), *words, "--address", address]


def test_a_job_submitted_with_ray_job_submit_succeeds(tmp_path, ray_head):
    address, env = ray_head
    manifest = write_manifest(tmp_path / "prompts.parquet", {"prompt": [f"a tiny scene {i}" for i in range(5)]})
    config = write_config(tmp_path / "job.yaml", manifest, tmp_path / "out")
    submit = _ray("job", "submit", address)
    submit += ["--submission-id", "genbatch-test", "--no-wait", "--working-dir", str(REPO)]
    submit += ["--", "genbatch", "run", str(config), "--quiet"]
    subprocess.run(submit, env=env, check=True, capture_output=True, cwd=REPO)

    deadline, status = time.monotonic() + 300, ""
    while time.monotonic() < deadline:
        status = subprocess.run(
            _ray("job", "status", "genbatch-test", address), env=env, capture_output=True, text=True
        )
        if any(f"' {state}" in status.stdout for state in ("succeeded", "failed", "stopped")):
            break
        time.sleep(2)
    logs = subprocess.run(_ray("job", "logs", "genbatch-test", address), env=env, capture_output=True, text=True)
    assert "Job 'genbatch-test' succeeded" in status.stdout, logs.stdout[-3000:]
    assert "genbatch: done: 5 ok, 0 failed of 5 rows in 2 shards" in logs.stdout
    output = read_output(tmp_path / "out")
    assert output.column("id").to_pylist() == [0, 1, 2, 3, 4]
    assert output.column("status").to_pylist() == ["ok"] * 5
