"""benchmarks/gpu_throughput.py on the CPU: drift figures, the stored baseline, model reuse, and a stop mid-run."""

from __future__ import annotations

import io
import math
import os
import signal
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import gpu_throughput as bench  # noqa: E402  (benchmarks/ is not a package)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def measurement(quantize: str, scores: dict, images: dict, batch: int = 2) -> bench.Measurement:
    return bench.Measurement("genbatch", batch, False, quantize, len(images), 1.0, 2.0, 3.0, scores, images)


SMOKE_RUN = bench.Run(bench.MODES[("sd15-sized", True)], steps=2, size=8, threads=1, rows=None, min_features=16)


def test_drift_is_the_mean_clip_delta_and_the_psnr_over_all_pixels(tmp_path):
    rng = np.random.default_rng(0)
    exact = {i: rng.integers(0, 256, (8, 8, 3)) for i in range(3)}
    noisy = {i: np.clip(a + rng.integers(-3, 4, a.shape), 0, 255) for i, a in exact.items()}
    baseline = bench.Baseline(tmp_path, SMOKE_RUN)
    assert baseline.describe() == "none yet"
    first = measurement("none", {0: 30.0, 1: 31.0, 2: 32.0}, {i: png(a) for i, a in exact.items()})
    baseline.add(first)
    assert baseline.drift(first) == bench.Drift(3, 0.0, math.inf)
    # Another run's images, ids 1 and 2 and a new id 9: compared over the ids both have.
    later = measurement("int8", {1: 31.5, 2: 31.0, 9: 1.0}, {1: png(noisy[1]), 2: png(noisy[2]), 9: png(exact[0])})
    mse = np.mean([(noisy[i].astype(float) - exact[i]) ** 2 for i in (1, 2)])
    drift = baseline.drift(later)
    assert (drift.images, drift.clip_delta) == (2, pytest.approx(0.75))
    assert drift.psnr_db == pytest.approx(10 * np.log10(255**2 / mse))
    # Kept on disk for later calls; an unquantized run only adds the ids the baseline lacks.
    baseline.add(measurement("none", {0: 99.0, 7: 5.0}, {0: png(noisy[0]), 7: png(exact[1])}, batch=4))
    again = bench.Baseline(tmp_path, SMOKE_RUN)
    assert again.drift(first) == bench.Drift(3, 0.0, math.inf)  # id 0 is still the first run's
    assert again.describe() == "4 images (batch 2, compile off; batch 4, compile off)"
    assert bench.Baseline(tmp_path, bench.Run(SMOKE_RUN.mode, 3, 8, 1, None, 16)).describe() == "none yet"


def test_the_table_has_a_row_per_quantize_option_and_says_when_it_was_interrupted():
    rows = [
        bench.Measurement("plain diffusers", 2, False, "none", 8, 1.0, 2.0, 4.0),
        bench.Measurement("genbatch", 2, False, "none", 8, 1.0, 2.2, 4.0, drift=bench.Drift(8, 0.0, math.inf)),
        bench.Measurement("genbatch", 2, False, "int8", 8, 1.0, 3.0, 4.0, drift=bench.Drift(8, 0.061, 53.61)),
    ]
    flop = bench.FlopCount({"unet": 1e12}, 3)
    args = Namespace(peak_tflops=989.0, repeats=1)
    failed = "batch 2, compile off, quantize fp8: ConfigError: performance.quantize: fp8 needs a CUDA GPU"
    table = bench.render_table(
        SMOKE_RUN, args, "CPU", flop, rows, "8 images", "SIGTERM; 1 of 2 points measured", [failed]
    )
    lines = table.splitlines()
    assert f"- **failed**: {failed}" in lines  # a point that raised costs its row, not the table
    assert lines[0].endswith("(INTERRUPTED)")
    assert (
        "- **interrupted** (SIGTERM; 1 of 2 points measured): the rows below are the measurements that finished"
        in lines
    )
    body = [line for line in lines if line.startswith("| 2 |")]
    assert body == [
        "| 2 | off | none | plain diffusers | 8 | 1.0 | 4.0 | 2.000 | 2 | n/a |  |  |  |",
        "| 2 | off | none | genbatch | 8 | 1.0 | 4.0 | 2.200 | 2.2 | n/a | 1.10x | 0.000 | inf |",
        "| 2 | off | int8 | genbatch | 8 | 1.0 | 4.0 | 3.000 | 3 | n/a |  | 0.061 | 53.6 |",  # no plain int8 row
    ]


def test_built_models_are_reused_by_a_second_call(tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="gpu_throughput")
    sd_dir, clip_dir = bench.build_models(bench.SMOKE_SDXL, tmp_path)
    files = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()}
    assert (sd_dir / "text_encoder_2" / "model.safetensors").is_file()  # SDXL's second text encoder
    assert bench.build_models(bench.SMOKE_SDXL, tmp_path) == (sd_dir, clip_dir)
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()} == files
    assert f"reusing models in {tmp_path}" in caplog.text


