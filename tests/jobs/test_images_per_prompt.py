"""generation.images_per_prompt: K distinct, reproducible images per manifest row."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch
from diffusers import StableDiffusionPipeline

from jobs.cli.main import main
from tests.conftest import read_output, write_config, write_manifest
from tests.reference import decode_png, plain_diffusers_image
from workers.io.rows import derive_seed
from workers.models import tiny

GENERATION = {
    "steps": 2,
    "guidance_scale": 7.5,
    "width": 32,
    "height": 32,
    "negative_prompt": "",
    "images_per_prompt": 3,
}


def test_each_row_gives_k_images_with_distinct_reproducible_seeds(tmp_path, capsys, ray_session):
    manifest = write_manifest(
        tmp_path / "p.parquet",
        {
            "id": ["a", "b", "c"],
            "prompt": ["a pear", "a plum", "a fig"],
            "seed": pa.array([None, 42, None], pa.int64()),
        },
    )
    config = write_config(
        tmp_path / "j.yaml",
        manifest,
        tmp_path / "out",
        seed=5,
        shard_size=2,
        generation=GENERATION,
        resources={"workers": 1, "gpus_per_worker": 0, "cpus_per_worker": 1, "batch_size": 1},
    )
    assert main(["run", str(config), "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "genbatch: done: 9 ok, 0 failed of 9 rows in 2 shards"
    table = read_output(tmp_path / "out")
    assert table.column("id").to_pylist() == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert table.column("image_index").to_pylist() == [0, 1, 2] * 3
    base = {"a": derive_seed(5, "a"), "b": 42, "c": derive_seed(5, "c")}
    expected_seeds = [
        base[i] if k == 0 else derive_seed(base[i], f"image-{k}") for i in ("a", "b", "c") for k in range(3)
    ]
    assert table.column("seed").to_pylist() == expected_seeds
    assert len(set(expected_seeds)) == 9
    assert len(set(table.column("image_sha256").to_pylist())) == 9  # nine different pictures

    torch.set_num_threads(1)  # as in the actors (cpus_per_worker: 1): same reduction order
    pipeline = StableDiffusionPipeline.from_pretrained(tiny.tiny_pipeline_dir(), use_safetensors=True)
    pipeline.set_progress_bar_config(disable=True)
    for row in table.to_pylist()[3:6]:  # b's three images, each a plain call with its own seed
        expected = plain_diffusers_image(pipeline, "a plum", "", row["seed"], 2, 7.5, 32, 32)
        assert np.array_equal(decode_png(row["image"]["bytes"]), expected)

    # A rerun verifies the shards (6 and 3 output rows) and has nothing to do; status counts images.
    assert main(["run", str(config), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("genbatch: nothing to do: all 2 shards are complete (9 ok, 0 failed")
    assert main(["status", str(tmp_path / "out")]) == 0
    assert "rows:     9 / 9 done (100.0%): 9 ok, 0 failed" in capsys.readouterr().out
