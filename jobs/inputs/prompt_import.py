"""Turning the prompt lists people have (.txt, .csv, .tsv, .jsonl) into a genbatch manifest (Parquet)."""

from __future__ import annotations

import csv
import glob
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.errors import ManifestError
from jobs.inputs.manifest import read_manifest
from workers.io import columns as C
from workers.io import storage
from workers.io.rows import derive_seed

MAX_LINES_SHOWN = 5
FORMATS = (".txt", ".csv", ".tsv", ".jsonl")

# Pass-through columns that genbatch reads as per-row settings: stored typed, since the manifest checks their types.
_OVERRIDE_TYPES = {C.STEPS: int, C.WIDTH: int, C.HEIGHT: int, C.GUIDANCE_SCALE: float}
_OVERRIDE_RULES = {int: "not an integer", float: "not a number"}


@dataclass(frozen=True)
class ImportSummary:
    rows: int  # manifest rows written: prompts x images_per_prompt
    prompts: int
    columns: list[str]
    output: str


@dataclass
class _Records:
    """What a reader found: column names in file order, and per record its first line and its values."""

    columns: list[str]
    lines: list[int] = field(default_factory=list)
    values: list[dict] = field(default_factory=list)


@dataclass
class _Problem:
    """Records that break one rule, named by their line numbers in the input file."""

    rule: str
    column: str | None = None
    count: int = 0
    lines: list[int] = field(default_factory=list)

    def add(self, line: int) -> None:
        self.count += 1
        if len(self.lines) < MAX_LINES_SHOWN:
            self.lines.append(line)

    def message(self, path: str) -> str:
        where = f"column {self.column!r}: " if self.column is not None else ""
        rows, label = ("row", "line") if self.count == 1 else ("rows", "lines")
        shown = ", ".join(str(line) for line in self.lines)
        return f"{path}: {where}{self.rule} in {self.count} {rows} ({label}: {shown})"


def import_prompts(
    input_path: str,
    output_path: str,
    prompt_column: str | None = None,
    id_column: str | None = None,
    images_per_prompt: int = 1,
    seed: int | None = None,
) -> ImportSummary:
    """Write a manifest with `images_per_prompt` rows per prompt; raises ManifestError naming what is wrong.

    Ids are stable across reruns of the same input: the prompt's 0-based index (`000000`) or its `id_column` value,
    with `-k` appended when there are several images per prompt. With a `seed`, a `seed` column holds seeds derived
    from (seed, id); without one there is no seed column, and the job derives each row's seed from its own seed.
    """
    # 1. Check the arguments and read the input
    if images_per_prompt < 1:
        raise ManifestError(f"{input_path}: images_per_prompt must be at least 1, got {images_per_prompt}")
    extension = os.path.splitext(input_path)[1].lower()
    if extension not in FORMATS:
        raise ManifestError(f"{input_path}: unsupported format (use .txt, .csv, .tsv or .jsonl)")
    if extension == ".txt" and id_column is not None:
        raise ManifestError(f"{input_path}: a .txt file has no columns; id_column needs .csv, .tsv or .jsonl")
    records = _read(input_path, extension)
    if not records.lines:
        raise ManifestError(f"{input_path}: no prompts found")

    # 2. Map input columns onto manifest columns
    prompt_source = C.PROMPT if extension == ".txt" else _find_prompt_column(input_path, records.columns, prompt_column)
    if id_column is not None and id_column not in records.columns:
        raise ManifestError(f"{input_path}: no {id_column!r} column (columns: {', '.join(records.columns)})")
    if id_column == prompt_source:
        raise ManifestError(f"{input_path}: the prompt and id columns are both {id_column!r}")
    passed = _map_columns(input_path, records.columns, prompt_source, id_column)

    # 3. Check every record; one message names the first broken rule and up to 5 of its lines
    prompts, bases, extra = _check_records(input_path, records, prompt_source, id_column, passed)

    # 4. Expand to one row per image, with a seed derived from the row's id when a seed is given
    ids = [base if images_per_prompt == 1 else f"{base}-{k}" for base in bases for k in range(images_per_prompt)]
    arrays = {
        C.ID: pa.array(ids, pa.string()),
        C.PROMPT: pa.array([p for p in prompts for _ in range(images_per_prompt)], pa.string()),
    }
    if seed is not None:
        arrays[C.SEED] = pa.array([derive_seed(seed, row_id) for row_id in ids], pa.int64())
    for target, values in extra.items():
        kind = {int: pa.int64(), float: pa.float64()}.get(_OVERRIDE_TYPES.get(target, str), pa.string())
        arrays[target] = pa.array([v for v in values for _ in range(images_per_prompt)], kind)
    table = pa.table(arrays)

    # 5. Write next to the output, check with genbatch's own manifest rules, then move into place
    _write_atomically(table, input_path, output_path)
    return ImportSummary(rows=table.num_rows, prompts=len(prompts), columns=table.column_names, output=output_path)


