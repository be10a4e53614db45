"""Set-level metrics (FID, KID, CMMD) against a reference set, every figure recomputed here with numpy/scipy.

FID and KID use a small random conv net (the feature network is a seam: any object with a `name` that maps
PIL images to features); CMMD uses the built-in tiny CLIP, recomputed with transformers directly.
"""

from __future__ import annotations

import gc
import io
import json
import weakref

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from scipy import linalg

from jobs.cli.main import main
from jobs.errors import UsageError
from jobs.report.features import FeatureRows, extract_features
from jobs.report.image_sets import open_image_set
from jobs.report.inception import FidInceptionV3
from jobs.report.set_metrics import (
    FID_SKIPPED,
    compute_set_metrics,
    kernel_inception_distance,
    set_metrics_of_runs,
)
from tests.helpers.images import picture, png, write_image_folder
from tests.helpers.runs import make_run


class RandomConvFeatures:
    """A small random conv net built from a fixed seed: 6-d features, deterministic per image."""

    def __init__(self, seed: int = 0):
        torch.manual_seed(seed)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 3, stride=2), torch.nn.Tanh(), torch.nn.Conv2d(6, 6, 3), torch.nn.AdaptiveAvgPool2d(1)
        ).eval()
        self.name = f"random conv net (seed {seed})"
        self.calls = 0

    def __call__(self, images: list) -> np.ndarray:
        self.calls += 1
        pixels = torch.stack([torch.from_numpy(np.asarray(i, dtype=np.float32) / 255).permute(2, 0, 1) for i in images])
        with torch.no_grad():
            return self.net(pixels).flatten(1).double().numpy()


def decoded(pngs: list[bytes]) -> list:
    return [Image.open(io.BytesIO(p)).convert("RGB") for p in pngs]


