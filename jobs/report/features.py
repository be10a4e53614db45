"""Streaming feature extraction for set-level metrics: images in, one feature matrix per network out.

Images are pulled from an iterator a batch at a time and each batch goes through every network before the
next is read, so one decode serves FID and CMMD alike and no more than one batch of images is alive at
once: memory grows with the features only (8 KB per image for Inception's 2048 floats, 4 bytes per CLIP
dimension), never with the images. Networks run on the GPU when there is one.

A network is anything with a `name` (what its features are, as report.json says) that maps a list of RGB
PIL images to an (N, D) float array (`FeatureNetwork`): `InceptionFeatures` for FID and KID,
`ClipImageFeatures` for CMMD, or, in tests, a small random network.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

import numpy as np

from jobs.errors import UsageError, one_line

DEFAULT_BATCH = 32

logger = logging.getLogger(__name__)


class FeatureNetwork(Protocol):
    name: str

    def __call__(self, images: list) -> np.ndarray: ...


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Lists of up to `size` items, pulled from `items` only as each list is asked for."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class FeatureRows:
    """Feature rows appended a batch at a time into one float32 array.

    With the number of images known beforehand (`expected`) the array is allocated once, so the features
    are never held twice (as joining per-batch arrays at the end would); a set that turns out larger
    grows by doubling."""

    def __init__(self, expected: int | None = None):
        self.expected = expected
        self.rows: np.ndarray | None = None
        self.count = 0

    def append(self, features: np.ndarray) -> None:
        if self.rows is None:
            self.rows = np.empty((max(self.expected or 0, len(features)), features.shape[1]), np.float32)
        elif self.count + len(features) > len(self.rows):
            grown = np.empty((max(2 * len(self.rows), self.count + len(features)), self.rows.shape[1]), np.float32)
            grown[: self.count] = self.rows[: self.count]
            self.rows = grown
        self.rows[self.count : self.count + len(features)] = features
        self.count += len(features)

    def array(self) -> np.ndarray:
        return np.zeros((0, 0), np.float32) if self.rows is None else self.rows[: self.count]


def extract_features(
    images: Iterable,
    networks: Mapping[str, FeatureNetwork],
    batch_size: int = DEFAULT_BATCH,
    expected: int | None = None,
) -> tuple[int, dict[str, np.ndarray]]:
    """How many images there were, and each network's features of them, row i for the i-th image.

    `expected`: how many images there should be, if known (allocates the feature arrays once)."""
    rows = {key: FeatureRows(expected) for key in networks}
    count, started = 0, time.monotonic()
    for batch in batched(images, batch_size):
        for key, network in networks.items():
            features = np.asarray(network(batch), dtype=np.float32)
            if features.shape[0] != len(batch):
                raise ValueError(f"{network.name}: {features.shape[0]} feature rows for {len(batch)} images")
            rows[key].append(features)
        count += len(batch)
        del batch  # the images go now, not when the next batch is already decoded
    seconds = time.monotonic() - started
    logger.info("embedded %d images in %.1f s (%.1f images/s)", count, seconds, count / max(seconds, 1e-9))
    return count, {key: buffer.array() for key, buffer in rows.items()}


def _pixels(images: list, device):
    """RGB PIL images -> float tensors (3, H, W) in [0, 1] on `device`, one per image (sizes may differ)."""
    import torch

    return [
        torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).to(device).permute(2, 0, 1) / 255.0
        for image in images
    ]


class InceptionFeatures:
    """FID's Inception-v3 pool features (2048-d) from a safetensors copy of the standard FID weights."""

    def __init__(self, weights: str, device=None):
        from jobs.report.inception import load_fid_inception
        from workers.models.loading import pick_device

        self.device = device or pick_device()
        self.network = load_fid_inception(weights).to(self.device)
        self.name = f"Inception-v3 FID pool features (2048-d), weights {weights}"

    def __call__(self, images: list) -> np.ndarray:
        import contextlib

        import torch
        import torch.nn.functional as F

        from jobs.report.inception import INPUT_PX

        # Each image to 299 px on its own (sizes may differ in a set); the network's own resize is then exact.
        batch = torch.cat(
            [
                F.interpolate(p[None], size=(INPUT_PX, INPUT_PX), mode="bilinear", align_corners=False)
                for p in _pixels(images, self.device)
            ]
        )
        # TF32 convolutions would move the features by ~1e-3: FID is computed in full fp32.
        exact = (
            torch.backends.cudnn.flags(enabled=True, allow_tf32=False)
            if self.device.type == "cuda"
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), exact:
            return self.network(batch).cpu().numpy()


class ClipImageFeatures:
    """L2-normalised CLIP image embeddings (projected), images preprocessed by the model's own processor."""

    def __init__(self, ref: str, device=None):
        from workers.models.loading import load_clip, pick_device, quiet_libraries

        quiet_libraries(diffusers=False)  # a report's stderr is its own warnings
        self.device = device or pick_device()
        try:
            self.model, self.processor = load_clip(ref, self.device)
        except (OSError, ValueError) as error:
            raise UsageError(f"CMMD model {ref!r}: cannot load it ({one_line(error)})") from error
        self.name = f"CLIP image embeddings of {ref}, L2-normalised"

    def __call__(self, images: list) -> np.ndarray:
        import torch

        pixel_values = self.processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            pooled = self.model.vision_model(pixel_values=pixel_values.to(self.device, self.model.dtype)).pooler_output
            embeds = self.model.visual_projection(pooled).float()
            return torch.nn.functional.normalize(embeds, dim=-1).cpu().numpy()
