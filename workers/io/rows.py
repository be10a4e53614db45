"""Reading a shard's rows from its manifest file and resolving each row's generation settings."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.parquet as pq

from workers.io import columns as C
from workers.io import storage
from workers.tasks import GenerationDefaults, ShardTask


@dataclass(frozen=True)
class RowSpec:
    """One image to generate, with every setting resolved."""

    id: object
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance_scale: float
    width: int
    height: int
    init_image: bytes | str | None = None  # image-to-image (or reconstruct) input: encoded bytes, a path or a URI
    strength: float | None = None  # image-to-image rows only
    image_index: int = 0  # which of the row's generation.images_per_prompt images
    true_cfg_scale: float | None = None  # the job's generation.true_cfg_scale (families with true CFG)
    max_sequence_length: int | None = None  # the job's T5/LLM token limit (families with such encoders)
    adapter: str | None = None  # the manifest's `adapter`: which of model.adapters (None: the model without them)

    @property
    def batch_key(self) -> tuple:
        """Rows that share this key can go through the pipeline in one call."""
        image_to_image = self.init_image is not None
        return (
            self.steps,
            self.guidance_scale,
            self.width,
            self.height,
            image_to_image,
            self.strength,
            self.true_cfg_scale,
            self.max_sequence_length,
            self.adapter,  # a pipeline call runs with one adapter (workers.pipeline.adapters)
        )


def derive_seed(job_seed: int, row_id: object) -> int:
    """A stable 63-bit seed for a row that has none, from the job seed and the row's id."""
    digest = hashlib.blake2b(f"{job_seed}:{row_id!r}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def read_slice(path: str, start: int, stop: int) -> pa.Table:
    """Rows [start, stop) of a Parquet file, reading only the row groups that hold them."""
    parquet = pq.ParquetFile(storage.open_input(path))
    metadata = parquet.metadata
    groups: list[int] = []
    first, offset = 0, 0  # first: the row number of the first group read
    for group in range(metadata.num_row_groups):
        size = metadata.row_group(group).num_rows
        if offset < stop and offset + size > start:
            if not groups:
                first = offset
            groups.append(group)
        offset += size
    if not groups:
        return parquet.schema_arrow.empty_table()
    table = parquet.read_row_groups(groups)
    return table.slice(start - first, stop - start)


def row_ids(table: pa.Table, task: ShardTask) -> pa.Array:
    """The shard's ids: the manifest's `id` column, else each row's manifest-wide position."""
    if task.has_id_column:
        return table.column(C.ID).combine_chunks()
    return pa.array(range(task.first_row, task.first_row + table.num_rows), type=pa.int64())


def resolve_rows(table: pa.Table, ids: pa.Array, defaults: GenerationDefaults, job_seed: int) -> list[RowSpec]:
    """Turn manifest rows into RowSpecs; null or absent optional values fall back to the defaults."""

    def values(name: str) -> list:
        if name in table.column_names:
            return table.column(name).to_pylist()
        return [None] * table.num_rows

    prompts = values(C.PROMPT)
    negatives = values(C.NEGATIVE_PROMPT)
    seeds = values(C.SEED)
    steps = values(C.STEPS)
    guidance = values(C.GUIDANCE_SCALE)
    widths = values(C.WIDTH)
    heights = values(C.HEIGHT)
    init_images = values(C.INIT_IMAGE)
    strengths = values(C.STRENGTH)
    adapters = values(C.ADAPTER)
    specs = []
    for i, row_id in enumerate(ids.to_pylist()):
        specs.append(
            RowSpec(
                id=row_id,
                prompt=prompts[i] or "",
                negative_prompt=_default(negatives[i], defaults.negative_prompt),
                seed=int(seeds[i]) if seeds[i] is not None else derive_seed(job_seed, row_id),
                steps=int(_default(steps[i], defaults.steps)),
                guidance_scale=float(_default(guidance[i], defaults.guidance_scale)),
                width=int(_default(widths[i], defaults.width)),
                height=int(_default(heights[i], defaults.height)),
                init_image=init_images[i],
                strength=None if init_images[i] is None else float(_default(strengths[i], defaults.strength)),
                true_cfg_scale=defaults.true_cfg_scale,
                max_sequence_length=defaults.max_sequence_length,
                adapter=adapters[i],
            )
        )
    return specs


def expand_images(table: pa.Table, ids: pa.Array, rows: list[RowSpec], count: int):
    """`count` output rows per manifest row: image 0 keeps the row's seed, image k > 0 gets a seed
    derived from (row seed, k), so every image is distinct and reproducible."""
    positions = [i for i in range(len(rows)) for _ in range(count)]
    expanded = [
        replace(row, image_index=k, seed=row.seed if k == 0 else derive_seed(row.seed, f"image-{k}"))
        for row in rows
        for k in range(count)
    ]
    return C.with_wide_offsets(table).take(positions), ids.take(positions), expanded


def _default(value, fallback):
    return fallback if value is None else value
