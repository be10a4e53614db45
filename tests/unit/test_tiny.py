"""The built-in tiny models: standard folders, safetensors only, rebuilt identically from their seeds."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from workers.models import tiny


def test_tiny_folders_use_the_standard_layouts(tiny_dirs):
    pipeline_dir, clip_dir = tiny_dirs
    index = json.loads((pipeline_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    for part in ("unet", "vae"):
        assert (pipeline_dir / part / "diffusion_pytorch_model.safetensors").is_file()
    assert (pipeline_dir / "text_encoder" / "model.safetensors").is_file()
    assert (clip_dir / "model.safetensors").is_file() and (clip_dir / "processor_config.json").is_file()
    every_file = [p.name for d in tiny_dirs for p in d.rglob("*")]
    assert not [n for n in every_file if n.endswith((".bin", ".ckpt", ".pt", ".pth"))]


def test_tiny_models_are_rebuilt_identically_from_their_seeds(tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("GENBATCH_CACHE", str(tmp_path))
    rebuilt = tiny.tiny_pipeline_dir(), tiny.tiny_clip_dir()
    assert rebuilt[0].parent == tmp_path
    for original, fresh in zip(tiny_dirs, rebuilt):
        for weights in original.rglob("*.safetensors"):
            a, b = load_file(weights), load_file(fresh / weights.relative_to(original))
            assert a.keys() == b.keys()
            assert all(a[k].equal(b[k]) for k in a), weights


def test_a_built_folder_is_reused_not_rebuilt(tiny_dirs):
    marker = tiny_dirs[0] / "unet" / "config.json"
    before = marker.stat().st_mtime_ns
    assert tiny.tiny_pipeline_dir() == tiny_dirs[0]
    assert marker.stat().st_mtime_ns == before


def test_tiny_models_load_through_from_pretrained(tiny_dirs):
    import torch

    from workers.models.loading import load_clip, load_pipeline

    pipeline = load_pipeline("tiny", None, torch.device("cpu"), torch.float32)
    assert type(pipeline).__name__ == "StableDiffusionPipeline"
    model, processor = load_clip("tiny", torch.device("cpu"))
    assert model.config.projection_dim == 32 and processor.tokenizer.model_max_length == 77


@pytest.mark.slow  # imports diffusers afresh in a subprocess
def test_stable_diffusion_folders_load_with_their_own_class_and_unknown_classes_are_refused(tiny_dirs, tmp_path):
    import shutil
    import subprocess
    import sys

    import diffusers

    from workers.errors import UnknownFamilyError
    from workers.models.loading import text_to_image_class

    pipeline_dir = tiny_dirs[0]
    assert text_to_image_class(str(pipeline_dir), None) is diffusers.StableDiffusionPipeline
    assert text_to_image_class(str(tiny.tiny_sdxl_dir()), None) is diffusers.StableDiffusionXLPipeline
    saved_for_img2img = shutil.copytree(pipeline_dir, tmp_path / "img2img")
    index = json.loads((saved_for_img2img / "model_index.json").read_text())
    (saved_for_img2img / "model_index.json").write_text(
        json.dumps(index | {"_class_name": "StableDiffusionImg2ImgPipeline"})
    )
    assert text_to_image_class(str(saved_for_img2img), None) is diffusers.StableDiffusionPipeline  # as the auto class
    other = shutil.copytree(pipeline_dir, tmp_path / "other")
    (other / "model_index.json").write_text(json.dumps(index | {"_class_name": "KandinskyV22Pipeline"}))
    with pytest.raises(UnknownFamilyError, match="'KandinskyV22Pipeline' is not a model family genbatch knows"):
        text_to_image_class(str(other), None)  # genbatch runs the families it knows (workers.models.families)
    with pytest.raises(OSError):  # offline, a hub model's index must be in the cache
        text_to_image_class("genbatch-test/not-in-the-cache", None)
    # What the saving is for: loading the tiny model imports none of the other pipeline families.
    probe = (
        "import sys, torch; from workers.models.loading import load_pipeline;"
        "load_pipeline('tiny', None, torch.device('cpu'), torch.float32);"
        "print(sorted(m for m in sys.modules if m.startswith(('diffusers.pipelines.auto_pipeline', "
        "'diffusers.pipelines.controlnet', 'diffusers.pipelines.kandinsky'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_local_folders_load_and_pickle_only_folders_are_refused(tiny_dirs, tmp_path):
    import shutil

    import pytest
    import torch

    from workers.models.loading import load_pipeline

    folder = tmp_path / "my-model"
    shutil.copytree(tiny_dirs[0], folder)
    pipeline = load_pipeline(str(folder), None, torch.device("cpu"), torch.float32)
    assert type(pipeline.scheduler).__name__ == "DDIMScheduler"
    # Replace the UNet's safetensors with a pickle checkpoint: it must not be loaded.
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), folder / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(Exception, match="safetensors"):
        load_pipeline(str(folder), None, torch.device("cpu"), torch.float32)
