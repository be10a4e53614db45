"""Output column names and types: the one place that defines what a shard file holds."""

from __future__ import annotations

import pyarrow as pa

ID = "id"
PROMPT = "prompt"
NEGATIVE_PROMPT = "negative_prompt"
SEED = "seed"
STEPS = "steps"
GUIDANCE_SCALE = "guidance_scale"
WIDTH = "width"
HEIGHT = "height"
IMAGE = "image"
CLIP_SCORE = "clip_score"
CLIP_COSINE = "clip_cosine"
PROMPT_TRUNCATED = "prompt_truncated"
SCHEDULER = "scheduler"
MODEL = "model"
CLIP_MODEL = "clip_model"
WORKER = "worker"
DURATION_S = "duration_s"
IMAGE_SHA256 = "image_sha256"
STATUS = "status"
ERROR = "error"
IMAGE_INDEX = "image_index"  # k of the row's images_per_prompt images
INIT_IMAGE = "init_image"
STRENGTH = "strength"
RECON_MSE = "recon_mse"
RECON_PSNR = "recon_psnr"
LATENT_MEAN = "latent_mean"
LATENT_STD = "latent_std"

STATUS_OK = "ok"
STATUS_ERROR = "error"

# Manifest columns that set how a row is generated; a null value falls back to the job config.
ROW_OVERRIDES = (STEPS, GUIDANCE_SCALE, WIDTH, HEIGHT)

# 64-bit offsets (`large_binary`): a shard's image bytes may exceed 2 GiB (1024 px PNGs x large shards x
# images_per_prompt), past what `binary`'s 32-bit offsets can address. Shards written before took `binary`
# (LEGACY_IMAGE_TYPE); everything that reads a run accepts both.
IMAGE_TYPE = pa.struct([("bytes", pa.large_binary()), ("path", pa.string())])
LEGACY_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

# Columns genbatch writes after the manifest's own, in this order, with these types. `id` is written
# first and keeps the manifest's type (string or integer).
GENERATED: dict[str, pa.DataType] = {
    IMAGE: IMAGE_TYPE,
    CLIP_SCORE: pa.float32(),
    CLIP_COSINE: pa.float32(),
    PROMPT_TRUNCATED: pa.bool_(),
    SEED: pa.int64(),
    IMAGE_INDEX: pa.int32(),
    STEPS: pa.int32(),
    GUIDANCE_SCALE: pa.float32(),
    WIDTH: pa.int32(),
    HEIGHT: pa.int32(),
    STRENGTH: pa.float32(),
    SCHEDULER: pa.string(),
    MODEL: pa.string(),
    CLIP_MODEL: pa.string(),
    WORKER: pa.string(),
    DURATION_S: pa.float32(),
    IMAGE_SHA256: pa.string(),
    STATUS: pa.string(),
    ERROR: pa.string(),
}

# Written after GENERATED's columns in `mode: reconstruct` only: how much the VAE round trip lost.
RECONSTRUCTION: dict[str, pa.DataType] = {
    RECON_MSE: pa.float64(),  # mean squared error of the pixels, each scaled to [0, 1]
    RECON_PSNR: pa.float64(),  # 10 * log10(1 / MSE) in dB; inf for an exact round trip
    LATENT_MEAN: pa.float32(),  # of the scaled latent (what the UNet would see)
    LATENT_STD: pa.float32(),
}

# A manifest may carry these; genbatch replaces them with the values it resolved and used.
REPLACED_INPUTS = frozenset({ID, SEED, STRENGTH, *ROW_OVERRIDES})

# A manifest may not carry these: they would be silently overwritten by genbatch's own output.
RESERVED = (frozenset(GENERATED) | frozenset(RECONSTRUCTION)) - REPLACED_INPUTS


def with_wide_offsets(table: pa.Table) -> pa.Table:
    """`table` with its `binary` columns (init images passed through) as `large_binary`: repeated once per image
    of the row, or gathered into a large shard, they could pass 2 GiB, as the images could."""
    schema = pa.schema([f.with_type(pa.large_binary()) if pa.types.is_binary(f.type) else f for f in table.schema])
    return table if schema.equals(table.schema) else table.cast(schema)
