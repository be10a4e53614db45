"""A model folder's weights by component, from its safetensors headers alone: no tensor is read.

A safetensors file starts with an 8-byte little-endian header length and a JSON header that gives every
tensor's dtype, shape and byte range; the sizes follow from those. Sharded weights are listed by their
`*.safetensors.index.json`. Nothing here imports torch or `workers`: the driver reads a 50 GB model's sizes in
milliseconds, before any actor starts (jobs.config.fit turns them into a memory estimate).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# Bytes per element of each safetensors dtype.
DTYPE_BYTES = {
    "F64": 8.0,
    "I64": 8.0,
    "U64": 8.0,
    "F32": 4.0,
    "I32": 4.0,
    "U32": 4.0,
    "F16": 2.0,
    "BF16": 2.0,
    "I16": 2.0,
    "U16": 2.0,
    "F8_E4M3": 1.0,
    "F8_E5M2": 1.0,
    "F8_E8M0": 1.0,
    "I8": 1.0,
    "U8": 1.0,
    "BOOL": 1.0,
    "F4": 0.5,
}
# Floating-point tensors are cast to the dtype the job runs in when loaded; integer ones stay as they are.
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
# The safetensors format caps its header at 100 MB; a larger length means the file is not safetensors.
MAX_HEADER_BYTES = 100_000_000
# diffusers' and transformers' weight file stems (`{stem}.safetensors`, `{stem}.{variant}.safetensors`).
WEIGHT_STEMS = ("diffusion_pytorch_model", "model")
# model_index.json entries genbatch never loads (it passes safety_checker=None; the others hold no weights).
NOT_LOADED = frozenset({"safety_checker"})


class WeightsError(ValueError):
    """A weights file that cannot be read as safetensors; the message names the file."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return math.ceil(self.numel * DTYPE_BYTES[self.dtype])

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


def read_header(path: str | Path) -> list[TensorInfo]:
    """Every tensor's name, dtype and shape from one .safetensors file's header (its first bytes only)."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            prefix = file.read(8)
            if len(prefix) < 8:
                raise WeightsError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise WeightsError(f"{path}: not a safetensors file (header length {length} bytes)")
            raw = file.read(length)
    except OSError as error:
        raise WeightsError(f"{path}: cannot be read ({error.strerror or error})") from None
    try:
        header = json.loads(raw)
        tensors = [
            TensorInfo(name, entry["dtype"], tuple(int(n) for n in entry["shape"]))
            for name, entry in header.items()
            if name != "__metadata__"
        ]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise WeightsError(f"{path}: not a safetensors file (its header is not safetensors JSON)") from None
    unknown = sorted({t.dtype for t in tensors} - DTYPE_BYTES.keys())
    if unknown:
        raise WeightsError(f"{path}: unknown safetensors dtype {unknown[0]!r}")
    return tensors


class Files(Protocol):
    """Where a model's files are read from: a local folder (LocalFiles), or the hub (jobs.config.fit.HubFiles).
    Paths are relative to the model's root, with `/`."""

    def has(self, path: str) -> bool: ...

    def under(self, folder: str) -> list[str]: ...  # the paths of the files in `folder`

    def read_json(self, path: str) -> dict: ...

    def tensors(self, path: str) -> list[TensorInfo]: ...


class LocalFiles:
    def __init__(self, root: Path):
        self.root = root

    def has(self, path: str) -> bool:
        return (self.root / path).is_file()

    def under(self, folder: str) -> list[str]:
        where = self.root / folder
        return sorted(f"{folder}/{p.name}" for p in where.iterdir() if p.is_file()) if where.is_dir() else []

    def read_json(self, path: str) -> dict:
        try:
            value = json.loads((self.root / path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise WeightsError(f"{self.root / path}: cannot be read as JSON ({error})") from None
        if not isinstance(value, dict):
            raise WeightsError(f"{self.root / path}: not a JSON object")
        return value

    def tensors(self, path: str) -> list[TensorInfo]:
        return read_header(self.root / path)

    def __str__(self) -> str:
        return str(self.root)


def weight_files(files: Files, folder: str = "", variant: str | None = None) -> list[str] | None:
    """The .safetensors files `from_pretrained` loads from one component `folder` (\"\": the root); None when
    it has none. A variant's files (`model.fp16.safetensors`, the index `model.safetensors.index.fp16.json`)
    where `variant` is set and the folder has them, else the plain ones, as diffusers falls back to."""
    prefix = f"{folder}/" if folder else ""
    for wanted in [variant, None] if variant else [None]:
        for stem in WEIGHT_STEMS:
            index = prefix + (f"{stem}.safetensors.index.{wanted}.json" if wanted else f"{stem}.safetensors.index.json")
            if files.has(index):
                return _sharded_files(files, index, prefix)
            single = prefix + (f"{stem}.{wanted}.safetensors" if wanted else f"{stem}.safetensors")
            if files.has(single):
                return [single]
    return None


def _sharded_files(files: Files, index: str, prefix: str) -> list[str]:
    try:
        names = sorted(set(files.read_json(index)["weight_map"].values()))
    except (KeyError, TypeError, AttributeError):
        raise WeightsError(f"{index}: not a safetensors index (no weight_map)") from None
    return [prefix + name for name in names]


def folder_tensors(files: Files, folder: str = "", variant: str | None = None) -> list[TensorInfo] | None:
    """Every tensor of one component (or single-model) folder; None when it has no safetensors weights."""
    paths = weight_files(files, folder, variant)
    if paths is None:
        return None
    return [tensor for path in paths for tensor in files.tensors(path)]


def holds_weights(files: Files, folder: str) -> bool:
    """True when a component folder has weight files of any format (a scheduler's or tokenizer's has none)."""
    return any(path.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt")) for path in files.under(folder))


def pipeline_components(files: Files) -> list[str]:
    """The component folders a diffusers pipeline's model_index.json names and genbatch loads: entries
    given as [library, class] (not [null, null]), less the safety checker."""
    entries = files.read_json("model_index.json")
    return [
        name
        for name, value in entries.items()
        if not name.startswith("_")
        and name not in NOT_LOADED
        and isinstance(value, list)
        and len(value) == 2
        and value[0] is not None
    ]