def _read(path: str, extension: str) -> _Records:
    with reading(path):
        if extension == ".txt":
            return _read_txt(path)
        if extension == ".jsonl":
            return _read_jsonl(path)
        # PartiPrompts-style TSV quotes nothing: a `"` inside a prompt is part of the prompt.
        if extension == ".tsv":
            return _read_delimited(path, "\t", csv.QUOTE_NONE)
        return _read_delimited(path, ",", csv.QUOTE_MINIMAL)


@contextmanager
def reading(path: str, what: str = "") -> Iterator[None]:
    """A text input that cannot be read is a one-line ManifestError; `what` says what the file is for."""
    try:
        yield
    except FileNotFoundError:
        raise ManifestError(f"{path}: file not found{what}") from None
    except IsADirectoryError:
        raise ManifestError(f"{path}: is a folder, not a file{what}") from None
    except UnicodeDecodeError as error:
        raise ManifestError(f"{path}: not UTF-8 text ({error.reason})") from None
    except OSError as error:
        raise ManifestError(f"{path}: cannot read ({error.strerror or error})") from None


def _read_txt(path: str) -> _Records:
    records = _Records(columns=[C.PROMPT])
    # utf-8-sig drops a BOM; universal newlines turn \r\n into \n. The rest of the line is the prompt, tabs included.
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            text = line.rstrip("\n")
            if text.strip():
                records.lines.append(number)
                records.values.append({C.PROMPT: text})
    return records


def _read_delimited(path: str, delimiter: str, quoting: Literal[0, 1, 2, 3]) -> _Records:
    records, width = _Records(columns=[]), _Problem("")
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
        previous = 0
        try:
            for fields in reader:
                # A quoted field may span lines: a record starts on the line after the previous one ended.
                start, previous = previous + 1, reader.line_num
                if not fields:
                    continue
                if not records.columns:
                    records.columns = fields
                elif len(fields) != len(records.columns):
                    width.add(start)
                else:
                    records.lines.append(start)
                    records.values.append(dict(zip(records.columns, fields)))
        except csv.Error as error:
            raise ManifestError(f"{path}: line {reader.line_num}: {error}") from None
    if width.count:
        width.rule = f"field count differs from the header's {len(records.columns)}"
        raise ManifestError(width.message(path))
    return records


def _read_jsonl(path: str) -> _Records:
    records, columns = _Records(columns=[]), {}  # a dict keeps keys in order of first appearance
    with open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                detail = f"{error.msg} at column {error.colno}"
                raise ManifestError(f"{path}: line {number}: not a JSON object ({detail})") from None
            if not isinstance(record, dict):
                raise ManifestError(f"{path}: line {number}: not a JSON object (found {_json_kind(record)})")
            columns.update(dict.fromkeys(record))
            records.lines.append(number)
            records.values.append(record)
    records.columns = list(columns)
    return records


def _find_prompt_column(path: str, columns: list[str], prompt_column: str | None) -> str:
    wanted = [prompt_column] if prompt_column is not None else [C.PROMPT, "Prompt"]
    for name in wanted:
        if name in columns:
            return name
    names = " or ".join(repr(name) for name in wanted)
    raise ManifestError(f"{path}: no {names} column (columns: {', '.join(columns)})")


