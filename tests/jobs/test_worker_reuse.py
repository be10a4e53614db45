"""Jobs run by one driver process reuse each other's loaded actors when only their output differs."""

from __future__ import annotations

import functools
import json

import pytest

from jobs.cli.main import main
from jobs.pool import cluster, worker_reuse
from tests.conftest import read_output, write_config, write_manifest
from workers.io.rows import derive_seed

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
        other = run(tmp_path, manifest, "c", clip={"model": None})  # set up otherwise: another actor
        assert other != first and not cluster._process_alive(first[0])  # the parked one was stopped first
    assert not cluster._process_alive(other[0])  # leaving the block stops what is parked


def test_a_job_with_other_generation_settings_and_scheduler_takes_over_the_actor_as_a_sweep_run_would(
    tmp_path, manifest, ray_session
):
    changed = {
        "generation": {"steps": 3, "guidance_scale": 3.0},
        "model": {"scheduler": "euler"},
        "resources": {"batch_size": 3},
    }
    worker_reuse.stop_parked()
    with worker_reuse.keep_workers():
        first = run(tmp_path, manifest, "a")
        assert run(tmp_path, manifest, "rebound", **changed) == first  # told its new settings, nothing loaded
        worker_reuse.stop_parked()
        fresh = run(tmp_path, manifest, "fresh", **changed)
        assert fresh != first
    rebound, expected = read_output(tmp_path / "rebound"), read_output(tmp_path / "fresh")
    for column in ("id", "image", "steps", "guidance_scale", "scheduler", "clip_score"):
        assert rebound.column(column).to_pylist() == expected.column(column).to_pylist(), column
    assert rebound.column("image").to_pylist() != read_output(tmp_path / "a").column("image").to_pylist()
    (worker,) = json.loads((tmp_path / "rebound" / "job.json").read_text())["workers"]
    assert worker["scheduler"] == "euler"


def test_on_gpus_and_when_compiling_batch_and_image_sizes_are_part_of_what_an_actor_was_made_for():
    from tests.conftest import worker_settings_for

    def key(actor_resources, **sections):
        return worker_reuse.key_of(None, actor_resources, worker_settings_for("out", **sections))

    on_cpu, on_gpu = cluster.ActorResources(num_cpus=1, num_gpus=0), cluster.ActorResources(num_cpus=1, num_gpus=1)
    large = {"generation": {"width": 64, "height": 64}}
    batch_3 = {"resources": {"batch_size": 3}}
    per_run = {"generation": {"steps": 7, "guidance_scale": 2.0}, "model": {"scheduler": "ddim"}, "seed": 5}
    assert key(on_cpu) == key(on_cpu, **large) == key(on_cpu, **batch_3) == key(on_cpu, **per_run)
    assert key(on_gpu) != key(on_gpu, **large) and key(on_gpu) != key(on_gpu, **batch_3)
    assert key(on_gpu) == key(on_gpu, **per_run)
    compiled = {"compile": True}
    assert key(on_cpu, performance=compiled) != key(on_cpu, performance=compiled, **batch_3)
    assert key(on_cpu) != key(on_cpu, clip={"model": None}) and key(on_cpu) != key(on_gpu)


@pytest.fixture
def stub_workers(monkeypatch):
    """Jobs run by `main` get actors that load no model (tests.helpers.stub_worker), for tests of when actors start
    and stop, not of what they make: each actor starts in a second, not ten."""
    from jobs.run import driver
    from tests.helpers.stub_worker import WritingStubWorker

    monkeypatch.setattr(driver, "run_job", functools.partial(driver.run_job, worker_class=WritingStubWorker))
    return WritingStubWorker


def test_outside_keep_workers_every_job_starts_its_own_actors(
    tmp_path, manifest, ray_session, stub_workers, monkeypatch
):
    worker_reuse.stop_parked()
    monkeypatch.setattr(worker_reuse, "_parked", None)
    first = run(tmp_path, manifest, "a")
    assert not cluster._process_alive(first[0])  # stopped at the job's end
    assert run(tmp_path, manifest, "b") != first


def test_an_interrupted_job_parks_nothing(tmp_path, manifest, ray_session, stub_workers):
    from jobs.config.schema import load_config
    from jobs.pool.dispatch import JobHooks
    from jobs.run.driver import run_job

    worker_reuse.stop_parked()
    config = load_config(write_config(tmp_path / "job.yaml", manifest, tmp_path / "out", shard_size=2))

    def stop(result):
        raise KeyboardInterrupt

    with worker_reuse.keep_workers():
        summary = run_job(config, progress="off", hooks=JobHooks(on_shard_done=stop), worker_class=stub_workers)
        assert summary.interrupted and worker_reuse._parked == []
