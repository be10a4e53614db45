"""A folder whose weights do not fill its model is refused, exit 2, naming the folder and the first missing tensors:
in the driver before Ray starts (CLIP folders, from their safetensors headers) and wherever a model is loaded.

Without it transformers gives the missing tensors random values (diffusers empty ones) and the job exits 0."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from jobs.cli.main import main
from jobs.config.preflight import check_models
from jobs.config.schema import load_config
from jobs.errors import ConfigError
from jobs.pool import cluster
from tests.conftest import write_config, write_manifest
from tests.helpers.hub_cache import cache_file
from tests.helpers.images import picture, write_image_folder
from tests.helpers.runs import make_run, record_only_run
from workers.errors import IncompleteWeightsError
from workers.models import tiny
from workers.models.loading import load_clip, load_pipeline

CPU = torch.device("cpu")
# What the driver reads from a text encoder's safetensors headers, and what transformers reports loading it.
DRIVER_SAYS = (
    "not a complete CLIPModel: weights missing (vision_model.*, visual_projection.weight, logit_scale); "
    "the folder would load with random weights"
)
LOADER_SAYS = (
    "not a complete CLIPModel: 41 weights missing (logit_scale, vision_model.embeddings.class_embedding, "
    "vision_model.embeddings.patch_embedding.weight and 38 more); the folder would load with random weights"
)


@pytest.fixture(scope="module")
def text_only_clip(tmp_path_factory, model_cache) -> Path:
    """The tiny CLIP's text encoder (CLIPTextModelWithProjection) and processor, without its vision tower: a text
    encoder cut out of a CLIP checkpoint. Its config.json stays the whole CLIP's, as such a cut keeps it, so
    CLIPModel builds every tensor at the right size and today fills the vision tower with random values."""
    from transformers import CLIPProcessor, CLIPTextModelWithProjection

    whole = tiny.tiny_clip_dir()
    folder = tmp_path_factory.mktemp("text-only-clip")
    CLIPTextModelWithProjection.from_pretrained(whole).save_pretrained(folder)
    CLIPProcessor.from_pretrained(whole).save_pretrained(folder)
    shutil.copy(whole / "config.json", folder / "config.json")
    return folder


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        pytest.fail("Ray was started before the models were checked")

    monkeypatch.setattr(cluster, "connect", refuse)


def test_loading_a_clip_without_its_vision_tower_is_refused(text_only_clip):
    with pytest.raises(IncompleteWeightsError) as caught:
        load_clip(str(text_only_clip), CPU)
    assert str(caught.value) == f"{text_only_clip}: {LOADER_SAYS}"


def test_genbatch_run_refuses_it_before_ray_starts(tmp_path, text_only_clip, capsys, no_ray):
    manifest = write_manifest(tmp_path / "p.parquet", {"prompt": ["a lighthouse"]})
    config = write_config(tmp_path / "job.yaml", manifest, tmp_path / "out", clip={"model": str(text_only_clip)})
    assert main(["run", str(config)]) == 2
    assert capsys.readouterr().err == f"genbatch: error: clip.model: {text_only_clip}: {DRIVER_SAYS}\n"
    assert not (tmp_path / "out").exists()


def test_a_whole_clip_folder_passes_the_driver_check(tmp_path, no_ray):
    whole = shutil.copytree(tiny.tiny_clip_dir(), tmp_path / "clip")
    manifest = write_manifest(tmp_path / "p.parquet", {"prompt": ["a lighthouse"]})
    config = load_config(write_config(tmp_path / "job.yaml", manifest, tmp_path / "out", clip={"model": str(whole)}))
    check_models(config)


def test_a_cached_hub_clip_is_read_from_the_cache(text_only_clip, tmp_path, no_ray):
    hub_id = "genbatch-test/text-only-clip"
    cache_file(hub_id, "config.json")
    snapshots = Path(os.environ["HF_HUB_CACHE"]) / "models--genbatch-test--text-only-clip" / "snapshots"
    shutil.copy(text_only_clip / "model.safetensors", next(snapshots.iterdir()) / "model.safetensors")
    manifest = write_manifest(tmp_path / "p.parquet", {"prompt": ["a lighthouse"]})
    path = write_config(tmp_path / "job.yaml", manifest, tmp_path / "out", clip={"model": hub_id})
    with pytest.raises(ConfigError) as caught:
        check_models(load_config(path))
    assert str(caught.value) == f"clip.model: {hub_id}: {DRIVER_SAYS}"


def test_rescore_refuses_it_as_pickscore_and_leaves_the_run_as_it_was(tmp_path, text_only_clip, capsys, no_ray):
    run = record_only_run(tmp_path)
    record = (run / "job.json").read_text()
    assert main(["rescore", str(run), "--set", f"scores.pickscore.model={text_only_clip}"]) == 2
    assert capsys.readouterr().err == f"genbatch: error: scores.pickscore.model: {text_only_clip}: {DRIVER_SAYS}\n"
    assert (run / "job.json").read_text() == record


def test_report_refuses_it_as_the_cmmd_model_and_writes_nothing(tmp_path, text_only_clip, capsys):
    run = make_run(tmp_path / "run", [25.0] * 4)
    reference = write_image_folder(tmp_path / "ref", [picture(1000 + i, bright=50) for i in range(4)])
    argv = ["report", str(run), "--reference", reference, "--cmmd-model", str(text_only_clip)]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"genbatch: error: --cmmd-model: {text_only_clip}: {DRIVER_SAYS}\n"
    assert not (run / "report").exists()


def test_the_cmmd_model_load_itself_refuses_it(text_only_clip):
    from jobs.errors import UsageError
    from jobs.report.features import ClipImageFeatures

    with pytest.raises(UsageError) as caught:
        ClipImageFeatures(str(text_only_clip), CPU)
    assert str(caught.value) == f"CMMD model {str(text_only_clip)!r}: cannot load it ({text_only_clip}: {LOADER_SAYS})"


def _pipeline_with(tmp_path, part: str, change) -> str:
    """A copy of the tiny pipeline whose `part`'s weights file is rewritten by `change(tensors)`."""
    folder = shutil.copytree(tiny.tiny_pipeline_dir(), tmp_path / "pipeline")
    weights = next((folder / part).glob("*.safetensors"))
    tensors = load_file(weights)
    change(tensors)
    save_file(tensors, weights)
    return str(folder)


