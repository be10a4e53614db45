"""performance.cache on the tiny FLUX.1 model: each option's images and skip counts against a plain diffusers call
with the same hook, no hook state carried from one micro-batch or job to the next, and resumes that give the same
bytes. The workers run in-process (one tiny pipeline each), the end-to-end job on one session actor."""

from __future__ import annotations

import json

import diffusers
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from diffusers import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig
from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

from jobs.cli.main import main
from jobs.config.schema import JobConfig, load_config
from jobs.errors import ConfigError
from tests.conftest import read_output, small_config, worker_settings_for, write_config, write_manifest
from tests.reference import decode_png
from workers.models.loading import pipeline_source
from workers.tasks import ShardTask
from workers.worker import GenerationWorker

MODEL, SIZE, STEPS, GUIDANCE = "tiny-flux", 32, 4, 3.5
PROMPTS = {"prompt": ["a red fox", "a lighthouse at dusk"], "seed": [3, 14]}
# Each option with settings that skip steps even on random weights, as genbatch's config and as diffusers' own.
OPTIONS = {
    "first_block": ({"cache_threshold": 1.0}, lambda: FirstBlockCacheConfig(threshold=1.0)),
    "taylorseer": (
        {"cache_warmup_steps": 1, "cache_interval": 2},
        lambda: TaylorSeerCacheConfig(
            disable_cache_before_step=1, cache_interval=2, taylor_factors_dtype=torch.float32
        ),
    ),
    "magcache": (
        {"cache_threshold": 0.5, "cache_warmup_steps": 1},
        lambda: MagCacheConfig(
            threshold=0.5, retention_ratio=0.25, num_inference_steps=STEPS, mag_ratios=FLUX_MAG_RATIOS
        ),
    ),
}