@pytest.mark.slow  # builds SDXL-sized models on the meta device
def test_sdxl_sized_flop_are_counted_on_the_meta_device():
    flop = bench.count_flop_per_image(bench.SDXL_SIZED, 20, 1024, "a photo of object number 0")
    assert flop.unet_evaluations == 20  # Euler: one per step
    assert 280e12 < flop.per_image < 283e12  # 281.3 T: 270.4 UNet, 10.5 VAE decode (README, Performance)


def test_flux_dev_sized_transformer_flop_match_an_analytic_count():
    # By hand: each of the 19 double-stream and 38 single-stream blocks does 12 d^2 multiply-adds per token
    # (double: q, k, v, out and a 4x MLP for each stream; single: q, k, v, a 4x MLP in, (d + 4d) -> d out)
    # and 2 N^2 d in attention over all N = 4096 image + 512 T5 tokens; 2 FLOP per multiply-add. The
    # embedders and the per-block modulations (one token each) are under 0.1%.
    d, n = 24 * 128, (1024 // 16) ** 2 + 512
    analytic = 2 * (19 + 38) * (12 * d * d * n + 2 * n * n * d)
    counted = bench.dit.count_transformer_flop(bench.dit.FLUX_DEV_SIZED, 1024)  # meta device: no weights
    assert counted == pytest.approx(analytic, rel=2e-3)  # 74.38 T counted, 74.36 T by hand
    assert analytic / 1e12 == pytest.approx(74.36, abs=0.01)


def test_flux_rows_print_the_published_anchors_and_the_goals_with_the_fp8_drift():
    run = bench.Run(bench.MODES[("flux-dev-sized", False)], 28, 1024, 16, None, 512, in_memory=True)
    rows = [
        bench.Measurement("plain diffusers", 1, False, "none", 8, 60.0, 0.16, 100.0, drift=bench.Drift(8, 0, math.inf)),
        bench.Measurement("plain diffusers", 1, True, "none", 8, 90.0, 0.26, 120.0, drift=bench.Drift(8, 0, math.inf)),
        bench.Measurement("plain diffusers", 1, True, "fp8", 8, 90.0, 0.31, 120.0, drift=bench.Drift(8, 0.42, 31.25)),
    ]
    flop = bench.FlopCount({"transformer": 2083e12, "vae decode": 10e12}, 28)
    table = bench.render_table(run, Namespace(peak_tflops=989.0, repeats=1), "H100", flop, rows, "8 images")
    lines = table.splitlines()
    assert "| 1 | on | fp8 | plain diffusers | 8 | 90.0 | 120.0 | 0.310 | 648.8 | 65.6 |  | 0.420 | 31.2 |" in lines
    assert lines[-3:] == [
        "Published: FLUX.1-dev 1024², 28 steps, one H100, xDiT: 6.71 s eager, 4.30 s compiled per image "
        "(0.149 / 0.233 images/s); SGLang H100 baseline: 7.35 s at 50 steps.",
        "Goal FLUX.1-dev-sized >= 0.25 images/s compiled bf16: 0.260 images/s, 3.85 s per image (plain diffusers, "
        "batch 1, drift 0.000 Δ CLIP / inf dB): met.",
        "Goal FLUX.1-dev-sized >= 0.33 images/s with fp8: 0.310 images/s, 3.23 s per image (plain diffusers, "
        "batch 1, drift 0.420 Δ CLIP / 31.2 dB): NOT met.",
    ]
    assert "(transformer 2083, vae decode 10; the transformer 99.5%)" in table


def test_gpu_check_asks_for_the_wheels_it_installs_before_doing_anything(tmp_path):
    done = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_check.sh"), "--out", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert (done.returncode, done.stderr) == (
        2,
        "gpu_check.sh: give the folder of wheels to install (or --tiny for the CPU check)\n",
    )
    assert (tmp_path / "results.md").read_text() == ""  # nothing was run


@pytest.mark.slow  # a smoke run of the benchmark (a Ray job per measurement), stopped by SIGTERM mid-run
def test_a_stopped_smoke_run_prints_and_appends_what_it_measured(tmp_path):
    results = tmp_path / "RESULTS.md"
    args = [
        sys.executable,
        str(BENCHMARKS / "gpu_throughput.py"),
        "--smoke",
        "--batch-sizes", "2",
        "--quantize", "none", "int8",
        "--runners", "genbatch",
        "--threads", "1",
        "--model-dir", str(tmp_path / "models"),
        "--results", str(results),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(BENCHMARKS.parent)}
    log = tmp_path / "log.txt"
    with log.open("w") as sink:
        process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=sink, text=True, env=env)
        deadline = time.monotonic() + 600
        # Stop it once the first measurement (quantize none) is done, while int8 runs.
        while "quantize int8" not in log.read_text() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, log.read_text()[-3000:]
    body = [line for line in out.splitlines() if line.startswith("| 2 |")]
    assert len(body) == 1 and body[0].startswith("| 2 | off | none | genbatch | 8 |")
    assert body[0].endswith("| 0.000 | inf |")  # the baseline's own images
    assert "SIGTERM; 1 of 2 batch/compile/quantize points measured" in out
    assert out.strip() in results.read_text()