@pytest.mark.parametrize(
    ("part", "change", "problem"),
    [
        (
            "unet",
            lambda tensors: tensors.pop("conv_in.bias"),
            "not a complete UNet2DConditionModel: 1 weight missing (conv_in.bias); "
            "the folder would load with random weights",
        ),
        (
            "vae",
            lambda tensors: tensors.update({"decoder.extra.weight": torch.zeros(2)}),
            "not a complete AutoencoderKL: 1 unexpected weight (decoder.extra.weight); "
            "the folder holds weights this model has no place for",
        ),
        (
            "text_encoder",
            lambda tensors: tensors.pop("final_layer_norm.weight"),
            "not a complete CLIPTextModel: 1 weight missing (final_layer_norm.weight); "
            "the folder would load with random weights",
        ),
    ],
    ids=["unet-missing", "vae-unexpected", "text-encoder-missing"],
)
def test_a_pipeline_model_its_folder_does_not_fill_is_refused(tmp_path, part, change, problem):
    folder = _pipeline_with(tmp_path, part, change)
    with pytest.raises(IncompleteWeightsError) as caught:
        load_pipeline(folder, None, CPU, torch.float32)
    assert str(caught.value) == f"{folder}/{part}: {problem}"


def test_the_built_in_models_load_without_a_false_alarm():
    # Tied and ignored tensors, buffers and SDXL's second text encoder are all legitimately absent or present.
    for ref in (tiny.TINY, tiny.TINY_SDXL):
        load_pipeline(ref, None, CPU, torch.float32)
    for ref in (tiny.TINY, tiny.TINY_PICKSCORE):
        load_clip(ref, CPU)


def test_the_weights_read_are_those_the_loaders_pick(tmp_path):
    from workers.models.weights_check import weight_file_keys

    stem = "diffusion_pytorch_model"
    save_file({"plain": torch.zeros(1)}, tmp_path / f"{stem}.safetensors")
    save_file({"half": torch.zeros(1)}, tmp_path / f"{stem}.fp16.safetensors")
    save_file({"other": torch.zeros(1)}, tmp_path / "model.safetensors")  # another library's name: not read
    assert weight_file_keys(str(tmp_path), "fp16", stem=stem) == {"half"}
    assert weight_file_keys(str(tmp_path), "bf16", stem=stem) == {"plain"}  # no such variant: the plain file
    assert weight_file_keys(str(tmp_path), None, stem=stem) == {"plain"}
    index = {"metadata": {}, "weight_map": {"a": "s-1.safetensors", "b": "s-2.safetensors"}}
    (tmp_path / f"{stem}.safetensors.index.fp16.json").write_text(json.dumps(index))
    assert weight_file_keys(str(tmp_path), "fp16", stem=stem) == {"a", "b"}
    (tmp_path / "empty").mkdir()
    assert weight_file_keys(str(tmp_path / "empty"), stem=stem) is None
