"""Speed options: each one is either exact or within the documented tolerance of the plain path."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from jobs.config.schema import PerformanceConfig
from jobs.runfolder.settings import from_section
from tests.conftest import generation_defaults, worker_settings_for
from workers.io.rows import RowSpec
from workers.models.loading import load_clip, load_pipeline
from workers.pipeline.fastpaths import apply_fast_paths
from workers.pipeline.generation import generate, to_uint8
from workers.pipeline.images import encode_image
from workers.scoring.clip import ClipScorer, preprocess_on_device
from workers.tasks import FastPaths, ImageEncoding, ShardTask
from workers.worker import GenerationWorker

CPU = torch.device("cpu")


def fast_paths(**performance) -> FastPaths:
    return from_section(FastPaths, PerformanceConfig(**performance))


DEFAULTS = generation_defaults(steps=2, guidance_scale=7.5, width=32, height=32)


def rows(n: int) -> list[RowSpec]:
    return [RowSpec(i, f"prompt {i}", "", 100 + i, 2, 7.5, 32, 32) for i in range(n)]


@pytest.fixture(scope="module")
def pipeline(tiny_dirs):
    torch.set_num_threads(1)
    return load_pipeline("tiny", None, CPU, torch.float32)


def test_padding_a_micro_batch_keeps_its_images_and_drops_the_copies(pipeline):
    plain = to_uint8(generate(pipeline, rows(3)))
    padded = to_uint8(generate(pipeline, rows(3), pad_to=5))
    assert padded.shape == plain.shape == (3, 32, 32, 3)
    assert (padded.int() - plain.int()).abs().max() <= 1  # another batch size: float rounding only


def test_on_device_clip_preprocessing_matches_the_processor_within_1e_3(tiny_dirs, pipeline):
    model, processor = load_clip("tiny", CPU)
    generated = to_uint8(generate(pipeline, rows(4)))
    noise = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 96, 64, 3), dtype=np.uint8))
    prompts = [f"prompt {i}" for i in range(4)]
    for pixels in (generated, noise):
        exact = ClipScorer(model, processor, CPU, on_device=False).cosines(pixels, prompts)
        fast = ClipScorer(model, processor, CPU, on_device=True).cosines(pixels, prompts)
        assert np.abs(exact - fast).max() < 1e-3
    # Pixel values agree to about one 8-bit level after normalization.
    reference = processor.image_processor(images=[Image.fromarray(p) for p in noise.numpy()], return_tensors="pt")
    ours = preprocess_on_device(noise, processor.image_processor)
    assert ours.shape == reference["pixel_values"].shape
    assert (ours - reference["pixel_values"]).abs().mean() < 0.01


@pytest.mark.parametrize(("fmt", "magic"), [("png", b"\x89PNG"), ("webp", b"RIFF"), ("jpeg", b"\xff\xd8\xff")])
def test_image_formats(fmt, magic):
    pixels = np.random.default_rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    data = encode_image(pixels, ImageEncoding(image_format=fmt, png_compress_level=1, quality=90))
    assert data.startswith(magic)
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert decoded.shape == pixels.shape
    if fmt == "png":
        assert np.array_equal(decoded, pixels)
        smaller = encode_image(pixels, ImageEncoding(image_format="png", png_compress_level=9, quality=95))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(smaller))), pixels)


def test_fast_path_switches_configure_the_pipeline(tiny_dirs, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compiled.append((fn, kw)) or fn)
    pipe = load_pipeline("tiny", None, CPU, torch.float32)
    decode = pipe.vae.decode
    fast = fast_paths(compile=True, channels_last=True, vae_slicing=True, vae_tiling=True)
    assert apply_fast_paths(pipe, fast, CPU, 4, DEFAULTS) == ["channels_last", "vae_tiling", "vae_slicing", "compile"]
    assert [fn for fn, _ in compiled] == [pipe.unet, decode] and all(kw == {"dynamic": False} for _, kw in compiled)
    conv = pipe.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert pipe.vae.use_slicing and pipe.vae.use_tiling
    # "auto" turns nothing on on the CPU: the plain path stays exact there.
    assert apply_fast_paths(load_pipeline("tiny", None, CPU, torch.float32), fast_paths(), CPU, 4, DEFAULTS) == []


def test_encoding_on_threads_writes_the_same_bytes_as_inline(tmp_path, tiny_dirs):
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"prompt": [f"p {i}" for i in range(6)]}), manifest)
    task = ShardTask(0, str(manifest), 0, 6, 0, has_id_column=False)
    digests = []
    for threads in (0, 3):
        base = worker_settings_for(
            tmp_path / f"out-{threads}", key="k", generation={"steps": 1}, resources={"batch_size": 2}
        )
        worker = GenerationWorker(replace(base, fast=replace(base.fast, writer_threads=threads)), 0)
        result = list(worker.run_shard(task))[-1]
        digests.append(pq.read_table(result.file).column("image_sha256").to_pylist())
    assert digests[0] == digests[1] and None not in digests[0]
