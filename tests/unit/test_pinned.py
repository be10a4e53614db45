"""Pinned pixels and scores of the tiny models (diffusers' `expected_slice` habit).

The other pixel tests compare genbatch with live diffusers and transformers calls, so a library upgrade
that moves pixels for everyone passes them unnoticed. These values were taken once, through the actor's
own code, with the versions below (the ones requirements.lock pins). If an upgrade moves them, check
the change is expected, then re-pin, and say so in the commit.
"""

from __future__ import annotations

from importlib import metadata

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import worker_settings_for
from tests.reference import decode_png
from workers.tasks import ShardTask
from workers.worker import GenerationWorker

PINNED_WITH = {"torch": "2.13.0+cpu", "diffusers": "0.42.1", "transformers": "5.23.0"}
PROMPTS = ["a red fox in the snow", "a lighthouse at dusk"]
SEEDS = [0, 1234]
# Bottom-right 3x3 of the red channel, the mean of all pixels, and the CLIP cosine, per image.
EXPECTED = [
    ([[82, 113, 116], [122, 165, 138], [124, 147, 135]], 119.7421875, 0.29775571823120117),
    ([[152, 136, 115], [159, 131, 137], [90, 100, 132]], 120.63736979166667, 0.24057646095752716),
]


@pytest.fixture(scope="module")
def output(tmp_path_factory, tiny_dirs) -> pa.Table:
    tmp_path = tmp_path_factory.mktemp("pinned")
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"prompt": PROMPTS, "seed": pa.array(SEEDS, pa.int64())}), manifest)
    settings = worker_settings_for(tmp_path / "out", key="pinned", resources={"batch_size": 1})
    worker = GenerationWorker(settings, 0)
    assert worker.load_error is None, worker.load_error
    result = list(worker.run_shard(ShardTask(0, str(manifest), 0, len(PROMPTS), 0, has_id_column=False)))[-1]
    return pq.read_table(result.file)


def _versions_note() -> str:
    now = {name: metadata.version(name) for name in PINNED_WITH}
    return f"pinned with {PINNED_WITH}, running {now}"


@pytest.mark.parametrize("index", range(len(PROMPTS)))
def test_tiny_model_pixels_are_the_pinned_ones(output, index):
    pixels = decode_png(output.column("image")[index].as_py()["bytes"])
    corner, mean, _ = EXPECTED[index]
    assert pixels.shape == (32, 32, 3)
    # One 8-bit level of slack: float reductions may round differently on another CPU.
    np.testing.assert_allclose(pixels[-3:, -3:, 0], corner, atol=1, err_msg=_versions_note())
    assert pixels.mean() == pytest.approx(mean, abs=0.05), _versions_note()


@pytest.mark.parametrize("index", range(len(PROMPTS)))
def test_tiny_clip_scores_are_the_pinned_ones(output, index):
    assert output.column("clip_cosine")[index].as_py() == pytest.approx(EXPECTED[index][2], abs=1e-4), _versions_note()
