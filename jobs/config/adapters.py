"""LoRA adapters on the driver: each file found and hashed once, for the job's identity and the actors' settings;
the manifest's `adapter` column checked against model.adapters before any actor starts.

The actors load what this module resolved (workers.pipeline.adapters): the sha256 recorded is that of the file they
load.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.config.schema import JobConfig, LoraConfig, folder_safetensors
from jobs.errors import ConfigError, ManifestError, one_line, some_of
from jobs.inputs.manifest import Manifest
from workers.io import columns as C
from workers.io import storage
from workers.tasks import LoraFile


def lora_files(config: JobConfig) -> tuple[LoraFile, ...]:
    """model.loras, resolved: fused into the weights for every row."""
    return tuple(_resolve(lora, f"model.loras[{i}]") for i, lora in enumerate(config.model.loras))


def adapter_files(config: JobConfig) -> tuple[tuple[str, tuple[LoraFile, ...]], ...]:
    """model.adapters, resolved: (name, its LoRA files), in the config's order."""
    return tuple(
        (name, tuple(_resolve(lora, f"model.adapters.{name}[{i}]") for i, lora in enumerate(loras)))
        for name, loras in config.model.adapters.items()
    )


def lora_identity(config: JobConfig) -> dict:
    """The LoRA part of the job's `model` identity: each file's sha256 and weight. Empty when the job has none,
    so the keys of jobs without LoRAs stay what they were before the option existed."""
    identity: dict = {}
    if config.model.loras:
        identity["loras"] = [_describe(lora) for lora in lora_files(config)]
    if config.model.adapters:
        identity["adapters"] = {name: [_describe(lora) for lora in loras] for name, loras in adapter_files(config)}
    return identity


def _describe(lora: LoraFile) -> dict:
    described = {"path": lora.source, "weight": lora.weight, "sha256": lora.sha256}
    return described if lora.weight_name is None else {**described, "weight_name": lora.weight_name}


def _resolve(lora: LoraConfig, key: str) -> LoraFile:
    """A local LoRA as the path of its file; a hub one as its id and file name, hashed from the hub cache or,
    where it is not cached, from the hub's record of the file (its LFS sha256)."""
    if os.path.exists(lora.path):
        path = lora.path
        if os.path.isdir(path):  # its weight_name, or the one .safetensors file it holds (LoraConfig checked)
            path = os.path.join(path, lora.weight_name or folder_safetensors(path)[0])
        path = os.path.abspath(path)
        stat = os.stat(path)
        return LoraFile(path, None, lora.weight, _file_sha256(path, stat.st_size, stat.st_mtime_ns))
    assert lora.weight_name is not None  # LoraConfig requires it for a hub id
    return LoraFile(lora.path, lora.weight_name, lora.weight, _hub_sha256(lora.path, lora.weight_name, key))


@lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file's bytes, once per process for a file of that size and modification time (a sweep's
    runs hash each LoRA once)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _hub_sha256(repo: str, file_name: str, key: str) -> str:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

    cached = try_to_load_from_cache(repo, file_name)
    if isinstance(cached, str):
        stat = os.stat(cached)
        return _file_sha256(cached, stat.st_size, stat.st_mtime_ns)
    try:
        metadata = get_hf_file_metadata(hf_hub_url(repo, file_name))
    except Exception as error:  # noqa: BLE001 - offline, unknown repo or file: one line for the user
        raise ConfigError(f"{key}: cannot find {file_name!r} in hub repository {repo!r} ({one_line(error)})") from None
    if not metadata.etag or len(metadata.etag) != 64:  # the LFS sha256 of a stored weights file
        raise ConfigError(f"{key}: the hub gives no sha256 for {repo}/{file_name}; download it and name the local file")
    return metadata.etag


def check_adapter_column(config: JobConfig, manifest: Manifest) -> None:
    """Refuse `adapter` values that name no adapter of model.adapters, naming the rows and the known names."""
    if C.ADAPTER not in manifest.columns:
        return
    known = set(config.model.adapters)
    for manifest_file in manifest.files:
        names = [C.ADAPTER] + ([C.ID] if manifest.has_id_column else [])
        table = pq.read_table(storage.open_input(manifest_file.path), columns=names)
        values = table.column(C.ADAPTER)
        unknown = pc.and_(
            pc.is_valid(values), pc.invert(pc.is_in(values, value_set=pa.array(sorted(known), type=pa.string())))
        )
        rows = pc.indices_nonzero(pc.fill_null(unknown, False)).to_pylist()
        if not rows:
            continue
        if manifest.has_id_column:
            ids = [str(i) for i in table.column(C.ID).take(rows).to_pylist()]
        else:
            ids = [str(manifest_file.first_row + row) for row in rows]
        found = sorted(set(values.take(rows).to_pylist()))
        raise ManifestError(
            f"{manifest_file.path}: column {C.ADAPTER!r}: {some_of([repr(name) for name in found])} "
            f"{'is' if len(found) == 1 else 'are'} not in model.adapters "
            f"({'1 row' if len(rows) == 1 else f'{len(rows)} rows'}, ids: {some_of(ids)}); "
            f"known: {', '.join(sorted(known)) or 'none (model.adapters is empty)'}"
        )
