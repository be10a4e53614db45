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
ADAPTER = "adapter"  # which of model.adapters made the row (null: the model without them); kept in the output
PICKSCORE = "pickscore"
AESTHETIC = "aesthetic"
CACHE_SKIPPED_STEPS = "cache_skipped_steps"

STATUS_OK = "ok"
STATUS_ERROR = "error"

# Manifest columns that set how a row is generated; a null value falls back to the job config.
ROW_OVERRIDES = (STEPS, GUIDANCE_SCALE, WIDTH, HEIGHT)

# In memory, image bytes have 64-bit offsets (`large_binary`): a shard's images may pass 2 GiB (1024 px PNGs x
# large shards x images_per_prompt), more than `binary`'s 32-bit offsets address. In the file they are stored as
# `binary` (STORED_IMAGE_TYPE, the type of `datasets`' Image feature and of every earlier shard), a row group at a
# time (see `stored_row_groups`); Parquet itself has no such limit, and pyarrow reads a chunk per row group.
IMAGE_TYPE = pa.struct([("bytes", pa.large_binary()), ("path", pa.string())])
STORED_IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

# Columns holding image bytes: never a grouping or filter column, never read for a figure.
IMAGE_COLUMNS = frozenset({IMAGE, INIT_IMAGE})

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
    RECON_MSE: pa.float64(),
    RECON_PSNR: pa.float64(),
    LATENT_MEAN: pa.float32(),
    LATENT_STD: pa.float32(),
}

# Written last, for the scorers the config's `scores` section names (workers.scoring.scorers), in this order.
SCORES: dict[str, pa.DataType] = {
    PICKSCORE: pa.float32(),
    AESTHETIC: pa.float32(),
}

# Written after the scores with `performance.cache` only (a later rescore puts its scores after it).
STEP_CACHE: dict[str, pa.DataType] = {CACHE_SKIPPED_STEPS: pa.int32()}

# What each column genbatch writes holds: the source of docs/reference/columns.md (docs/gen_reference.py).
DESCRIPTIONS: dict[str, str] = {
    ID: "The manifest's id (string or integer, its type kept), or the row number when the manifest has none.",
    IMAGE: "The encoded image (`output.image_format`); `path` is null, the Hugging Face `datasets` image layout.",
    CLIP_SCORE: "100 × max(clip_cosine, 0); null without `clip.model` and for error rows.",
    CLIP_COSINE: "Cosine of CLIP's projected image and text embeddings.",
    PROMPT_TRUNCATED: "The prompt was longer than the CLIP text encoder takes (77 tokens).",
    SEED: "The seed used: the manifest's, or one derived from the job's seed and the row id.",
    IMAGE_INDEX: "Which of the row's `images_per_prompt` images (0 when 1).",
    STEPS: "Denoising steps used (the row's own, else the config's).",
    GUIDANCE_SCALE: "Guidance scale used (the row's own, else the config's).",
    WIDTH: "Image width used, in pixels.",
    HEIGHT: "Image height used, in pixels.",
    STRENGTH: "Image-to-image strength used; null for text-to-image rows.",
    SCHEDULER: "The configured scheduler's name, or the model's own scheduler class.",
    MODEL: "`model.id` as configured.",
    CLIP_MODEL: "`clip.model` as configured.",
    WORKER: "The actor that made the row: `worker-N@host`.",
    DURATION_S: "The row's share of its micro-batch's wall time (generate, score, encode).",
    IMAGE_SHA256: "sha256 of the image bytes.",
    STATUS: f"`{STATUS_OK}`, or `{STATUS_ERROR}` when the row failed.",
    ERROR: "Null, or the failed row's exception message.",
    RECON_MSE: "Mean squared error of the pixels, each scaled to [0, 1].",
    RECON_PSNR: "10 × log10(1 / recon_mse) in dB; inf for an exact round trip.",
    LATENT_MEAN: "Mean of the scaled latent (what the denoiser would see).",
    LATENT_STD: "Standard deviation of the scaled latent.",
    PICKSCORE: "logit_scale.exp() × cosine of the PickScore model's image and text embeddings; null for error rows "
    "and rows without a prompt.",
    AESTHETIC: "The LAION aesthetic MLP on the L2-normalised CLIP image embedding; null for error rows.",
    CACHE_SKIPPED_STEPS: "Denoiser passes the step cache skipped for the row's micro-batch; null for rows that did "
    "not run.",
}

# A manifest may carry these; genbatch replaces them with the values it resolved and used.
REPLACED_INPUTS = frozenset({ID, SEED, STRENGTH, *ROW_OVERRIDES})

# A manifest may not carry these: they would be silently overwritten by genbatch's own output.
RESERVED = (
    frozenset(GENERATED) | frozenset(RECONSTRUCTION) | frozenset(SCORES) | frozenset(STEP_CACHE)
) - REPLACED_INPUTS


def with_wide_offsets(table: pa.Table) -> pa.Table:
    """`table` with `binary` (at any depth: the image struct, init images passed through) as `large_binary`:
    repeated once per image of a row, or gathered into a large shard, the bytes could pass 2 GiB."""
    schema = pa.schema([field.with_type(_swap(field.type, pa.binary(), pa.large_binary())) for field in table.schema])
    return table if schema.equals(table.schema) else table.cast(schema)


_GROUP_BYTES = 2**30  # a row group's bytes, well under what 32-bit offsets address


def stored_row_groups(table: pa.Table, rows: int) -> tuple[pa.Schema, list[pa.Table]]:
    """What a shard file stores: `table` with `large_binary` as `binary`, cut into row groups of `rows` rows, or of
    one row where those would pass 1 GiB, each with offsets of its own. Raises pyarrow.ArrowInvalid only for a
    single row of more than 2 GiB."""
    schema = pa.schema([field.with_type(_swap(field.type, pa.large_binary(), pa.binary())) for field in table.schema])
    schema = schema.with_metadata(table.schema.metadata)
    groups = []
    for batch in table.to_batches(max_chunksize=rows):
        parts = [batch] if batch.nbytes <= _GROUP_BYTES else [batch.slice(i, 1) for i in range(batch.num_rows)]
        # take: a compact copy whose offsets start at 0, which the cast to 32-bit offsets needs
        groups += [pa.Table.from_batches([part.take(pa.array(range(part.num_rows)))]).cast(schema) for part in parts]
    return schema, groups


def _swap(data_type: pa.DataType, old: pa.DataType, new: pa.DataType) -> pa.DataType:
    if data_type == old:
        return new
    if pa.types.is_struct(data_type):
        return pa.struct([field.with_type(_swap(field.type, old, new)) for field in data_type])
    return data_type
