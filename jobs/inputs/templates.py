"""Prompt sets from templates: `genbatch manifest --template "a {style} photo of a {object}" --var object=objects.txt`.

The manifest holds the Cartesian product of the variables' lists (or a sample of it drawn without replacement),
one column per variable. Rows are made a row group at a time, straight from their positions in the product
(mixed-radix digits, the last variable of the template varying fastest), so memory stays flat at any size.

A row's id is derived from its variables' values alone: the first 20 hex digits of the sha256 of the JSON list
of its sorted (name, value) pairs, e.g. `[["object","cat"],["style","oil"]]` (no spaces, UTF-8). The same
combination gets the same id whatever the order of the lists, of the lines in them, of the --var flags, or the
template's wording (so `genbatch compare` pairs two wordings' images by combination).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import string
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.errors import ManifestError
from jobs.inputs.prompt_import import ImportSummary, reading, write_manifest_atomically
from workers.io import columns as C
from workers.io.rows import derive_seed

# Writing more rows than this needs --yes: a typo in a list (or one list too many) should not silently make 10M rows.
MAX_ROWS_WITHOUT_YES = 1_000_000
ID_HEX_DIGITS = 20  # 80 bits: a collision among 10M rows has odds of about 1 in 10^10 (and is refused if it happens)
# Small row groups: an actor reads a 256-row shard by decoding the row groups that hold it.
ROW_GROUP_ROWS = 8192
MAX_COMBINATIONS = 2**63 - 1  # positions in the product are int64
# Manifest columns a variable may not become: genbatch reads or writes them itself.
_TAKEN_NAMES = C.RESERVED | C.REPLACED_INPUTS | {C.PROMPT, C.NEGATIVE_PROMPT, C.INIT_IMAGE}


@dataclass(frozen=True)
class Template:
    """A prompt template: literal text and variables, in order (`fields[i]` follows `literals[i]`)."""

    text: str
    literals: tuple[str, ...]  # one more than fields: the text after the last variable comes last
    fields: tuple[str, ...]  # variable names as they occur, repeats included

    @property
    def names(self) -> tuple[str, ...]:
        """Each variable once, in order of first occurrence."""
        return tuple(dict.fromkeys(self.fields))


@dataclass(frozen=True)
class Variable:
    name: str
    path: str  # the list file, as given
    values: tuple[str, ...]


def parse_template(text: str) -> Template:
    """`{name}` marks a variable, `{{` and `}}` are literal braces; anything else in braces is refused."""
    literals, fields = [], []
    pending = ""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as error:
        raise ManifestError(
            f"--template {text!r}: braces do not parse ({error}); write {{{{ or }}}} for a brace"
        ) from None
    for literal, name, spec, conversion in parsed:
        pending += literal
        if name is None:
            continue
        if not name.isidentifier() or not name.isascii() or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ManifestError(
                f"--template {text!r}: {shown} is not a variable; use {{name}} (letters, digits, _), "
                "or {{ and }} for literal braces"
            )
        if name in _TAKEN_NAMES:
            raise ManifestError(
                f"--template {text!r}: variable {{{name}}} would be the manifest column {name!r}, "
                "which genbatch reads or writes itself; rename it"
            )
        literals.append(pending)
        fields.append(name)
        pending = ""
    literals.append(pending)
    if not fields:
        raise ManifestError(f"--template {text!r}: no {{variables}}; a template needs at least one")
    return Template(text=text, literals=tuple(literals), fields=tuple(fields))


def parse_var_flags(template: Template, flags: list[str]) -> dict[str, str]:
    """`--var name=path` flags as {name: path}, checked against the template's variables."""
    paths: dict[str, str] = {}
    for flag in flags:
        name, sep, path = flag.partition("=")
        name = name.strip()
        if not sep or not name or not path:
            raise ManifestError(f"--var {flag!r}: expected NAME=FILE, e.g. --var object=objects.txt")
        if name in paths:
            raise ManifestError(f"--var {name}: given twice ({paths[name]} and {path})")
        if name not in template.names:
            raise ManifestError(
                f"--var {name}: no {{{name}}} in the template (its variables: {', '.join(template.names)})"
            )
        paths[name] = path
    missing = [name for name in template.names if name not in paths]
    if missing:
        flags_needed = " ".join(f"--var {name}=FILE" for name in missing)
        raise ManifestError(f"--template: {{{missing[0]}}} has no list; add {flags_needed}")
    return paths