def expected_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def expected_kid(a: np.ndarray, b: np.ndarray, subsets: int, size: int) -> tuple[float, float]:
    """Unbiased polynomial MMD² over subsets drawn as the README says: default_rng(0), run's then reference's."""
    rng, values, d = np.random.default_rng(0), [], a.shape[1]
    for _ in range(subsets):
        x, y = a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)]
        kxx, kyy, kxy = ((p @ q.T / d + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
        off = lambda k: (k.sum() - np.diag(k).sum()) / (size * (size - 1))  # noqa: E731
        values.append(off(kxx) + off(kyy) - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def expected_cmmd(a: np.ndarray, b: np.ndarray) -> float:
    """1000 × (mean k(a,a') + mean k(b,b') - 2 mean k(a,b)), RBF sigma = 10, all pairs as in the reference code."""
    k = lambda x, y: np.exp(-((x[:, None, :] - y[None, :, :]) ** 2).sum(-1) / (2 * 10.0**2)).mean()  # noqa: E731
    return 1000 * (k(a, a) + k(b, b) - 2 * k(a, b))


def tiny_clip_embeddings(images: list) -> np.ndarray:
    from transformers import CLIPModel, CLIPProcessor

    from workers.models import tiny

    model = CLIPModel.from_pretrained(tiny.tiny_clip_dir()).eval()
    processor = CLIPProcessor.from_pretrained(tiny.tiny_clip_dir())
    with torch.no_grad():
        embeds = model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output
    embeds = embeds.double().numpy()
    return embeds / np.linalg.norm(embeds, axis=1, keepdims=True)


RUN_IMAGES = 20


@pytest.fixture
def run_and_pictures(tmp_path):
    """A run of 22 rows (2 failed: no image) and the PNGs of its 20 ok rows, in row order."""
    run = make_run(tmp_path / "run", [25.0] * (RUN_IMAGES + 2), failed={4, 11}, shard_size=8)
    kept = [i for i in range(RUN_IMAGES + 2) if i not in (4, 11)]
    return run, [_run_png(i) for i in kept]


def _run_png(i: int) -> bytes:
    return png(i)


def reference_pictures(n: int = 26) -> list[bytes]:
    return [picture(1000 + i, bright=50) for i in range(n)]


def test_figures_match_an_independent_computation(tmp_path, run_and_pictures):
    run, run_pngs = run_and_pictures
    ref_pngs = reference_pictures()
    reference = tmp_path / "ref"
    reference.mkdir()
    for i, data in enumerate(ref_pngs):
        (reference / f"{i:03d}.png").write_bytes(data)
    network = RandomConvFeatures()
    result = compute_set_metrics(str(run), str(reference), fid_network=network, batch_size=4)
    a, b = network(decoded(run_pngs)), network(decoded(ref_pngs))  # the same images, decoded here
    assert (result["n_run"], result["n_reference"]) == (20, 26)
    assert result["fid"] == pytest.approx(expected_fid(a, b), rel=1e-6)
    kid_mean, kid_std = expected_kid(a, b, subsets=100, size=20)
    assert (result["kid_subsets"], result["kid_subset_size"]) == (100, 20)
    assert result["kid_mean"] == pytest.approx(kid_mean, rel=1e-6) and result["kid_std"] == pytest.approx(
        kid_std, rel=1e-6
    )
    assert kid_std > 0  # the reference's subsets differ
    clip_a, clip_b = tiny_clip_embeddings(decoded(run_pngs)), tiny_clip_embeddings(decoded(ref_pngs))
    assert result["cmmd"] == pytest.approx(expected_cmmd(clip_a, clip_b), rel=1e-5)
    assert result["cmmd_model"] == "tiny" and result["skipped"] == {}
    same = compute_set_metrics(str(run), str(run), fid_network=network)
    assert same["fid"] == pytest.approx(0, abs=1e-9) and same["cmmd"] == pytest.approx(0, abs=1e-9)


def test_kid_draws_subsets_smaller_than_the_sets():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(40, 7)), rng.normal(0.3, 1.2, size=(31, 7))
    mean, std, size = kernel_inception_distance(a, b, subsets=12, subset_size=9)
    assert size == 9
    assert (mean, std) == pytest.approx(expected_kid(a, b, subsets=12, size=9), rel=1e-9)


def test_every_kind_of_reference_gives_the_same_figures(tmp_path, run_and_pictures):
    run, _ = run_and_pictures
    pngs = reference_pictures(12)
    folder = write_image_folder(tmp_path / "folder", pngs)
    file = tmp_path / "ref.parquet"  # plain image bytes
    pq.write_table(pa.table({"caption": [f"c{i}" for i in range(12)], "image": pa.array(pngs, pa.binary())}), file)
    hf = tmp_path / "hf" / "data"  # HF-datasets style: {bytes, path} structs, in several files
    hf.mkdir(parents=True)
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for part, rows in enumerate((range(0, 5), range(5, 12))):
        images = pa.array([{"bytes": pngs[i], "path": f"{i}.png"} for i in rows], struct)
        pq.write_table(pa.table({"image": images}), hf / f"train-{part:05d}-of-00002.parquet")
    ref_run = make_run(tmp_path / "ref_run", [1.0] * 12, image=None, shard_size=5)
    from workers.io import storage

    for i, data in enumerate(pngs):  # an object store, through fsspec
        storage.write_bytes(f"memory://refs/set/{i:03d}.png", data)
    network = RandomConvFeatures()
    results = {
        name: compute_set_metrics(str(run), location, fid_network=network)
        for name, location in (
            ("folder", folder),
            ("file", str(file)),
            ("hf", str(tmp_path / "hf")),
            ("store", "memory://refs/set/"),
        )
    }
    kinds = {name: r.pop("reference_kind") for name, r in results.items()}
    assert kinds == {"folder": "images", "file": "parquet", "hf": "parquet", "store": "images"}
    assert results["store"].pop("reference") == "memory://refs/set"
    for name in ("file", "hf"):
        results[name].pop("reference")
    results["folder"].pop("reference")
    assert results["folder"]["n_reference"] == 12 and results["folder"]["fid"] > 0
    assert all(r.pop("skipped") == {} for r in results.values())
    figures = ("fid", "kid_mean", "kid_std", "cmmd")
    for name in ("file", "hf", "store"):  # the same images; only the summation order may differ (files sort apart)
        assert {k: v for k, v in results[name].items() if k not in figures} == {
            k: v for k, v in results["folder"].items() if k not in figures
        }
        assert [results[name][k] for k in figures] == pytest.approx([results["folder"][k] for k in figures], rel=1e-12)
    as_run = compute_set_metrics(str(run), str(ref_run), fid_network=network)
    expected = expected_fid(network(decoded(_run_pngs_of(run))), network(decoded([png(i) for i in range(12)])))
    assert as_run["reference_kind"] == "run" and as_run["fid"] == pytest.approx(expected, rel=1e-6)


def _run_pngs_of(run) -> list[bytes]:
    rows = [r for f in sorted((run / "data").glob("shard-*.parquet")) for r in pq.read_table(f).to_pylist()]
    return [row["image"]["bytes"] for row in rows if row["status"] == "ok"]


def test_report_without_fid_weights_skips_fid_with_one_line_and_shows_cmmd(tmp_path, run_and_pictures, capsys):
    run, run_pngs = run_and_pictures
    reference = write_image_folder(tmp_path / "ref", reference_pictures(10))
    assert main(["report", str(run), "--reference", reference]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if line.startswith("WARNING")]
    assert warnings == [f"WARNING jobs.report.set_metrics: {FID_SKIPPED}"]
    metrics = json.loads((run / "report" / "report.json").read_text())["set_metrics"]
    assert (metrics["fid"], metrics["kid_mean"], metrics["kid_std"]) == (None, None, None)
    assert metrics["skipped"] == {
        "fid": "no --fid-weights (FID Inception weights)",
        "kid": "no --fid-weights (FID Inception weights)",
    }
    clip_b = tiny_clip_embeddings(decoded(reference_pictures(10)))
    assert metrics["cmmd"] == pytest.approx(expected_cmmd(tiny_clip_embeddings(decoded(run_pngs)), clip_b), rel=1e-5)
    html = (run / "report" / "report.html").read_text()
    assert "<h2>Against the reference set</h2>" in html
    assert '<tr><td>FID</td><td class="n">skipped</td><td>no --fid-weights (FID Inception weights)</td></tr>' in html
    assert f'<tr><td>CMMD</td><td class="n">{metrics["cmmd"]:.4f}</td>' in html
    markdown = (run / "report" / "report.md").read_text()
    assert "| FID | skipped | no --fid-weights (FID Inception weights) |" in markdown
    assert f"| CMMD | {metrics['cmmd']:.4f} | CLIP image embeddings of tiny, L2-normalised |" in markdown


def test_extraction_streams_holding_at_most_one_batch_of_images():
    alive: list[weakref.ref] = []
    pulled = 0

    def images():
        nonlocal pulled
        for seed in range(23):
            image = Image.open(io.BytesIO(picture(seed))).convert("RGB")
            alive.append(weakref.ref(image))
            pulled += 1
            yield image

    seen = []

    class Watching(RandomConvFeatures):
        def __call__(self, batch):
            gc.collect()
            seen.append((len(batch), pulled, sum(r() is not None for r in alive)))
            return super().__call__(batch)

    count, features = extract_features(images(), {"f": Watching()}, batch_size=5)
    assert count == 23 and features["f"].shape == (23, 6)
    assert [s[0] for s in seen] == [5, 5, 5, 5, 3]
    assert [s[1] for s in seen] == [5, 10, 15, 20, 23]  # pulled a batch at a time, not ahead
    assert all(live <= 5 for _, _, live in seen), seen  # earlier batches were let go
    assert features["f"] == pytest.approx(RandomConvFeatures()(decoded([picture(s) for s in range(23)])), abs=1e-6)


def test_parquet_images_are_read_a_row_group_at_a_time(tmp_path, monkeypatch):
    pngs = [picture(i) for i in range(10)]
    pq.write_table(pa.table({"image": pa.array(pngs, pa.binary())}), tmp_path / "set.parquet", row_group_size=4)
    groups_read = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(
        pq.ParquetFile, "read_row_group", lambda self, g, **kw: groups_read.append(g) or real(self, g, **kw)
    )
    images = open_image_set(str(tmp_path / "set.parquet")).images()
    first = [next(images) for _ in range(4)]
    assert groups_read == [0]  # nothing read ahead
    rest = list(images)
    assert groups_read == [0, 1, 2]
    assert [np.asarray(i).tolist() for i in first + rest] == [np.asarray(i).tolist() for i in decoded(pngs)]


def test_feature_rows_are_allocated_once_when_the_count_is_known():
    rows = FeatureRows(expected=7)
    rows.append(np.ones((3, 2)))
    allocated = rows.rows
    rows.append(np.full((4, 2), 2.0))
    assert rows.rows is allocated and rows.array().shape == (7, 2)  # filled in place, no copy
    rows.append(np.full((2, 2), 3.0))  # more than the files said: grows
    assert rows.array().tolist() == [[1.0, 1.0]] * 3 + [[2.0, 2.0]] * 4 + [[3.0, 3.0]] * 2


def test_a_bad_reference_is_one_line_naming_the_file_and_nothing_is_written(tmp_path, run_and_pictures, capsys):
    run, _ = run_and_pictures
    no_image = tmp_path / "captions.parquet"
    pq.write_table(pa.table({"id": [1], "text": ["a cat"]}), no_image)
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "000.png").write_bytes(picture(0))
    (broken / "001.png").write_bytes(b"not a png")
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"image": pa.array([picture(0), None, None], pa.binary())}), nulls)
    cases = {
        str(no_image): f"{no_image}: no 'image' column (columns: id, text)",
        str(empty): f"{empty}: no images in the folder (no .png, .jpg, .jpeg, .webp or .parquet files, no job.json)",
        str(broken): f"{broken / '001.png'}: not a decodable image (UnidentifiedImageError: cannot identify image file",
        str(nulls): f"{nulls}: column 'image': no image bytes in rows 1, 2",
        str(tmp_path / "nowhere"): f"{tmp_path / 'nowhere'}: no such file or folder",
    }
    for reference, message in cases.items():
        assert main(["report", str(run), "--reference", reference]) == 2
        errors = capsys.readouterr().err.strip().splitlines()
        assert errors[-1].startswith(f"genbatch: error: {message}"), errors
        assert not (run / "report").exists()
    assert main(["report", str(run), "--fid-weights", "w.safetensors"]) == 2
    assert "genbatch: error: --fid-weights and --cmmd-model need --reference" in capsys.readouterr().err


