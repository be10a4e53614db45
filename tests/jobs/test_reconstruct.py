"""`mode: reconstruct`: each manifest image through the VAE and back, with MSE, PSNR and latent stats."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from jobs.cli.main import main
from tests.conftest import read_output, write_config, write_manifest
from tests.reference import decode_png
from workers.models import tiny


def noise_png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def independent_round_trip(vae: AutoencoderKL, png: bytes) -> tuple[np.ndarray, float, float]:
    """The reconstruction a user would compute by hand with diffusers' AutoencoderKL."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    x = torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1)[None] / 127.5 - 1
    with torch.no_grad():
        latent = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor
        decoded = vae.decode(latent / vae.config.scaling_factor).sample
    image = ((decoded[0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    return image, float(latent.mean()), float(latent.std())


@pytest.fixture(scope="module")
def reconstructed(tmp_path_factory, ray_session):
    tmp_path = tmp_path_factory.mktemp("reconstruct")
    pngs = [noise_png(1), noise_png(2), noise_png(3)]
    manifest = write_manifest(
        tmp_path / "images.parquet",
        {"id": ["a", "b", "c", "d"], "init_image": pa.array([*pngs, b"\x89PNG but truncated"])},
    )
    config = write_config(
        tmp_path / "j.yaml",
        manifest,
        tmp_path / "out",
        mode="reconstruct",
        resources={"workers": 1, "gpus_per_worker": 0, "cpus_per_worker": 1, "batch_size": 1},
    )
    code = main(["run", str(config), "--quiet"])
    return code, read_output(tmp_path / "out"), pngs, tmp_path / "out"


@pytest.mark.slow  # a job in the other mode: an actor of its own
def test_reconstructions_and_their_errors_match_an_independent_computation(reconstructed):
    code, table, pngs, _ = reconstructed
    assert code == 1  # the truncated PNG fails its row only
    rows = table.to_pylist()
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "error"]
    assert rows[3]["error"].startswith("init_image: not a decodable image")
    assert rows[3]["recon_mse"] is None and rows[3]["image"] is None

    torch.set_num_threads(1)  # as in the actors (cpus_per_worker: 1): same reduction order
    vae = AutoencoderKL.from_pretrained(tiny.tiny_pipeline_dir(), subfolder="vae", use_safetensors=True)
    for row, png in zip(rows[:3], pngs):
        expected, latent_mean, latent_std = independent_round_trip(vae, png)
        written = decode_png(row["image"]["bytes"])
        assert np.array_equal(written, expected), row["id"]
        original = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        mse = float(np.mean(((written.astype(np.float64) - original) / 255.0) ** 2))
        assert row["recon_mse"] == pytest.approx(mse, rel=1e-12)
        assert row["recon_psnr"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-12)
        assert row["latent_mean"] == pytest.approx(latent_mean, abs=1e-5)
        assert row["latent_std"] == pytest.approx(latent_std, rel=1e-4)
        assert row["clip_score"] is None  # no prompt, nothing to score against


@pytest.mark.slow  # a job in the other mode: an actor of its own
def test_the_report_summarises_the_round_trip(reconstructed, tmp_path, capsys):
    _, table, _, output = reconstructed
    assert main(["report", str(output), "-o", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    mse = np.array(table.column("recon_mse").to_pylist()[:3])
    assert report["reconstruction"]["mse"]["n"] == 3
    assert report["reconstruction"]["mse"]["mean"] == pytest.approx(mse.mean())
    assert report["reconstruction"]["psnr_db"]["median"] == pytest.approx(np.median(10 * np.log10(1 / mse)))
    assert report["reconstruction"]["exact"] == 0
    assert "VAE round trip (mode: reconstruct)" in (tmp_path / "report" / "report.md").read_text()
    assert "VAE round trip (mode: reconstruct)" in (tmp_path / "report" / "report.html").read_text()


def test_reconstruct_mode_needs_an_init_image_column(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "p.parquet", {"prompt": ["x"]})
    config = write_config(tmp_path / "j.yaml", manifest, tmp_path / "out", mode="reconstruct")
    assert main(["run", str(config), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"genbatch: error: {manifest}: no 'init_image' column (mode: reconstruct) (columns: prompt)"
    )
