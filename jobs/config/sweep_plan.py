"""A sweep's plan: its combinations as validated JobConfigs, their folder names, and OUTPUT/sweep.json.

Nothing here starts Ray or touches a model (jobs.run.sweep runs the plan)."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from jobs.config.schema import JobConfig, describe_validation_error
from jobs.errors import ConfigError, OutputError, one_line
from workers.io import layout, storage

# More runs than this need `genbatch run --yes`: a typo in a list should not start hours of work.
MAX_COMBINATIONS = 64
# Run folder names longer than this are cut and end in a hash of the run's settings. Well below the
# 255 bytes a file name may have, so OUTPUT/<name>/data/shard-00000.parquet fits object-store key limits.
MAX_FOLDER_NAME = 120
_DIGEST_LENGTH = 10
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")  # `=` and `,` separate the name's parts, so not in a part


@dataclass(frozen=True)
class SweepRun:
    """One combination: its folder's name, its settings ({dotted.key: value}, in the sweep's key order), and
    the complete config a standalone run of it would have."""

    folder: str
    settings: dict[str, Any]
    config: JobConfig


# 1. Expanding the sweep into validated runs.


def expand_sweep(config: JobConfig, source: str) -> list[SweepRun]:
    """Every combination of the sweep's values (the first key varies slowest), each validated as a whole
    JobConfig whose output is its folder under the sweep's output. Raises ConfigError naming the key and value."""
    axes = config.sweep or {}
    base = config.model_dump(mode="json", exclude={"sweep"})
    # Generation settings the user left to the model's family are resolved again for each run's model.
    base["generation"] = config.generation.model_dump(mode="json", exclude_unset=True)
    # Each value alone first, so that a bad one is named as `key=value` with what is wrong with it; then
    # as validation made it (2 and 2.0 of a float setting are one value): the same job twice is refused.
    for key, values in axes.items():
        seen: dict[str, Any] = {}
        for value in values:
            checked = _setting(_validated(base, {key: value}, config.output.path, source), key, value)
            text = json.dumps(checked, sort_keys=True, default=str)
            if text in seen:
                raise ConfigError(
                    f"{source}: sweep: {key!r} lists {checked!r} more than once (as {seen[text]!r} and {value!r})"
                )
            seen[text] = value
    combinations = [dict(zip(axes, values)) for values in itertools.product(*axes.values())]
    folders = folder_names(combinations)
    return [
        SweepRun(folder, settings, _validated(base, settings, storage.join(config.output.path, folder), source))
        for settings, folder in zip(combinations, folders)
    ]


def _validated(base: dict, settings: dict[str, Any], output: str, source: str) -> JobConfig:
    raw = copy.deepcopy(base)
    shown = ", ".join(f"{key}={value!r}" for key, value in settings.items())
    for key, value in settings.items():
        node = raw
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: sweep: {key}: {'.'.join(parts[: depth + 1])} is not a section")
        node[parts[-1]] = value
    raw["output"]["path"] = output
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{source}: sweep {shown}: {describe_validation_error(error)}") from None


def _setting(config: JobConfig, key: str, value: Any) -> Any:
    """The value of the dotted `key` in a validated config, as job.json records it."""
    node: Any = config.model_dump(mode="json")
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return value  # a key validation renamed or dropped: compare what was written
        node = node[part]
    return node


def check_size(runs: int, yes: bool, source: str) -> None:
    if runs > MAX_COMBINATIONS and not yes:
        raise ConfigError(
            f"{source}: sweep has {runs} combinations, more than {MAX_COMBINATIONS}; rerun with --yes to run them all"
        )


# 2. Naming run folders.


def value_text(value: Any) -> str:
    """A setting's value as a name part shows it: as YAML would write a scalar, JSON for anything else."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def short_keys(keys: list[str]) -> dict[str, str]:
    """Each dotted key's last part (`guidance_scale`), or the whole key where two keys share that part."""
    counts = Counter(key.rsplit(".", 1)[-1] for key in keys)
    return {key: key if counts[key.rsplit(".", 1)[-1]] > 1 else key.rsplit(".", 1)[-1] for key in keys}


def folder_name(settings: dict[str, Any], keys: dict[str, str] | None = None) -> str:
    """`guidance_scale=7.5,scheduler=ddim`: only [A-Za-z0-9._=,-] (anything else becomes `_`), no trailing
    dot (Windows drops it), at most MAX_FOLDER_NAME characters (then cut, ending in a hash of the settings)."""
    keys = keys or short_keys(list(settings))
    name = ",".join(f"{_safe(keys[key])}={_safe(value_text(value))}" for key, value in settings.items())
    if name.endswith("."):
        name = name[:-1] + "_"
    return name if len(name) <= MAX_FOLDER_NAME else _with_digest(name, settings)


def folder_names(combinations: list[dict[str, Any]]) -> list[str]:
    """One folder name per combination, all different even where the file system ignores case (macOS,
    Windows) or where replaced characters made two names alike: those end in a hash of their settings."""
    keys = short_keys(list(combinations[0])) if combinations else {}
    names = [folder_name(settings, keys) for settings in combinations]
    folded = Counter(name.casefold() for name in names)
    names = [
        name if folded[name.casefold()] == 1 else _with_digest(name, settings)
        for name, settings in zip(names, combinations)
    ]
    if len({name.casefold() for name in names}) != len(names):  # only if two hashes collide
        raise ConfigError("sweep: two runs would have the same folder name")
    return names


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text)


def _with_digest(name: str, settings: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    return f"{name[: MAX_FOLDER_NAME - _DIGEST_LENGTH - 1]}-{digest[:_DIGEST_LENGTH]}"


# 3. The sweep's record, OUTPUT/sweep.json.


def sweep_record(config: JobConfig, runs: list[SweepRun], rows: list[int]) -> dict:
    """`rows`: each run's output rows (one per image), so that `genbatch status` counts a run not started yet."""
    return {
        "sweep": config.sweep,
        "runs": [{"folder": run.folder, "settings": run.settings, "rows": count} for run, count in zip(runs, rows)],
    }


def read_sweep_file(output: str) -> dict | None:
    """A sweep folder's record; None where there is none."""
    location = layout.sweep_file(output)
    if not storage.exists(location):
        return None
    try:
        record = json.loads(storage.read_bytes(location))
    except (OSError, ValueError) as error:
        raise OutputError(f"{location}: unreadable ({one_line(error)})") from None
    if not isinstance(record, dict) or not isinstance(record.get("runs"), list):
        raise OutputError(f"{location}: not a genbatch sweep record")
    return record


def write_sweep_file(output: str, record: dict) -> None:
    location = layout.sweep_file(output)
    try:
        storage.write_bytes(location, (json.dumps(record, indent=2, default=str) + "\n").encode("utf-8"))
    except OSError as error:
        raise OutputError(f"{location}: cannot write ({error.strerror or one_line(error)})") from None


# 4. Running it.