def test_fid_weights_are_checked_by_name_and_shape(tmp_path, run_and_pictures, capsys):
    from safetensors.torch import save_file

    run, _ = run_and_pictures
    reference = write_image_folder(tmp_path / "ref", reference_pictures(4))
    state = FidInceptionV3().state_dict()
    partial = {k: v for k, v in state.items() if not k.startswith("Mixed_7c.") and "num_batches" not in k}
    save_file(partial, tmp_path / "partial.safetensors")
    (tmp_path / "weights.pth").write_bytes(b"PK\x03\x04 a torch zip")
    cases = {
        "partial.safetensors": "not FID Inception-v3 weights: no Mixed_7c.branch1x1.conv.weight, "
        "Mixed_7c.branch1x1.bn.weight,",
        "weights.pth": "not a safetensors file (",
        "missing.safetensors": "no such file",
    }
    for name, message in cases.items():
        assert main(["report", str(run), "--reference", reference, "--fid-weights", str(tmp_path / name)]) == 2
        assert message in capsys.readouterr().err
        assert not (run / "report").exists()


def test_the_fid_network_has_the_standard_weights_layout():
    state = FidInceptionV3().state_dict()
    convs = [k for k in state if k.endswith(".conv.weight")]
    assert len(convs) == 94  # Inception-v3 without its auxiliary head
    shapes = {
        k: tuple(state[k].shape)
        for k in (
            "Conv2d_1a_3x3.conv.weight",
            "Mixed_5b.branch_pool.conv.weight",
            "Mixed_6e.branch7x7dbl_5.conv.weight",
            "Mixed_7b.branch1x1.conv.weight",
            "Mixed_7c.branch3x3dbl_3b.conv.weight",
            "Mixed_7c.branch_pool.bn.running_var",
        )
    }
    assert shapes == {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
        "Mixed_7b.branch1x1.conv.weight": (320, 1280, 1, 1),
        "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
        "Mixed_7c.branch_pool.bn.running_var": (192,),
    }


