"""Finding, reading and validating prompt manifests (Parquet) before any actor starts."""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.errors import ManifestError, one_line
from workers.io import columns as C
from workers.io import storage
from workers.io.layout import OUTPUT_MARKERS

MAX_IDS_SHOWN = 5
MAX_SEED = 2**63 - 1  # seeds are written as int64
_BATCH_ROWS = 65_536


@dataclass(frozen=True)
class ManifestFile:
    path: str
    rows: int
    first_row: int  # manifest-wide index of this file's first row


@dataclass(frozen=True)
class Manifest:
    source: str
    files: tuple[ManifestFile, ...]
    columns: tuple[str, ...]
    has_id_column: bool
    rows: int
    fingerprint: str
    seeded_rows: int = 0  # rows whose `seed` column holds a value: the job's seed does not apply to them


@dataclass
class _Problem:
    """Rows of one file that break one rule."""

    file: str
    column: str
    rule: str
    noun: str = "row"
    shown_as: str = "ids"
    count: int = 0
    ids: list = field(default_factory=list)

    def add(self, ids: list) -> None:
        self.count += len(ids)
        self.ids.extend(ids[: MAX_IDS_SHOWN - len(self.ids)])

    def message(self) -> str:
        shown = ", ".join(_show_id(i) for i in self.ids)
        noun = self.noun if self.count == 1 else self.noun + "s"
        return f"{self.file}: column {self.column!r}: {self.rule} in {self.count} {noun} ({self.shown_as}: {shown})"


def find_manifest_files(source: str) -> list[str]:
    """A file, every `*.parquet` below a folder, or the files a glob matches; sorted, so stable.

    Below a folder, genbatch output folders (holding `job.json` or `.genbatch.lock`) are skipped: a
    job's output may live inside its manifest folder. On object stores (`s3://...`), a key or every
    `*.parquet` below a prefix (skipping output prefixes the same way); no globs."""
    if storage.is_remote(source):
        return _find_remote_files(source)
    if glob.has_magic(source):
        files = sorted(p for p in glob.glob(source, recursive=True) if os.path.isfile(p))
    elif os.path.isdir(source):
        root = Path(source)
        outputs = {p.parent for marker in OUTPUT_MARKERS for p in root.rglob(marker) if p.parent != root}
        files = sorted(
            str(p)
            for p in root.rglob("*.parquet")
            if p.is_file() and not p.name.startswith(".") and outputs.isdisjoint(p.parents)
        )
    elif os.path.isfile(source):
        files = [source]
    else:
        raise ManifestError(f"{source}: manifest not found")
    if not files:
        raise ManifestError(f"{source}: no Parquet files found")
    return files


def _find_remote_files(source: str) -> list[str]:
    try:
        if storage.is_file(source):
            return [source]
        listing = storage.list_files(source, recursive=True)
        outputs = {storage.parent(f) + "/" for f in listing if storage.name(f) in OUTPUT_MARKERS}
        outputs.discard(storage.normalized(source) + "/")
        files = [
            f
            for f in listing
            if f.endswith(".parquet")
            and not storage.name(f).startswith(".")
            and not any(f.startswith(output) for output in outputs)
        ]
    except OSError as error:
        raise ManifestError(f"{source}: cannot read manifest ({one_line(error)})") from None
    if not files:
        raise ManifestError(f"{source}: no Parquet files found")
    return files


def read_manifest(source: str, mode: str = "generate") -> Manifest:
    """Validate every file and row of a manifest; raises ManifestError naming what is wrong.

    `mode: reconstruct` needs an init_image per row and no prompt."""
    paths = find_manifest_files(source)
    schema, files, first_row = None, [], 0
    for path in paths:
        parquet = _open(path)
        if schema is None:
            schema = parquet.schema_arrow
            _check_schema(path, schema, mode)
        elif not parquet.schema_arrow.equals(schema):
            raise ManifestError(
                f"{path}: columns differ from {paths[0]} ({_describe(parquet.schema_arrow)} vs {_describe(schema)})"
            )
        rows = parquet.metadata.num_rows
        files.append(ManifestFile(path=path, rows=rows, first_row=first_row))
        first_row += rows
    if first_row == 0:
        raise ManifestError(f"{source}: manifest has no rows")
    assert schema is not None  # find_manifest_files found at least one file
    has_id = C.ID in schema.names
    # One 8-byte key per row (the id itself, or its hash) is all the uniqueness check keeps in memory.
    keys = np.empty(first_row, dtype=np.int64) if has_id else None
    seeded = sum(_check_rows(manifest_file, schema, has_id, keys, mode) for manifest_file in files)
    if keys is not None:  # without an id column, ids are row positions: unique by construction
        _check_unique_ids(source if len(files) > 1 else files[0].path, files, keys)
    return Manifest(
        source=source,
        files=tuple(files),
        columns=tuple(schema.names),
        has_id_column=has_id,
        rows=first_row,
        fingerprint=fingerprint(paths),
        seeded_rows=seeded,
    )


