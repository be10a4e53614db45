"""Shared fixtures: one Ray instance per test session, bound to loopback, and tiny models in a temp cache."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

# Set before Ray starts so that actors inherit them.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# An empty hub cache of this session's own: tests put hub-style snapshots there (see test_hub_loading).
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="genbatch-hub-")
atexit.register(shutil.rmtree, os.environ["HF_HUB_CACHE"], ignore_errors=True)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: each probe stays bound until all are chosen, so the kernel cannot hand
    out one port twice (closed one at a time, two probes may get the same port)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


# The S3-compatible server that object-store tests start (see `s3_server`); every process of the session,
# actors included, finds it and its credentials the way users' processes find theirs: in the environment.
# Its address must be known before Ray starts, the server only when a test needs it: the port is bound here,
# and held, so that no other process can take it meanwhile; the server is handed this very socket.
_S3_SOCKET = socket.socket()
_S3_SOCKET.bind(("127.0.0.1", 0))
S3_PORT = _S3_SOCKET.getsockname()[1]
os.environ.update(
    {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}",
        "AWS_ACCESS_KEY_ID": "genbatch-test",
        "AWS_SECRET_ACCESS_KEY": "genbatch-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
)


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory) -> Path:
    """Tiny models are built from scratch into a cache private to this test session."""
    cache = tmp_path_factory.mktemp("genbatch-cache")
    os.environ["GENBATCH_CACHE"] = str(cache)
    return cache


@pytest.fixture(autouse=True)
def python_signal_handling():
    """`main()` keeps genbatch's stop-signal handlers until the process exits; tests run many in one process."""
    yield
    from jobs import signals

    signals.restore_defaults()


@pytest.fixture
def sigint_as_in_a_terminal():
    """Stop signals handled as in a terminal, here and in the subprocesses a test starts, whatever the
    test runner inherited: a shell script's background jobs (`bash .ci/run &`) start with SIGINT
    ignored, `nohup` ignores SIGHUP, and children inherit an ignored signal."""
    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
        signal.SIGHUP: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    }
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


@pytest.fixture(scope="session")
def ray_session(model_cache):
    import ray

    ray.init(
        address="local",  # a private instance, even if another cluster runs on this machine
        num_cpus=2,
        num_gpus=1,  # a declared GPU that torch cannot see: actors must fall back to CPU
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="WARNING",
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def reused_workers():
    """In-process jobs of the session reuse each other's loaded actors where their settings allow
    (jobs.pool.worker_reuse), as a sweep would: most of a tiny job's time is its actor's start-up."""
    from jobs.pool.worker_reuse import keep_workers

    with keep_workers():
        yield


@pytest.fixture
def session_address(ray_session) -> str:
    """The session's Ray address, for a CLI in a subprocess: parked actors are stopped first, so the
    resources they hold are free for that job's own actors."""
    from jobs.pool.worker_reuse import stop_parked

    stop_parked()
    return ray_session.get_runtime_context().gcs_address


# moto's standalone server (as `python -m moto.server` runs it), serving on the socket whose descriptor it is given.
SERVE_S3_ON_SOCKET = """
import socket
import sys

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

listener = socket.socket(fileno=int(sys.argv[1]))
listener.listen()
app = DomainDispatcherApplication(create_backend_app)
server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler, fd=listener.fileno())
server.serve_forever()
"""


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's standalone S3 server on loopback (on S3_PORT), as a separate process; yields a boto3 client for it."""
    import boto3

    log = tmp_path_factory.mktemp("moto") / "server.log"
    fd = _S3_SOCKET.fileno()
    with open(log, "wb") as sink:
        server = subprocess.Popen(
            [sys.executable, "-c", SERVE_S3_ON_SOCKET, str(fd)], pass_fds=(fd,), stdout=sink, stderr=sink
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", S3_PORT), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"moto server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield boto3.client("s3")
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="session")
def tiny_dirs(model_cache) -> tuple[Path, Path]:
    from workers.models import tiny

    return tiny.tiny_pipeline_dir(), tiny.tiny_clip_dir()


def write_manifest(path: Path, columns: dict, row_group_size: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = columns if isinstance(columns, pa.Table) else pa.table(columns)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def small_config(manifest: Path | str, output: Path | str, **sections) -> dict:
    """A small CPU job config; keyword arguments replace whole keys or merge into sections."""
    config = {
        "manifest": str(manifest),
        "output": output if isinstance(output, dict) else str(output),
        "seed": 0,
        "shard_size": 4,
        "model": {"id": "tiny"},
        "generation": {"steps": 2, "guidance_scale": 7.5, "width": 32, "height": 32},
        "clip": {"model": "tiny"},
        "resources": {"workers": 1, "gpus_per_worker": 0, "cpus_per_worker": 1, "batch_size": 2},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    return config


def write_config(path: Path, manifest: Path | str, output: Path | str, **sections) -> Path:
    path.write_text(yaml.safe_dump(small_config(manifest, output, **sections)), encoding="utf-8")
    return path


def worker_settings_for(folder: Path | str, key: str = "test", **sections):
    """The settings that a job of `small_config` (changed by `sections`) writing to `folder` gives its actors."""
    from jobs.config.schema import JobConfig
    from jobs.runfolder.settings import worker_settings

    config = JobConfig.model_validate(small_config("manifest.parquet", folder, **sections))
    return worker_settings(config, str(folder), key, num_threads=1)


def generation_defaults(**generation):
    """Row defaults from a `generation` config section (the config's defaults for what is not given)."""
    from jobs.config.schema import GenerationConfig
    from jobs.runfolder.settings import from_section
    from workers.tasks import GenerationDefaults

    return from_section(GenerationDefaults, GenerationConfig(**generation))


def read_output(output: Path) -> pa.Table:
    files = sorted((output / "data").glob("shard-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])