def test_inception_features_load_a_safetensors_file_and_resize_each_image(tmp_path):
    """The real network shape with random weights; the file's classifier (fc.*) is there and ignored."""
    from safetensors.torch import save_file

    from jobs.report.features import InceptionFeatures

    torch.manual_seed(0)
    network = FidInceptionV3().eval()
    state = {k: v for k, v in network.state_dict().items() if "num_batches" not in k}
    state.update({"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)})
    save_file(state, tmp_path / "fid.safetensors")
    images = [
        Image.fromarray(np.random.default_rng(s).integers(0, 256, (h, w, 3), dtype=np.uint8))
        for s, (h, w) in enumerate(((16, 16), (24, 20)))
    ]
    features = InceptionFeatures(str(tmp_path / "fid.safetensors"), torch.device("cpu"))
    assert features.name == f"Inception-v3 FID pool features (2048-d), weights {tmp_path / 'fid.safetensors'}"
    got = features(images)
    with torch.no_grad():  # each image on its own, pixels in [0, 1], resized by the network itself
        expected = [
            network(torch.tensor(np.asarray(i), dtype=torch.float32).permute(2, 0, 1)[None] / 255)[0].numpy()
            for i in images
        ]
    assert got.shape == (2, 2048) and got == pytest.approx(np.stack(expected), abs=1e-5)


def test_open_image_set_reads_a_runs_clip_model(tmp_path):
    run = make_run(tmp_path / "run", [1.0, 2.0, 3.0], clip_model="openai/clip-vit-large-patch14", failed={1})
    images = open_image_set(str(run))
    assert (images.kind, images.clip_model, images.expected) == ("run", "openai/clip-vit-large-patch14", 2)
    assert [np.asarray(i).tolist() for i in images.images()] == [
        np.asarray(i).tolist() for i in decoded([_run_png(0), _run_png(2)])
    ]
    with pytest.raises(UsageError, match="not a Parquet file, a run folder or a folder of images"):
        open_image_set(str(run / "job.json"))


def test_cmmd_of_images_that_are_not_a_run_needs_a_model(tmp_path, caplog):
    images = write_image_folder(tmp_path / "generated", reference_pictures(6))
    reference = write_image_folder(tmp_path / "ref", [picture(i) for i in range(5)])
    network = RandomConvFeatures()
    skipped = compute_set_metrics(images, reference, fid_network=network)
    assert skipped["cmmd"] is None and skipped["cmmd_model"] is None
    assert skipped["skipped"] == {"cmmd": f"{images} is not a genbatch run with a clip.model: pass --cmmd-model"}
    assert f"CMMD skipped: {images} is not a genbatch run with a clip.model: pass --cmmd-model" in caplog.text
    named = compute_set_metrics(images, reference, fid_network=network, cmmd_model="tiny")
    assert named["cmmd_model"] == "tiny" and named["fid"] == skipped["fid"]
    expected = expected_cmmd(
        tiny_clip_embeddings(decoded(reference_pictures(6))),
        tiny_clip_embeddings(decoded([picture(i) for i in range(5)])),
    )
    assert named["cmmd"] == pytest.approx(expected, rel=1e-5)


def test_runs_against_one_reference_embed_it_once(tmp_path):
    """What `genbatch compare` and sweep leaderboards call: a row of figures per run."""
    runs = [make_run(tmp_path / f"run{k}", [25.0] * (8 + k), shard_size=4) for k in range(3)]
    reference = write_image_folder(tmp_path / "ref", reference_pictures(9))
    network = RandomConvFeatures()
    by_run = set_metrics_of_runs(runs, reference, fid_network=network, cmmd_network=RandomConvFeatures(1))
    assert network.calls == 3 * 1 + 1  # each run's images fit one batch of 32; the reference is embedded once
    assert list(by_run) == [str(r) for r in runs]
    for k, run in enumerate(runs):
        alone = compute_set_metrics(str(run), reference, fid_network=network, cmmd_network=RandomConvFeatures(1))
        assert by_run[str(run)] == {
            key: alone[key] for key in ("fid", "kid_mean", "kid_std", "cmmd", "n_run", "n_reference")
        }
        assert by_run[str(run)]["n_run"] == 8 + k


def test_compare_with_a_reference_puts_each_runs_cmmd_in_compare_json(tmp_path):
    """`genbatch compare A B C --reference REF`: the leaderboard's set_metrics, one CLIP (the runs' tiny) for all."""
    runs = [make_run(tmp_path / f"run{k}", [20.0 + k + 0.1 * i for i in range(8)], shard_size=4) for k in range(3)]
    reference = write_image_folder(tmp_path / "ref", reference_pictures(9))
    out = tmp_path / "board"
    assert main(["compare", *map(str, runs), "-o", str(out), "--reference", reference]) == 0
    metrics = json.loads((out / "compare.json").read_text())["set_metrics"]
    assert list(metrics) == [str(run) for run in runs]
    expected = expected_cmmd(
        tiny_clip_embeddings(decoded([_run_png(i) for i in range(8)])),
        tiny_clip_embeddings(decoded(reference_pictures(9))),
    )
    for run in runs:  # the same eight images in each run
        assert metrics[str(run)]["cmmd"] == pytest.approx(expected, rel=1e-5)
        assert (metrics[str(run)]["fid"], metrics[str(run)]["n_run"], metrics[str(run)]["n_reference"]) == (None, 8, 9)
    assert "Against the reference" in (out / "compare.html").read_text()