def seed_column_warning(manifest: Manifest, job_seed: int) -> str | None:
    """What to tell a user whose config `seed:` the manifest's own seeds override, if it overrides any."""
    if manifest.seeded_rows == 0:
        return None
    if manifest.seeded_rows == manifest.rows:
        return f"manifest column 'seed' sets every row's seed; the config's seed: {job_seed} applies to none of them"
    others = manifest.rows - manifest.seeded_rows
    return (
        f"manifest column 'seed' sets the seed of {manifest.seeded_rows} of {manifest.rows} rows; "
        f"the config's seed: {job_seed} applies only to the other {others}"
    )


def fingerprint(paths: list[str]) -> str:
    """sha256 over the files' bytes, in order: changes whenever the manifest's contents change."""
    digest = hashlib.sha256()
    for path in paths:
        with storage.open_stream(path) as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        digest.update(b"\0file\0")
    return digest.hexdigest()


def _open(path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(storage.open_input(path))
    except pa.ArrowInvalid as error:
        raise ManifestError(f"{path}: not a Parquet file ({one_line(error)})") from None
    except OSError as error:
        raise ManifestError(f"{path}: cannot read manifest ({one_line(error)})") from None


def _check_schema(path: str, schema: pa.Schema, mode: str) -> None:
    names = set(schema.names)
    required = C.INIT_IMAGE if mode == "reconstruct" else C.PROMPT
    if required not in names:
        why = " (mode: reconstruct)" if mode == "reconstruct" else ""
        raise ManifestError(f"{path}: no {required!r} column{why} (columns: {', '.join(schema.names)})")
    reserved = sorted(names & C.RESERVED)
    if reserved:
        raise ManifestError(f"{path}: column {reserved[0]!r} is reserved for genbatch's output; rename it")
    expected = {
        C.PROMPT: ("strings", _is_string),
        C.NEGATIVE_PROMPT: ("strings", _is_string),
        C.ADAPTER: ("adapter names (strings)", _is_string),
        C.ID: ("strings or integers", lambda t: _is_string(t) or pa.types.is_integer(t)),
        C.SEED: ("integers", pa.types.is_integer),
        C.STEPS: ("integers", pa.types.is_integer),
        C.WIDTH: ("integers", pa.types.is_integer),
        C.HEIGHT: ("integers", pa.types.is_integer),
        C.GUIDANCE_SCALE: ("numbers", lambda t: pa.types.is_floating(t) or pa.types.is_integer(t)),
        C.STRENGTH: ("numbers", lambda t: pa.types.is_floating(t) or pa.types.is_integer(t)),
        C.INIT_IMAGE: ("image bytes or paths", lambda t: _is_string(t) or _is_binary(t)),
    }
    for name, (kind, accepts) in expected.items():
        if name in names and not accepts(schema.field(name).type):
            raise ManifestError(f"{path}: column {name!r} must hold {kind}, found {schema.field(name).type}")


def _check_rows(
    manifest_file: ManifestFile, schema: pa.Schema, has_id: bool, keys: np.ndarray | None, mode: str
) -> int:
    """Check every row of one file; fills this file's part of `keys` (one id key per row) if there are ids.

    Returns how many of the file's rows have a seed."""
    path = manifest_file.path
    wanted = [n for n in (C.ID, C.PROMPT, C.SEED, C.STRENGTH, *C.ROW_OVERRIDES) if n in schema.names]
    if mode == "reconstruct":  # the prompt is optional: it is only used for a CLIP score, when present
        wanted = [n for n in wanted if n != C.PROMPT] + [C.INIT_IMAGE]
    rules = [
        (C.ID, "null id", lambda col: col.is_null()),
        (C.INIT_IMAGE, "null init_image (mode: reconstruct)", lambda col: col.is_null()),
        (C.PROMPT, "null, empty or whitespace-only prompt", _blank),
        (C.STRENGTH, "strength not in (0, 1]", _bad_strength),
        (C.SEED, *_seed_rule(schema)),
        (C.STEPS, "steps < 1", lambda col: pc.less(col, _scalar(1, col))),
        (C.GUIDANCE_SCALE, "negative or non-finite guidance_scale", _bad_guidance),
        (C.WIDTH, "width not a positive multiple of 8", _bad_size),
        (C.HEIGHT, "height not a positive multiple of 8", _bad_size),
    ]
    problems = {name: _Problem(path, name, rule) for name, rule, _ in rules if name in wanted}
    if C.ID in problems:
        problems[C.ID].shown_as = "file rows"  # a null id cannot name its row; its position can
    offset, seeded = 0, 0
    for batch in _batches(path, wanted):
        start, offset = offset, offset + batch.num_rows
        if C.SEED in wanted:
            seeded += batch.num_rows - batch.column(C.SEED).null_count
        if keys is not None:
            first = manifest_file.first_row + start
            keys[first : first + batch.num_rows] = _id_keys(batch.column(C.ID))
        for name, _, broken in rules:
            if name in problems:
                mask = pc.fill_null(broken(batch.column(name)), False)
                if pc.any(mask).as_py():
                    # Row positions are built only for the rows to name, not for every batch.
                    positions = pa.array(np.arange(start, offset, dtype=np.int64))
                    if name == C.ID:
                        shown = positions
                    elif has_id:
                        shown = batch.column(C.ID)
                    else:
                        shown = pc.add(positions, manifest_file.first_row)
                    problems[name].add(pc.filter(shown, mask).to_pylist())
    found = [problem for problem in problems.values() if problem.count]
    if found:
        others = f" (and {len(found) - 1} more problems)" if len(found) > 1 else ""
        raise ManifestError(found[0].message() + others)
    return seeded


def _check_unique_ids(where: str, files: list[ManifestFile], keys: np.ndarray) -> None:
    """Sort the ids' keys to find repeats; only if some key repeats, re-read the ids to name the duplicates.

    A key is the id itself for integer ids and a 64-bit hash for string ids, so a repeated key is only a
    candidate: the second pass keeps the ids whose key repeats and counts those exactly.
    """
    keys.sort()
    repeated_keys = np.unique(keys[1:][keys[1:] == keys[:-1]])
    if not len(repeated_keys):
        return
    candidates = []
    for manifest_file in files:
        for batch in _batches(manifest_file.path, [C.ID]):
            ids = batch.column(C.ID)
            candidates.append(pc.filter(ids, np.isin(_id_keys(ids), repeated_keys)))
    counts = pc.value_counts(pa.chunked_array(candidates))
    repeated = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))
    if len(repeated):
        problem = _Problem(where, C.ID, "duplicates", noun="id")
        problem.add(repeated.to_pylist())
        raise ManifestError(problem.message())


