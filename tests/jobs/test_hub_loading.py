"""Hub ids resolve through the Hugging Face cache, offline; a model that is not there is a clear error."""

from __future__ import annotations

import os

import pytest

from jobs.cli.main import main
from tests.conftest import read_output, write_config, write_manifest
from tests.helpers.hub_cache import put_in_hub_cache
from workers.errors import ModelNotFoundError
from workers.models.loading import load_clip


@pytest.mark.slow  # a whole job
def test_hub_ids_load_from_the_cache_in_offline_mode(tmp_path, tiny_dirs, ray_session):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    pipeline_dir, clip_dir = tiny_dirs
    put_in_hub_cache("genbatch-test/tiny-sd", pipeline_dir)
    put_in_hub_cache("genbatch-test/tiny-clip", clip_dir)
    manifest = write_manifest(tmp_path / "p.parquet", {"prompt": ["a lighthouse", "a harbour", "a boat"]})
    by_id = write_config(
        tmp_path / "hub.yaml",
        manifest,
        tmp_path / "hub",
        model={"id": "genbatch-test/tiny-sd"},
        clip={"model": "genbatch-test/tiny-clip"},
    )
    builtin = write_config(tmp_path / "tiny.yaml", manifest, tmp_path / "tiny")
    assert main(["run", str(by_id), "--quiet"]) == 0
    assert main(["run", str(builtin), "--quiet"]) == 0
    hub, tiny = read_output(tmp_path / "hub"), read_output(tmp_path / "tiny")
    assert hub.column("model").to_pylist() == ["genbatch-test/tiny-sd"] * 3
    assert hub.column("image").to_pylist() == tiny.column("image").to_pylist()
    assert hub.column("clip_score").to_pylist() == tiny.column("clip_score").to_pylist()


def test_a_model_missing_from_the_cache_says_how_to_fetch_it(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "p.parquet", {"prompt": ["a lighthouse"]})
    config = write_config(
        tmp_path / "job.yaml", manifest, tmp_path / "out", model={"id": "genbatch-test/not-downloaded"}
    )
    assert main(["run", str(config), "--quiet"]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("genbatch:")]
    assert line == (
        "genbatch: error: model.id: model 'genbatch-test/not-downloaded' "
        f"is not in the Hugging Face cache ({os.environ['HF_HUB_CACHE']}) and HF_HUB_OFFLINE=1 forbids downloading it; "
        "fetch it first with `hf download genbatch-test/not-downloaded` on every node (same HF_HOME), "
        "or unset HF_HUB_OFFLINE"
    )
    assert not (tmp_path / "out").exists()  # checked in the driver, before anything is written or started


def test_a_node_without_the_model_in_its_cache_says_so_from_its_actor():
    """The driver checks its own cache; an actor on another node checks that node's."""
    with pytest.raises(ModelNotFoundError, match=r"^model 'genbatch-test/elsewhere' is not in the Hugging Face cache"):
        load_clip("genbatch-test/elsewhere", None)
