"""Shared fixtures: one Ray instance per test session, bound to loopback, and tiny models in a temp cache."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

# Set before Ray starts so that actors inherit them.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory) -> Path:
    """Tiny models are built from scratch into a cache private to this test session."""
    cache = tmp_path_factory.mktemp("genbatch-cache")
    os.environ["GENBATCH_CACHE"] = str(cache)
    return cache


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


@pytest.fixture(scope="session")
def tiny_dirs(model_cache) -> tuple[Path, Path]:
    from workers import tiny

    return tiny.tiny_pipeline_dir(), tiny.tiny_clip_dir()


def write_manifest(path: Path, columns: dict, row_group_size: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = columns if isinstance(columns, pa.Table) else pa.table(columns)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def write_config(path: Path, manifest: Path | str, output: Path | str, **sections) -> Path:
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
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def read_output(output: Path) -> pa.Table:
    files = sorted((output / "data").glob("shard-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])
