"""Jobs run by one driver process reuse each other's loaded actors when only their output differs."""

from __future__ import annotations

import json

import pytest

from jobs import cluster, worker_reuse
from jobs.cli import main
from tests.conftest import read_output, write_config, write_manifest
from workers.rows import derive_seed

pytestmark = pytest.mark.slow  # whole jobs, several actor start-ups each


def worker_pids(output) -> list[int]:
    return [worker["pid"] for worker in json.loads((output / "job.json").read_text())["workers"]]


@pytest.fixture
def manifest(tmp_path):
    return write_manifest(tmp_path / "p.parquet", {"prompt": [f"a harbour at hour {i}" for i in range(6)]})


def run(tmp_path, manifest, name: str, **sections) -> int:
    config = write_config(tmp_path / f"{name}.yaml", manifest, tmp_path / name, **sections)
    assert main(["run", str(config), "--quiet"]) == 0
    return worker_pids(tmp_path / name)


def test_a_job_with_the_same_settings_takes_over_the_actor_and_writes_the_same_bytes(tmp_path, manifest, ray_session):
    worker_reuse.stop_parked()
    with worker_reuse.keep_workers():
        first = run(tmp_path, manifest, "a")
        second = run(tmp_path, manifest, "b")
        assert second == first  # the same process: nothing was loaded again
        assert (
            read_output(tmp_path / "b").column("image").to_pylist()
            == read_output(tmp_path / "a").column("image").to_pylist()
        )
        assert run(tmp_path, manifest, "seed-1", seed=1) == first  # the job seed is the job's, too
        reseeded = read_output(tmp_path / "seed-1")
        assert reseeded.column("seed").to_pylist() == [derive_seed(1, i) for i in reseeded.column("id").to_pylist()]
        assert reseeded.column("image").to_pylist() != read_output(tmp_path / "a").column("image").to_pylist()
        other = run(tmp_path, manifest, "c", generation={"steps": 3})  # other pixels: another actor
        assert other != first and not cluster._process_alive(first[0])  # the parked one was stopped first
    assert not cluster._process_alive(other[0])  # leaving the block stops what is parked


def test_outside_keep_workers_every_job_starts_its_own_actors(tmp_path, manifest, ray_session, monkeypatch):
    worker_reuse.stop_parked()
    monkeypatch.setattr(worker_reuse, "_parked", None)
    first = run(tmp_path, manifest, "a")
    assert not cluster._process_alive(first[0])  # stopped at the job's end
    assert run(tmp_path, manifest, "b") != first


def test_an_interrupted_job_parks_nothing(tmp_path, manifest, ray_session):
    from jobs.config import load_config
    from jobs.dispatch import JobHooks
    from jobs.driver import run_job

    worker_reuse.stop_parked()
    config = load_config(write_config(tmp_path / "job.yaml", manifest, tmp_path / "out", shard_size=2))

    def stop(result):
        raise KeyboardInterrupt

    with worker_reuse.keep_workers():
        summary = run_job(config, progress="off", hooks=JobHooks(on_shard_done=stop))
        assert summary.interrupted and worker_reuse._parked == []
