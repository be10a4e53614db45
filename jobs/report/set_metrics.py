"""Set-level metrics of a run's images against a reference set: FID, KID and CMMD.

- FID (Heusel et al. 2017): Fréchet distance between Gaussians fitted to Inception-v3 pool features,
  |mu_a - mu_b|² + tr(S_a + S_b - 2 (S_a S_b)^½), with `scipy.linalg.sqrtm`.
- KID (Binkowski et al. 2018): the unbiased MMD² with the kernel k(x, y) = (x·y / d + 1)³ on the same
  features, averaged over `KID_SUBSETS` pairs of random subsets of `min(KID_SUBSET_SIZE, n_a, n_b)` images
  each (drawn without replacement, one seeded generator), with the standard deviation over subsets.
- CMMD (Jayasumana et al. 2024): MMD² with a Gaussian RBF kernel, sigma = 10, on L2-normalised CLIP image
  embeddings, × 1000. As in the paper's reference implementation (google-research `cmmd/distance.py`), the
  estimator is the minimum-variance one over all pairs, diagonal included (Gretton et al. 2012, eq. 5),
  so figures match published CMMD values.

`compute_set_metrics` is the entry point; `FeatureCache` lets several runs against one reference embed
the reference once (`genbatch compare`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from jobs.errors import UsageError
from jobs.report.features import (
    DEFAULT_BATCH,
    ClipImageFeatures,
    FeatureNetwork,
    InceptionFeatures,
    extract_features,
)
from jobs.report.image_sets import ImageSet, open_image_set

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_SEED = 0  # fixed, so a report is reproducible
CMMD_SIGMA = 10.0
CMMD_SCALE = 1000.0
_CHUNK = 4096  # feature rows handled at once for the covariance: bounds its float64 copies
LEADERBOARD_FIELDS = ("fid", "kid_mean", "kid_std", "cmmd", "n_run", "n_reference")  # a table row per run
_KERNEL_BLOCK = 1024  # rows x columns of one kernel block: 8 MB in float64 (its temporaries ~50 MB)
FID_SKIPPED = (
    "FID and KID skipped: no --fid-weights; download the standard FID Inception weights "
    "(pt_inception-2015-12-05-6726825d.pth, from the pytorch-fid releases on GitHub), convert them to "
    "safetensors as README's 'Set-level metrics' shows, and pass --fid-weights FILE.safetensors"
)

logger = logging.getLogger(__name__)


def mean_and_covariance(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample covariance (n - 1) in float64, a chunk of rows at a time."""
    n = len(features)
    mean = sum(
        (features[i : i + _CHUNK].astype(np.float64).sum(axis=0) for i in range(0, n, _CHUNK)),
        np.zeros(features.shape[1]),
    )
    mean /= n
    covariance = np.zeros((features.shape[1], features.shape[1]))
    for start in range(0, n, _CHUNK):
        centred = features[start : start + _CHUNK].astype(np.float64) - mean
        covariance += centred.T @ centred
    return mean, covariance / (n - 1)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets (rows are images)."""
    from scipy import linalg

    mean_a, cov_a = mean_and_covariance(a)
    mean_b, cov_b = mean_and_covariance(b)
    root = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(root).all():  # a singular product (fewer images than dimensions): nudge, as FID code does
        offset = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    diff = mean_a - mean_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(np.real(root)))


def polynomial_mmd2(a, b) -> float:
    """Unbiased MMD² with k(x, y) = (x·y / d + 1)³ between two equal-size subsets (float64 tensors)."""
    m, d = a.shape

    def cubed(x, y):
        k = x @ y.T / d + 1
        return k * k * k

    k_aa, k_bb, k_ab = cubed(a, a), cubed(b, b), cubed(a, b)
    within = (k_aa.sum() - k_aa.trace() + k_bb.sum() - k_bb.trace()) / (m * (m - 1))
    return float(within - 2 * k_ab.mean())


def kernel_inception_distance(
    a: np.ndarray,
    b: np.ndarray,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = KID_SEED,
    device=None,
) -> tuple[float, float, int]:
    """KID's mean and standard deviation over subsets, and the subset size used (float64, on `device`)."""
    import torch

    size = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    xs, ys = (torch.from_numpy(np.ascontiguousarray(v)).to(device or "cpu", torch.float64) for v in (a, b))
    values = []
    for _ in range(subsets):
        pick_a = torch.from_numpy(rng.choice(len(a), size, replace=False)).to(xs.device)
        pick_b = torch.from_numpy(rng.choice(len(b), size, replace=False)).to(xs.device)
        values.append(polynomial_mmd2(xs[pick_a], ys[pick_b]))
    return float(np.mean(values)), float(np.std(values)), size