def _batches(path: str, columns: list[str]):
    return pq.ParquetFile(storage.open_input(path)).iter_batches(batch_size=_BATCH_ROWS, columns=columns)


def _id_keys(ids: pa.Array) -> np.ndarray:
    """An int64 per id: integer ids as they are (distinct ids, distinct keys), string ids hashed.

    Null ids get key 0; they are reported as null ids before uniqueness is checked."""
    if pa.types.is_integer(ids.type):
        return ids.fill_null(0).to_numpy().astype(np.int64)
    return np.fromiter(map(hash, ids.to_pylist()), dtype=np.int64, count=len(ids))


def _seed_rule(schema: pa.Schema) -> tuple:
    """Unsigned seeds cannot be negative, but uint64 ones can be too large for int64."""
    if C.SEED in schema.names and pa.types.is_uint64(schema.field(C.SEED).type):
        return f"seed above {MAX_SEED}", lambda col: pc.greater(col, _scalar(MAX_SEED, col))
    return "negative seed", lambda col: pc.less(col, _scalar(0, col))


def _scalar(value: int, column: pa.Array) -> pa.Scalar:
    """`value` as the column's type: compared with a plain int, a uint64 column is cast to int64 and can overflow."""
    return pa.scalar(value, column.type)


def _blank(column: pa.Array) -> pa.Array:
    return pc.or_kleene(column.is_null(), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0))


def _bad_guidance(column: pa.Array) -> pa.Array:
    column = pc.cast(column, pa.float64())
    return pc.or_(pc.less(column, 0), pc.invert(pc.is_finite(column)))


def _bad_strength(column: pa.Array) -> pa.Array:
    column = pc.cast(column, pa.float64())
    return pc.or_(pc.less_equal(column, 0), pc.invert(pc.less_equal(column, 1)))


def _is_binary(data_type: pa.DataType) -> bool:
    return pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type)


def _bad_size(column: pa.Array) -> pa.Array:
    misaligned = pc.not_equal(pc.bit_wise_and(column, _scalar(7, column)), 0)
    return pc.or_(pc.less(column, _scalar(8, column)), misaligned)


def _is_string(data_type: pa.DataType) -> bool:
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type)


def _show_id(value) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _describe(schema: pa.Schema) -> str:
    return ", ".join(f"{f.name}: {f.type}" for f in schema)
