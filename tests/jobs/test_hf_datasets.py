"""An output folder loads with Hugging Face `datasets` as it is: images as `Image` features, no cast."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from jobs.cli.main import main
from tests.conftest import read_output, write_config, write_manifest
from workers.io.hf_features import hf_features


@pytest.mark.slow  # a whole job, then datasets
def test_the_output_loads_with_datasets_and_images_decode(tmp_path, ray_session, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    manifest = write_manifest(
        tmp_path / "prompts.parquet",
        {"id": [10, 11, 12, 13, 14], "prompt": [f"a drawing of {w}" for w in "abcde"], "category": list("xxyyz")},
    )
    output = tmp_path / "out"
    assert main(["run", str(write_config(tmp_path / "c.yaml", manifest, output)), "--quiet"]) == 0

    files = sorted(str(p) for p in (output / "data").glob("shard-*.parquet"))
    dataset = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "hf-cache"))
    assert isinstance(dataset.features["image"], datasets.Image)
    assert dataset.features["clip_score"] == datasets.Value("float32")
    assert dataset.features["id"] == datasets.Value("int64")
    assert dataset["id"] == [10, 11, 12, 13, 14]
    assert dataset["category"] == list("xxyyz")

    written = read_output(output)
    for row, image in zip(written.to_pylist(), dataset["image"]):
        assert isinstance(image, Image.Image)
        expected = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])))
        assert np.array_equal(np.asarray(image), expected)
    assert dataset["clip_score"] == written.column("clip_score").to_pylist()


def test_features_describe_pass_through_columns_or_are_left_out():
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            ("weights", pa.list_(pa.float64())),
            ("meta", pa.struct([("source", pa.string()), ("when", pa.timestamp("ms", tz="UTC"))])),
        ]
    )
    assert hf_features(schema) == {
        "id": {"dtype": "string", "_type": "Value"},
        "image": {"_type": "Image"},
        "weights": {"_type": "List", "feature": {"dtype": "float64", "_type": "Value"}},
        "meta": {
            "source": {"dtype": "string", "_type": "Value"},
            "when": {"dtype": "timestamp[ms, tz=UTC]", "_type": "Value"},
        },
    }
    # A type this module cannot describe: no features at all, so `datasets` infers them itself.
    assert hf_features(pa.schema([("id", pa.int64()), ("price", pa.decimal128(10, 2))])) is None
