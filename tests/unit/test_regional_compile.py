"""performance.compile: regional (diffusers' compile_repeated_blocks on the transformer): when an actor chooses
it, how the compile cache keys it, and (marked `minutes`) its images and compile seconds against a full compile."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from jobs.config.schema import load_config
from jobs.errors import ConfigError
from tests.conftest import worker_settings_for, write_config, write_manifest
from tests.reference import decode_png
from workers.models.families.flux import FLUX
from workers.models.families.stable_diffusion import STABLE_DIFFUSION
from workers.pipeline.compile_cache import CompileKey
from workers.pipeline.fastpaths import choose_compile
from workers.tasks import ShardTask
from workers.worker import GenerationWorker

logger = logging.getLogger(__name__)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU; nothing runs on it


def test_auto_compiles_dit_families_regionally_with_their_regional_payback():
    after = FLUX.payback.regional().pays_back_after
    assert after < FLUX.payback.pays_back_after  # less compile time to win back
    assert choose_compile("auto", CUDA, after, FLUX) == choose_compile("auto", CUDA, after, FLUX)
    chosen = choose_compile("auto", CUDA, after, FLUX)
    assert (chosen.on, chosen.regional, chosen.setting) == (True, True, "regional")
    assert chosen.reason == f"on: auto, {after} images per worker pay back ~10 s, regionally"
    assert not choose_compile("auto", CUDA, after - 1, FLUX).on
    # UNet families compile whole, as before; an explicit setting is obeyed; nothing compiles on the CPU with auto.
    assert choose_compile("auto", CUDA, None, STABLE_DIFFUSION).setting is True
    assert choose_compile("regional", CPU, 1, FLUX).setting == "regional"
    assert choose_compile(True, CUDA, None, FLUX).setting is True
    assert not choose_compile("auto", CPU, None, FLUX).on
    assert "estimated" in FLUX.payback.source


def test_regional_kernels_have_a_compile_cache_file_of_their_own_and_full_ones_keep_theirs():
    key = CompileKey("2.13.0", "0.42.1", "cpu", "tiny-flux", None, None, "float32", 2, 32, 32, False)
    regional = replace(key, regional=True)
    # The name a full compile's key had before the option existed: its field is left out of the hash when off.
    assert key.file_name() == "torch-2.13.0-cpu-tiny-flux-float32-b2-32x32-4f69b5d393018fe3.torch-cache"
    assert regional.file_name().startswith("torch-2.13.0-cpu-tiny-flux-float32-regional-b2-32x32-")
    assert regional.file_name()[-28:] != key.file_name()[-28:]  # another hash


def test_regional_is_refused_for_a_family_without_repeated_blocks_at_config_time(tmp_path):
    path = write_config(tmp_path / "job.yaml", "m.parquet", tmp_path / "out", performance={"compile": "regional"})
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value) == (
        f"{path}: performance.compile: 'regional' compiles a model's repeated blocks, and genbatch has none listed "
        "for Stable Diffusion 1/2 models; use true or auto"
    )
    flux = write_config(
        tmp_path / "flux.yaml",
        "m.parquet",
        tmp_path / "out",
        model={"id": "tiny-flux"},
        performance={"compile": "regional"},
    )
    assert load_config(flux).performance.compile == "regional"


@pytest.mark.minutes
def test_regional_compile_gives_the_full_compiles_pixels_within_float_rounding(tmp_path, model_cache):
    """tiny-flux on the CPU, uncompiled, compiled whole and compiled regionally, one worker each: the same images
    within one 8-bit level. The compile seconds (first micro-batch) are logged, not asserted."""
    manifest = write_manifest(tmp_path / "m.parquet", {"prompt": ["a red fox", "a lighthouse"], "seed": [3, 14]})
    images, seconds = {}, {}
    for mode in (False, True, "regional"):
        torch._dynamo.reset()
        settings = worker_settings_for(
            tmp_path / str(mode),
            model={"id": "tiny-flux"},
            generation={"steps": 2, "guidance_scale": 3.5},
            clip={"model": None},
            resources={"batch_size": 1},
            performance={"compile": mode, "compile_cache": str(tmp_path / f"kernels-{mode}")},
        )
        worker = GenerationWorker(settings, 0)
        assert worker.ready().compile is (mode is not False)
        transformer = worker.pipeline.transformer
        if mode == "regional":  # the blocks are compiled in place, the transformer itself is not wrapped
            assert all(block._compiled_call_impl is not None for block in transformer.transformer_blocks)
            assert not isinstance(transformer, torch._dynamo.eval_frame.OptimizedModule)
        started = time.perf_counter()
        result = list(worker.run_shard(ShardTask(0, str(manifest), 0, 2, 0, has_id_column=False)))[-1]
        seconds[mode] = time.perf_counter() - started
        written = pq.read_table(result.file).column("image").to_pylist()
        images[mode] = [decode_png(image["bytes"]).astype(int) for image in written]
    logger.warning("shard seconds (compiling included): %s", seconds)
    for mode in (True, "regional"):
        for got, expected in zip(images[mode], images[False]):
            assert np.abs(got - expected).max() <= 1, mode
