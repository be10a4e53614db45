"""A model folder's weights by component, from its safetensors headers alone: no tensor is read.

A safetensors file starts with an 8-byte little-endian header length and a JSON header that gives every
tensor's dtype, shape and byte range; the sizes follow from those. Sharded weights are listed by their
`*.safetensors.index.json`. Nothing here imports torch or `workers`: the driver reads a 50 GB model's sizes in
milliseconds, before any actor starts (jobs.fit turns them into a memory estimate).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

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


def weight_files(folder: Path, variant: str | None = None) -> list[Path] | None:
    """The .safetensors files `from_pretrained` loads from one component folder; None when it has none.

    A variant's files (`model.fp16.safetensors`, the index `model.safetensors.index.fp16.json`) where
    `variant` is set and the folder has them, else the plain ones, as diffusers falls back to."""
    for wanted in [variant, None] if variant else [None]:
        for stem in WEIGHT_STEMS:
            index = folder / (f"{stem}.safetensors.index.{wanted}.json" if wanted else f"{stem}.safetensors.index.json")
            if index.is_file():
                return _sharded_files(index)
            single = folder / (f"{stem}.{wanted}.safetensors" if wanted else f"{stem}.safetensors")
            if single.is_file():
                return [single]
    return None


def _sharded_files(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise WeightsError(f"{index}: not a safetensors index (no weight_map)") from None
    return [index.parent / name for name in names]


def folder_tensors(folder: Path, variant: str | None = None) -> list[TensorInfo] | None:
    """Every tensor of one component (or single-model) folder; None when it has no safetensors weights."""
    files = weight_files(folder, variant)
    if files is None:
        return None
    return [tensor for path in files for tensor in read_header(path)]


def pipeline_components(folder: Path) -> dict[str, Path]:
    """The component folders a diffusers pipeline folder's model_index.json names and genbatch loads:
    entries given as [library, class] (not [null, null]), less the safety checker."""
    index = folder / "model_index.json"
    try:
        entries = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise WeightsError(f"{index}: cannot be read as JSON ({error})") from None
    return {
        name: folder / name
        for name, value in entries.items()
        if not name.startswith("_")
        and name not in NOT_LOADED
        and isinstance(value, list)
        and len(value) == 2
        and value[0] is not None
    }