def cmmd(a: np.ndarray, b: np.ndarray, device=None) -> float:
    """CMMD between two sets of L2-normalised CLIP embeddings (float64 on the CPU, float32 on a GPU)."""
    k_aa, k_bb, k_ab = (_mean_rbf(x, y, device) for x, y in ((a, a), (b, b), (a, b)))
    return CMMD_SCALE * (k_aa + k_bb - 2 * k_ab)


def _mean_rbf(x: np.ndarray, y: np.ndarray, device) -> float:
    """Mean of exp(-|x_i - y_j|² / (2 sigma²)) over all pairs, in blocks of rows (100,000 images fit on any GPU)."""
    import torch

    device = torch.device("cpu") if device is None else device
    dtype = torch.float32 if device.type == "cuda" else torch.float64
    xs, ys = (torch.from_numpy(np.ascontiguousarray(v)).to(device, dtype) for v in (x, y))
    gamma = 1 / (2 * CMMD_SIGMA**2)
    total = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, len(xs), _KERNEL_BLOCK):
        rows = xs[i : i + _KERNEL_BLOCK]
        for j in range(0, len(ys), _KERNEL_BLOCK):
            cols = ys[j : j + _KERNEL_BLOCK]
            squared = (rows * rows).sum(1)[:, None] + (cols * cols).sum(1)[None, :] - 2 * rows @ cols.T
            total += torch.exp(-gamma * squared).sum(dtype=torch.float64)
    return float(total) / (len(xs) * len(ys))


class FeatureCache:
    """Loaded networks and extracted features, by key: N runs against one reference embed it once."""

    def __init__(self):
        self.networks: dict = {}
        self.features: dict = {}  # (location, network name) -> (count, features)

    def network(self, key, build: Callable[[], FeatureNetwork]) -> FeatureNetwork:
        if key not in self.networks:
            self.networks[key] = build()
        return self.networks[key]

    def extract(self, images: ImageSet, networks: dict[str, FeatureNetwork], batch_size: int) -> tuple[int, dict]:
        """Each network's features of the set, extracting only those not cached, all in one pass."""
        todo = {k: n for k, n in networks.items() if (images.location, n.name) not in self.features}
        if todo or not networks:
            logger.info(
                "set metrics: embedding %s (%s) with %s",
                images.location,
                images.kind,
                ", ".join(n.name for n in todo.values()) or "nothing (counting)",
            )
            count, extracted = extract_features(images.images(), todo, batch_size, images.expected)
            for key, network in todo.items():
                self.features[(images.location, network.name)] = (count, extracted[key])
            if not networks:
                return count, {}
        found = {k: self.features[(images.location, n.name)] for k, n in networks.items()}
        return next(iter(found.values()))[0], {k: features for k, (_, features) in found.items()}


def compute_set_metrics(
    run: str | ImageSet,
    reference: str | ImageSet,
    *,
    fid_weights: str | None = None,
    cmmd_model: str | None = None,
    fid_network: FeatureNetwork | None = None,
    cmmd_network: FeatureNetwork | None = None,
    batch_size: int = DEFAULT_BATCH,
    device=None,
    cache: FeatureCache | None = None,
) -> dict:
    """FID, KID and CMMD of `run`'s images against `reference`'s: report.json's `set_metrics`.

    `run` and `reference` are locations (a run folder, Parquet with an `image` column, a folder of images)
    or opened `ImageSet`s. FID and KID use `fid_network` if given, else Inception-v3 with `fid_weights`,
    else are skipped (one warning says how to get the weights). CMMD uses `cmmd_network` if given, else
    the CLIP model `cmmd_model`, else the run's own `clip.model`."""
    run_set = run if isinstance(run, ImageSet) else open_image_set(run)
    reference_set = reference if isinstance(reference, ImageSet) else open_image_set(reference)
    cache = cache if cache is not None else FeatureCache()
    skipped: dict[str, str] = {}
    # 1. Choose the networks (loading them checks weights and models before any image is decoded).
    fid_network, cmmd_network, clip_model = _choose_networks(
        run_set, cache, skipped, fid_weights, cmmd_model, fid_network, cmmd_network, device
    )
    networks = {k: n for k, n in (("fid", fid_network), ("cmmd", cmmd_network)) if n is not None}
    # 2. Embed both sets, streaming.
    n_run, run_features = cache.extract(run_set, networks, batch_size)
    n_reference, reference_features = cache.extract(reference_set, networks, batch_size)
    for images, count in ((run_set, n_run), (reference_set, n_reference)):
        if count == 0:
            raise UsageError(f"{images.location}: no images to measure")
    # 3. The figures.
    result: dict = {
        "reference": reference_set.location,
        "reference_kind": reference_set.kind,
        "n_run": n_run,
        "n_reference": n_reference,
        "fid": None,
        "kid_mean": None,
        "kid_std": None,
        "kid_subsets": KID_SUBSETS,
        "kid_subset_size": None,
        "fid_features": fid_network.name if fid_network is not None else None,
        "cmmd": None,
        "cmmd_model": clip_model,
        "cmmd_features": cmmd_network.name if cmmd_network is not None else None,
        "skipped": skipped,
    }
    if fid_network is not None:
        if min(n_run, n_reference) < 2:
            skipped["fid"] = skipped["kid"] = "FID and KID need at least 2 images in each set"
        else:
            a, b = run_features["fid"], reference_features["fid"]
            result.update(_fid_and_kid(a, b, n_run, n_reference, fid_network))
    if cmmd_network is not None:
        result["cmmd"] = cmmd(run_features["cmmd"], reference_features["cmmd"], getattr(cmmd_network, "device", None))
    return result


