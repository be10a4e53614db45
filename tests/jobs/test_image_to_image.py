"""Image-to-image rows: init images as bytes or paths, per-row strength, and bad init images as row errors."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image

from jobs.cli.main import main
from tests.conftest import read_output, write_config, write_manifest
from tests.reference import decode_png
from workers.models import tiny

GENERATION = {"steps": 4, "guidance_scale": 7.5, "width": 32, "height": 32, "negative_prompt": "", "strength": 0.6}
ONE_AT_A_TIME = {"workers": 1, "gpus_per_worker": 0, "cpus_per_worker": 1, "batch_size": 1}


def noise_image(seed: int, width: int = 32, height: int = 32) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def png(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def plain_img2img(model_cache):
    torch.set_num_threads(1)  # as in the actors (cpus_per_worker: 1): same reduction order
    pipeline = StableDiffusionImg2ImgPipeline.from_pretrained(tiny.tiny_pipeline_dir(), use_safetensors=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def plain_image(pipeline, prompt: str, image: Image.Image, strength: float, seed: int) -> np.ndarray:
    import torch

    result = pipeline(
        prompt,
        image=image,
        strength=strength,
        negative_prompt="",
        num_inference_steps=4,
        guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(seed),
    )
    return np.asarray(result.images[0])


def test_init_image_bytes_give_plain_img2img_pixels_and_bad_images_fail_alone(tmp_path, plain_img2img, ray_session):
    images = [noise_image(1), noise_image(2), noise_image(3, width=40, height=24)]
    manifest = write_manifest(
        tmp_path / "p.parquet",
        {
            "id": ["r0", "r1", "r2", "r3", "r4"],
            "prompt": ["a stone bridge", "a windmill", "a lantern", "a broken one", "no init image here"],
            "seed": [10, 11, 12, 13, 14],
            "init_image": pa.array([png(images[0]), png(images[1], "JPEG"), png(images[2]), b"not an image", None]),
            "strength": pa.array([None, 0.9, None, None, None], pa.float64()),
        },
    )
    config = write_config(
        tmp_path / "j.yaml", manifest, tmp_path / "out", generation=GENERATION, resources=ONE_AT_A_TIME
    )
    assert main(["run", str(config), "--quiet"]) == 1  # one row failed
    table = read_output(tmp_path / "out")
    rows = {row["id"]: row for row in table.to_pylist()}
    assert [rows[i]["status"] for i in ("r0", "r1", "r2", "r3", "r4")] == ["ok", "ok", "ok", "error", "ok"]
    assert rows["r3"]["error"].startswith("init_image: not a decodable image (UnidentifiedImageError: ")
    assert rows["r3"]["image"] is None
    assert [rows[i]["strength"] for i in ("r0", "r1", "r2")] == pytest.approx([0.6, 0.9, 0.6])
    assert rows["r4"]["strength"] is None  # a text-to-image row

    jpeg_decoded = Image.open(io.BytesIO(png(images[1], "JPEG"))).convert("RGB")
    resized = images[2].resize((32, 32), Image.Resampling.LANCZOS)  # the documented resize policy
    expected = {
        "r0": plain_image(plain_img2img, "a stone bridge", images[0], 0.6, 10),
        "r1": plain_image(plain_img2img, "a windmill", jpeg_decoded, 0.9, 11),
        "r2": plain_image(plain_img2img, "a lantern", resized, 0.6, 12),
    }
    for row_id, pixels in expected.items():
        assert np.array_equal(decode_png(rows[row_id]["image"]["bytes"]), pixels), row_id
    # Same prompt and seed without an init image: a different (text-to-image) picture.
    assert decode_png(rows["r4"]["image"]["bytes"]).shape == (32, 32, 3)


@pytest.mark.slow  # a second whole job
def test_init_image_paths_and_the_error_size_policy(tmp_path, ray_session):
    good = tmp_path / "images" / "good.png"
    good.parent.mkdir()
    noise_image(5).save(good)
    wrong_size = tmp_path / "images" / "wide.png"
    noise_image(6, width=48, height=32).save(wrong_size)
    missing = tmp_path / "images" / "missing.png"
    manifest = write_manifest(
        tmp_path / "p.parquet",
        {"prompt": ["a", "b", "c"], "init_image": [str(good), str(wrong_size), str(missing)]},
    )
    generation = {**GENERATION, "init_image_policy": "error"}
    config = write_config(tmp_path / "j.yaml", manifest, tmp_path / "out", generation=generation)
    assert main(["run", str(config), "--quiet"]) == 1
    table = read_output(tmp_path / "out")
    assert table.column("status").to_pylist() == ["ok", "error", "error"]
    errors = table.column("error").to_pylist()
    assert errors[1] == "init_image is 48x32 px, the row asks for 32x32 (generation.init_image_policy: error)"
    assert errors[2].startswith(f"init_image: cannot read {missing}: ")


def test_bad_strength_values_are_refused_before_anything_runs(tmp_path, capsys):
    manifest = write_manifest(
        tmp_path / "p.parquet",
        {
            "id": ["a", "b", "c"],
            "prompt": ["x", "y", "z"],
            "init_image": [b"1", b"2", b"3"],
            "strength": [0.5, 0.0, 1.5],
        },
    )
    config = write_config(tmp_path / "j.yaml", manifest, tmp_path / "out")
    assert main(["run", str(config), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"genbatch: error: {manifest}: column 'strength': strength not in (0, 1] in 2 rows (ids: 'b', 'c')"
    )