def read_variable(name: str, path: str) -> Variable:
    """One value per line (surrounding whitespace dropped, blank lines skipped); duplicates are refused."""
    first_line: dict[str, int] = {}
    with reading(path, f" (the list for {{{name}}})"), open(path, encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            value = line.strip()
            if not value:
                continue
            if value in first_line:
                raise ManifestError(
                    f"{path}: line {number}: duplicate value {value!r} (first on line {first_line[value]})"
                )
            first_line[value] = number
    if not first_line:
        raise ManifestError(f"{path}: no values (the list for {{{name}}} is empty)")
    return Variable(name=name, path=path, values=tuple(first_line))


def combination_id(pairs: dict[str, str]) -> str:
    """The id of a combination of variable values (see the module's docstring); order-independent."""
    canonical = json.dumps(sorted(pairs.items()), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:ID_HEX_DIGITS]


def write_template_manifest(
    template_text: str,
    var_flags: list[str],
    output_path: str,
    images_per_prompt: int = 1,
    seed: int | None = None,
    sample: int | None = None,
    yes: bool = False,
) -> ImportSummary:
    """Write the template's manifest; raises ManifestError naming what is wrong, before anything is written.

    `sample` draws that many combinations without replacement, with `seed` (0 without one); `seed` also writes a
    `seed` column derived from (seed, id), as `genbatch manifest --seed` does for prompt lists."""
    # 1. Check the arguments, the template and every list
    if images_per_prompt < 1:
        raise ManifestError(f"--images-per-prompt must be at least 1, got {images_per_prompt}")
    if sample is not None and sample < 1:
        raise ManifestError(f"--sample must be at least 1, got {sample}")
    template = parse_template(template_text)
    paths = parse_var_flags(template, var_flags)
    variables = [read_variable(name, paths[name]) for name in template.names]
    combinations = math.prod(len(v.values) for v in variables)
    if combinations > MAX_COMBINATIONS:
        raise ManifestError(f"--template: {combinations:,} combinations is more than genbatch can number (2^63 - 1)")
    if sample is not None and sample > combinations:
        raise ManifestError(f"--sample {sample:,} is more than the template's {combinations:,} combinations")

    # 2. Refuse a surprise: more rows than MAX_ROWS_WITHOUT_YES, unless asked for
    chosen = combinations if sample is None else sample
    rows = chosen * images_per_prompt
    if rows > MAX_ROWS_WITHOUT_YES and not yes:
        sizes = " x ".join(f"{len(v.values):,} {v.name}" for v in variables)
        what = f"{sizes} = {combinations:,} combinations" if sample is None else f"--sample {sample:,}"
        per = f" x {images_per_prompt} images per prompt" if images_per_prompt > 1 else ""
        raise ManifestError(
            f"--template: {what}{per} makes {rows:,} rows, more than {MAX_ROWS_WITHOUT_YES:,}; "
            "rerun with --yes to write them, or draw fewer with --sample N"
        )

    # 3. Stream the rows into the manifest a row group at a time; it is checked like any manifest, then published
    positions = _all_positions(combinations) if sample is None else _sampled_positions(combinations, sample, seed or 0)
    schema = _schema(template, seed is not None)
    batch = max(1, ROW_GROUP_ROWS // images_per_prompt)

    def write(path: str) -> None:
        with pq.ParquetWriter(path, schema) as writer:
            for chunk in _chunks(positions, batch):
                writer.write_table(_rows(template, variables, chunk, images_per_prompt, seed, schema))

    write_manifest_atomically(write, "--template", output_path)
    return ImportSummary(rows=rows, prompts=chosen, columns=schema.names, output=output_path)


def _schema(template: Template, seeded: bool) -> pa.Schema:
    fields = [(C.ID, pa.string()), (C.PROMPT, pa.string())] + [(name, pa.string()) for name in template.names]
    return pa.schema(fields + ([(C.SEED, pa.int64())] if seeded else []))


def _rows(
    template: Template,
    variables: list[Variable],
    positions: np.ndarray,
    images_per_prompt: int,
    seed: int | None,
    schema: pa.Schema,
) -> pa.Table:
    """The rows of the combinations at `positions` (int64, positions in the product), `images_per_prompt` each."""
    # Mixed-radix digits: the template's last variable varies fastest, as in itertools.product.
    values: dict[str, pa.Array] = {}
    pairs: dict[str, pa.Array] = {}  # per variable, its (name, value) pair as JSON: `["object","cat"]`
    stride = 1
    for variable in reversed(variables):
        radix = len(variable.values)
        digits = pa.array((positions // stride) % radix)
        values[variable.name] = _value_array(variable).take(digits)
        pairs[variable.name] = _pair_json(variable).take(digits)
        stride *= radix
    # The id hashes the JSON list of the sorted pairs, assembled column-wise (the same text as combination_id's).
    pieces: list = []
    for name in sorted(pairs):
        pieces += [",", pairs[name]]
    canonical = pc.binary_join_element_wise("[", *pieces[1:], "]", "")
    bases = [hashlib.sha256(text.encode()).hexdigest()[:ID_HEX_DIGITS] for text in canonical.to_pylist()]
    prompt = pc.binary_join_element_wise(*_interleave(template, values), "")
    if images_per_prompt == 1:
        ids = bases
    else:
        ids = [f"{base}-{k}" for base in bases for k in range(images_per_prompt)]
        repeat = pa.array(np.repeat(np.arange(len(bases)), images_per_prompt))
        prompt = prompt.take(repeat)
        values = {name: column.take(repeat) for name, column in values.items()}
    arrays = {C.ID: pa.array(ids, pa.string()), C.PROMPT: prompt, **values}
    if seed is not None:
        arrays[C.SEED] = pa.array([derive_seed(seed, row_id) for row_id in ids], pa.int64())
    return pa.table(arrays, schema=schema)


def _interleave(template: Template, values: dict[str, pa.Array]) -> list:
    pieces: list = []
    for literal, name in zip(template.literals, template.fields):
        pieces += [literal, values[name]]
    return [*pieces, template.literals[-1]]


@functools.cache
def _value_array(variable: Variable) -> pa.Array:
    return pa.array(variable.values, pa.string())


@functools.cache
def _pair_json(variable: Variable) -> pa.Array:
    return pa.array(
        [json.dumps([variable.name, value], ensure_ascii=False, separators=(",", ":")) for value in variable.values]
    )


def _all_positions(combinations: int) -> Iterator[np.ndarray]:
    for start in range(0, combinations, ROW_GROUP_ROWS):
        yield np.arange(start, min(start + ROW_GROUP_ROWS, combinations), dtype=np.int64)


def _chunks(positions: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Re-cut a stream of position arrays into arrays of `size` (the last may be shorter)."""
    pending = np.empty(0, dtype=np.int64)
    for block in positions:
        pending = np.concatenate([pending, block])
        while len(pending) >= size:
            yield pending[:size]
            pending = pending[size:]
    if len(pending):
        yield pending


def _sampled_positions(combinations: int, count: int, seed: int) -> Iterator[np.ndarray]:
    """`count` distinct positions of the product, each subset equally likely, in increasing order.

    Without materialising the product: at most half of it is drawn by rejection (see `_draw_distinct`); a larger
    sample is the product minus such a draw of what is left out, streamed in order."""
    rng = np.random.default_rng(seed)
    if count <= combinations // 2:
        chosen = np.sort(_draw_distinct(rng, combinations, count))
        for start in range(0, count, ROW_GROUP_ROWS):
            yield chosen[start : start + ROW_GROUP_ROWS]
        return
    left_out = np.sort(_draw_distinct(rng, combinations, combinations - count))
    for start in range(0, combinations, ROW_GROUP_ROWS):
        block = np.arange(start, min(start + ROW_GROUP_ROWS, combinations), dtype=np.int64)
        lo, hi = np.searchsorted(left_out, [block[0], block[-1] + 1])
        yield np.setdiff1d(block, left_out[lo:hi], assume_unique=True)


def _draw_distinct(rng: np.random.Generator, population: int, count: int) -> np.ndarray:
    """`count` distinct integers of [0, population), drawn in order and keeping each first occurrence: every next
    one is uniform over those not yet drawn, so every subset is equally likely. Needs count <= population / 2,
    where each round keeps at least half of what it draws."""
    chosen = np.empty(0, dtype=np.int64)
    while len(chosen) < count:
        need = count - len(chosen)
        draw = rng.integers(0, population, size=need + need // 4 + 16, dtype=np.int64)
        _, first = np.unique(draw, return_index=True)
        draw = draw[np.sort(first)]  # distinct, in the order drawn
        seen = np.sort(chosen)
        at = np.searchsorted(seen, draw).clip(max=max(len(seen) - 1, 0))
        fresh = draw if not len(seen) else draw[seen[at] != draw]
        chosen = np.concatenate([chosen, fresh[:need]])
    return chosen
