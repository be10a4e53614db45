"""SDXL end to end on the built-in tiny-sdxl: two text encoders, pooled embeddings, size conditioning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from jobs.cli.main import main
from tests.conftest import read_output, write_config, write_manifest
from tests.reference import decode_png, plain_diffusers_image
from workers.models import tiny

PROMPTS = {"id": ["x0", "x1", "x2"], "prompt": ["a castle on a hill", "a red kite", "a field of tulips"]}
PROMPTS["seed"] = [11, 12, 13]


def test_tiny_sdxl_folder_is_an_sdxl_pipeline(model_cache):
    index = json.loads((tiny.tiny_sdxl_dir() / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert {"text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae"} <= set(index)
    assert not list(tiny.tiny_sdxl_dir().rglob("*.bin"))  # safetensors only


@pytest.mark.slow  # a whole SDXL job
def test_an_sdxl_job_equals_a_plain_sdxl_pipeline_call(tmp_path, ray_session):
    manifest = write_manifest(tmp_path / "p.parquet", PROMPTS)
    generation = {"steps": 2, "guidance_scale": 5.0, "width": 32, "height": 32, "negative_prompt": ""}
    config = write_config(
        tmp_path / "job.yaml",
        manifest,
        tmp_path / "out",
        model={"id": "tiny-sdxl"},
        generation=generation,
        resources={"workers": 1, "gpus_per_worker": 0, "cpus_per_worker": 1, "batch_size": 1},
    )
    assert main(["run", str(config), "--quiet"]) == 0
    table = read_output(tmp_path / "out")
    assert table.column("id").to_pylist() == PROMPTS["id"]
    assert set(table.column("scheduler").to_pylist()) == {"EulerDiscreteScheduler"}
    assert set(table.column("model").to_pylist()) == {"tiny-sdxl"}

    torch.set_num_threads(1)  # as in the actors (cpus_per_worker: 1): same reduction order
    pipeline = StableDiffusionXLPipeline.from_pretrained(tiny.tiny_sdxl_dir(), use_safetensors=True)
    pipeline.set_progress_bar_config(disable=True)
    for row in table.to_pylist():
        expected = plain_diffusers_image(pipeline, row["prompt"], "", row["seed"], 2, 5.0, 32, 32)
        assert np.array_equal(decode_png(row["image"]["bytes"]), expected), row["id"]


def test_model_variant_selects_the_variant_weights(tmp_path, tiny_dirs):
    """`model.variant: fp16` loads `*.fp16.safetensors`; a folder that has only those needs it."""
    import torch
    from diffusers import StableDiffusionPipeline

    from workers.models.loading import load_pipeline

    folder = tmp_path / "variant-only"
    StableDiffusionPipeline.from_pretrained(tiny_dirs[0], use_safetensors=True).save_pretrained(
        folder, variant="fp16", safe_serialization=True
    )
    assert list(folder.rglob("*.fp16.safetensors")) and not list(folder.rglob("*[!6].safetensors"))
    with pytest.raises(OSError):  # without the variant, diffusers looks for the plain file names
        load_pipeline(str(folder), None, torch.device("cpu"), torch.float32)
    pipeline = load_pipeline(str(folder), None, torch.device("cpu"), torch.float32, variant="fp16")
    reference = StableDiffusionPipeline.from_pretrained(tiny_dirs[0], use_safetensors=True)
    for name in ("unet", "vae", "text_encoder"):
        loaded, expected = getattr(pipeline, name).state_dict(), getattr(reference, name).state_dict()
        assert all(torch.equal(loaded[key], expected[key]) for key in expected), name