def _map_columns(path: str, columns: list[str], prompt_source: str, id_source: str | None) -> dict[str, str]:
    """Pass-through input column -> its manifest name; raises on blank, reserved and colliding names."""
    reserved = {C.ID, C.SEED} | C.RESERVED
    sources: dict[str, str] = {}  # manifest column -> the input column it comes from
    for column in columns:
        if not column.strip():
            raise ManifestError(f"{path}: blank column name (columns: {', '.join(columns)})")
        if column == prompt_source:
            target = C.PROMPT
        elif column == id_source:
            target = C.ID
        else:
            target = column.lower()
            if target in reserved:
                hint = " or make it the id column" if target == C.ID and id_source is None else ""
                raise ManifestError(f"{path}: column {column!r} is reserved for genbatch; rename it{hint}")
        if target in sources:
            raise ManifestError(f"{path}: columns {sources[target]!r} and {column!r} both become {target!r}")
        sources[target] = column
    return {source: target for target, source in sources.items() if target not in (C.ID, C.PROMPT)}


def _check_records(
    path: str, records: _Records, prompt_source: str, id_source: str | None, passed: dict[str, str]
) -> tuple[list, list, dict[str, list]]:
    """Prompts, id bases (strings, once checked) and pass-through values per record, or ManifestError for
    the first broken rule."""
    not_text = _Problem("missing or not a string", prompt_source)
    blank = _Problem("empty or whitespace-only prompt", prompt_source)
    no_id = _Problem("empty or missing id", id_source)
    duplicate = _Problem("duplicate ids", id_source)
    bad = {s: _Problem(_OVERRIDE_RULES[_OVERRIDE_TYPES[t]], s) for s, t in passed.items() if t in _OVERRIDE_TYPES}
    prompts: list = []
    bases: list[str | None] = []
    extra: dict[str, list] = {target: [] for target in passed.values()}
    for index, (line, values) in enumerate(zip(records.lines, records.values)):
        prompt = values.get(prompt_source)
        if not isinstance(prompt, str):
            not_text.add(line)
        elif not prompt.strip():
            blank.add(line)
        prompts.append(prompt)
        if id_source is None:
            bases.append(f"{index:06d}")
        else:
            raw = values.get(id_source)
            bases.append(raw if isinstance(raw, str) or raw is None else json.dumps(raw, ensure_ascii=False))
            if bases[-1] is None or not bases[-1].strip():
                no_id.add(line)
        for source, target in passed.items():
            value = values.get(source)
            if target in _OVERRIDE_TYPES:
                try:
                    value = _parse_override(value, _OVERRIDE_TYPES[target])
                except ValueError:
                    bad[source].add(line)
            elif value is not None and not isinstance(value, str):
                value = json.dumps(value, ensure_ascii=False)  # mixed JSON types never break a string column
            extra[target].append(value)
    if id_source is not None:
        counts = Counter(bases)
        for line, base in zip(records.lines, bases):
            if base is not None and base.strip() and counts[base] > 1:
                duplicate.add(line)
    found = [p for p in (not_text, blank, no_id, duplicate, *bad.values()) if p.count]
    if found:
        others = f" (and {len(found) - 1} more problems)" if len(found) > 1 else ""
        raise ManifestError(found[0].message(path) + others)
    return prompts, bases, extra


def _parse_override(value: object, kind: type) -> int | float | None:
    """A per-row setting as genbatch reads it; empty or missing means "use the job's setting"."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        return kind(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise ValueError(value)
    return kind(value)


def _write_atomically(table: pa.Table, input_path: str, output_path: str) -> None:
    write_manifest_atomically(lambda path: pq.write_table(table, path), input_path, output_path)


def write_manifest_atomically(write: Callable[[str], None], input_label: str, output_path: str) -> None:
    """`write(path)` writes the manifest; it is checked by genbatch's own manifest rules, then moved into place.

    A failed import leaves no output and never a half-written one; an existing output is replaced whole."""
    folder = os.path.dirname(os.path.abspath(output_path))
    # A name of our own rather than mkstemp's: the file then gets the umask's permissions, not 0600.
    temporary = os.path.join(folder, storage.temp_name(os.path.basename(output_path)))
    try:
        os.makedirs(folder, exist_ok=True)
        write(temporary)
        read_manifest(glob.escape(temporary))
        os.replace(temporary, output_path)
    except ManifestError as error:
        # Only per-row settings can fail here (e.g. a width that is no multiple of 8); name the input, not the temp.
        raise ManifestError(str(error).replace(temporary, input_label)) from None
    except OSError as error:
        raise ManifestError(f"{output_path}: cannot write ({error.strerror or error})") from None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _json_kind(value: object) -> str:
    kinds = {list: "an array", str: "a string", bool: "true or false", int: "a number", float: "a number"}
    return kinds.get(type(value), "null")