@pytest.fixture(scope="module")
def plain(model_cache):
    torch.set_num_threads(1)  # as in the workers (num_threads 1): the same reduction order
    pipeline = diffusers.FluxPipeline.from_pretrained(pipeline_source(MODEL), use_safetensors=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def plain_images(pipeline, hook_config, prompts: list[str], seeds: list[int]) -> tuple[list[np.ndarray], int]:
    """A plain diffusers call with the hook on a fresh transformer state: its images, and the denoiser passes the
    hook skipped, counted apart from genbatch: the last block's attention runs only on the steps it computes."""
    transformer = pipeline.transformer
    runs = []
    handle = transformer.single_transformer_blocks[-1].attn.to_q.register_forward_hook(lambda *_: runs.append(1))
    transformer.enable_cache(hook_config)
    try:
        images = pipeline(
            prompts,
            num_inference_steps=STEPS,
            guidance_scale=GUIDANCE,
            width=SIZE,
            height=SIZE,
            generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
        ).images
    finally:
        transformer.disable_cache()
        handle.remove()
    return [np.asarray(image) for image in images], STEPS - len(runs)


def run_in_process(tmp_path, name: str, cache: str, batch_size: int = 1, repeat: int = 1) -> list:
    """One worker, the cache option `name`'s settings: the shard table of each of `repeat` runs of all rows."""
    manifest = write_manifest(tmp_path / "prompts.parquet", PROMPTS)
    settings = worker_settings_for(
        tmp_path / name,
        model={"id": MODEL},
        generation={"steps": STEPS, "guidance_scale": GUIDANCE, "width": SIZE, "height": SIZE},
        clip={"model": None},
        resources={"batch_size": batch_size},
        performance={"cache": cache, **OPTIONS[cache][0]},
    )
    worker = GenerationWorker(settings, 0)
    assert worker.load_error is None, worker.load_error
    task = ShardTask(0, str(manifest), 0, len(PROMPTS["prompt"]), 0, has_id_column=False)
    return [pq.read_table(list(worker.run_shard(task))[-1].file) for _ in range(repeat)]


@pytest.mark.parametrize("cache", list(OPTIONS))
def test_each_cache_gives_the_pixels_and_skip_counts_of_a_plain_call_with_the_same_hook(cache, plain, tmp_path):
    """Two micro-batches of one row on one worker, twice: each row equals a plain call on a fresh hook (no state
    from the micro-batch or the run before), and records the passes the hook skipped."""
    first, second = run_in_process(tmp_path, cache, cache, repeat=2)
    assert first.column("status").to_pylist() == ["ok"] * 2
    for row in first.to_pylist():
        [expected], skipped = plain_images(plain, OPTIONS[cache][1](), [row["prompt"]], [row["seed"]])
        assert np.array_equal(decode_png(row["image"]["bytes"]), expected), row["prompt"]
        assert row["cache_skipped_steps"] == skipped > 0, row["prompt"]
    assert second.column("image_sha256").to_pylist() == first.column("image_sha256").to_pylist()


def test_first_block_decides_for_the_whole_micro_batch_as_a_batched_plain_call_does(plain, tmp_path):
    (table,) = run_in_process(tmp_path, "first_block", "first_block", batch_size=2)
    expected, skipped = plain_images(plain, OPTIONS["first_block"][1](), PROMPTS["prompt"], PROMPTS["seed"])
    for row, image in zip(table.to_pylist(), expected):
        assert np.array_equal(decode_png(row["image"]["bytes"]), image), row["prompt"]
    assert table.column("cache_skipped_steps").to_pylist() == [skipped] * 2


def test_a_cached_job_resumes_to_the_same_bytes_reuses_its_actor_cleanly_and_is_reported(plain, tmp_path, ray_session):
    """On one session actor: job A, then job B (other prompts, same settings) equal to plain calls on fresh hooks;
    A resumed after losing a shard rewrites the same bytes; the cache is part of A's identity; the report sums it."""
    manifest = write_manifest(tmp_path / "a.parquet", PROMPTS)
    performance = {"cache": "first_block", "cache_threshold": 1.0}
    sections = {
        "model": {"id": MODEL},
        "generation": {"steps": STEPS, "guidance_scale": GUIDANCE, "width": SIZE, "height": SIZE},
        "resources": {"batch_size": 1},
        "shard_size": 1,
        "performance": performance,
    }
    config_a = write_config(tmp_path / "a.yaml", manifest, tmp_path / "a", **sections)
    assert main(["run", str(config_a), "--quiet"]) == 0
    job = json.loads((tmp_path / "a" / "job.json").read_text())
    assert job["identity"]["performance"] == performance
    before = read_output(tmp_path / "a")
    (tmp_path / "a" / "data" / "shard-00001.parquet").unlink()
    assert main(["run", str(config_a), "--quiet"]) == 0
    after = read_output(tmp_path / "a")
    assert after.column("image_sha256").to_pylist() == before.column("image_sha256").to_pylist()

    other = {"prompt": ["a blue boat"], "seed": [7]}
    manifest_b = write_manifest(tmp_path / "b.parquet", other)
    config_b = write_config(tmp_path / "b.yaml", manifest_b, tmp_path / "b", **sections)
    assert main(["run", str(config_b), "--quiet"]) == 0
    for row in read_output(tmp_path / "b").to_pylist():
        [expected], skipped = plain_images(plain, OPTIONS["first_block"][1](), [row["prompt"]], [row["seed"]])
        assert np.array_equal(decode_png(row["image"]["bytes"]), expected), row["prompt"]
        assert row["cache_skipped_steps"] == skipped

    assert main(["report", str(tmp_path / "a")]) == 0
    report = json.loads((tmp_path / "a" / "report" / "report.json").read_text())
    skipped = sum(before.column("cache_skipped_steps").to_pylist())
    assert report["step_cache"] == {
        "cache": "first_block",
        "images": 2,
        "skipped_steps": skipped,
        "steps": 2 * STEPS,
        "skip_rate": skipped / (2 * STEPS),
        "skipped_per_image": skipped / 2,
    }
    assert "## Step cache (performance.cache: first_block)" in (tmp_path / "a" / "report" / "report.md").read_text()


# Config time: no worker.


def test_cache_none_leaves_the_job_identity_and_output_columns_as_they_were(tmp_path):
    from jobs.inputs.manifest import Manifest
    from jobs.runfolder.resume import job_identity

    manifest = Manifest("m", (), ("prompt",), False, 1, "f")
    config = JobConfig.model_validate(small_config("m.parquet", tmp_path / "out", model={"id": MODEL}))
    assert config.performance.cache == "none"
    assert "performance" not in job_identity(config, manifest)
    cached = JobConfig.model_validate(
        small_config("m.parquet", tmp_path / "out", model={"id": MODEL}, performance={"cache": "taylorseer"})
    )
    assert job_identity(cached, manifest)["performance"] == {
        "cache": "taylorseer",
        "cache_warmup_steps": None,
        "cache_interval": None,
    }


def test_a_resume_with_another_cache_is_refused_naming_the_setting(tmp_path):
    from jobs.errors import OutputError
    from jobs.runfolder.jobfile import JobRecord
    from jobs.runfolder.resume import check_same_job

    before = {"seed": 0, "performance": {"quantize": "int8", "quantize_min_features": 512}}
    after = {"seed": 0, "performance": {**before["performance"], "cache": "magcache", "cache_threshold": 0.1}}
    with pytest.raises(OutputError) as error:
        check_same_job("out", JobRecord(identity=before, shards=0), after)
    assert "(performance.cache: 'none' -> 'magcache'; performance.cache_threshold: None -> 0.1)" in str(error.value)
    check_same_job("out", JobRecord(identity=after, shards=0), after)


@pytest.mark.parametrize(
    "model, performance, message",
    [
        (
            "tiny",
            {"cache": "first_block"},
            "performance.cache: 'first_block' is not available for Stable Diffusion 1/2 models in diffusers' cache "
            "hooks; it supports none",
        ),
        (
            "tiny-qwen-image",
            {"cache": "magcache"},
            "performance.cache: 'magcache' is not available for Qwen-Image models in diffusers' cache hooks; "
            "it supports: first_block, taylorseer",
        ),
        (
            MODEL,
            {"cache": "taylorseer", "cache_threshold": 0.1},
            "performance: cache_threshold: cache 'taylorseer' takes cache_warmup_steps, cache_interval; remove the key",
        ),
        (
            MODEL,
            {"cache_interval": 2},
            "performance: cache_interval: cache 'none' takes no parameters; remove the key",
        ),
    ],
)
def test_a_cache_the_family_or_option_cannot_run_is_one_line_at_config_time(tmp_path, model, performance, message):
    path = write_config(
        tmp_path / "job.yaml", "m.parquet", tmp_path / "out", model={"id": model}, performance=performance
    )
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == f"{path}: {message}"