def _choose_networks(
    run_set: ImageSet,
    cache: FeatureCache,
    skipped: dict[str, str],
    fid_weights: str | None,
    cmmd_model: str | None,
    fid_network: FeatureNetwork | None,
    cmmd_network: FeatureNetwork | None,
    device,
) -> tuple[FeatureNetwork | None, FeatureNetwork | None, str | None]:
    """The FID and CMMD networks (None for a metric to skip, its reason put in `skipped`) and the CLIP model
    CMMD uses (None when `cmmd_network` is given)."""
    if fid_network is None and fid_weights is not None:
        fid_network = cache.network(("fid", fid_weights), lambda: InceptionFeatures(fid_weights, device))
    if fid_network is None:
        logger.warning(FID_SKIPPED)
        skipped["fid"] = skipped["kid"] = "no --fid-weights (FID Inception weights)"
    clip_model = None if cmmd_network is not None else cmmd_model or run_set.clip_model
    if cmmd_network is None and clip_model is not None:
        cmmd_network = cache.network(("clip", clip_model), lambda: ClipImageFeatures(clip_model, device))
    if cmmd_network is None:
        skipped["cmmd"] = f"{run_set.location} is not a genbatch run with a clip.model: pass --cmmd-model"
        logger.warning("CMMD skipped: %s", skipped["cmmd"])
    return fid_network, cmmd_network, clip_model


def _fid_and_kid(a, b, n_run: int, n_reference: int, fid_network: FeatureNetwork) -> dict:
    """FID and KID from the run's features `a` and the reference's `b` (at least 2 images in each set)."""
    if min(n_run, n_reference) < a.shape[1]:
        logger.warning(
            "FID from %d and %d images, fewer than the %d feature dimensions: it is strongly biased "
            "upwards and comparable only between sets of the same sizes (use thousands of images)",
            n_run,
            n_reference,
            a.shape[1],
        )
    fid = frechet_distance(a, b)
    kid_mean, kid_std, kid_subset_size = kernel_inception_distance(a, b, device=getattr(fid_network, "device", None))
    return {"fid": fid, "kid_mean": kid_mean, "kid_std": kid_std, "kid_subset_size": kid_subset_size}


def set_metrics_of_runs(
    runs: list,
    reference: str,
    *,
    fid_weights: str | None = None,
    cmmd_model: str | None = None,
    fields: tuple[str, ...] = LEADERBOARD_FIELDS,
    **options,
) -> dict[str, dict]:
    """Each run's set metrics against one reference, by run path, for comparisons and leaderboards.

    `runs` are paths or opened runs (anything with `.path`). The networks are loaded and the reference is
    embedded once; CMMD uses one CLIP model for every run (`cmmd_model`, else the first run's
    `clip.model`), so the runs' CMMDs compare. Each run keeps `fields` of `compute_set_metrics`' result."""
    cache = FeatureCache()
    paths = [str(getattr(run, "path", run)) for run in runs]
    model = cmmd_model or open_image_set(paths[0]).clip_model
    by_run = {}
    for path in paths:
        metrics = compute_set_metrics(
            path, reference, fid_weights=fid_weights, cmmd_model=model, cache=cache, **options
        )
        by_run[path] = {key: metrics[key] for key in fields}
    return by_run
