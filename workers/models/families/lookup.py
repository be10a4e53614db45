"""Finding a model's family before it is loaded, without torch: from a built-in's declared facts, or from the
model_index.json (and the config files its defaults read) of a local folder or of a hub model in the cache."""

from __future__ import annotations

import json
from dataclasses import dataclass

from workers.errors import UnknownFamilyError
from workers.models import families
from workers.models.families.base import Defaults, Family
from workers.models.loading import _cached_file, is_builtin, pipeline_source


@dataclass(frozen=True)
class ModelFamily:
    """A model's family, with a way to read the model's own config files (for its defaults)."""

    family: Family
    ref: str
    revision: str | None

    def read(self, name: str) -> dict | None:
        """A JSON file of the model (`transformer/config.json`); None where it cannot be read before loading."""
        facts = self.family.builtins.get(self.ref)
        if facts is not None:
            return facts.get(name)
        return _read_json(self.ref, self.revision, name)

    def defaults(self) -> Defaults:
        return self.family.defaults(self.read)


def model_family(ref: str, revision: str | None) -> ModelFamily | None:
    """The family of the model `ref` names where it can be known before loading; None where it cannot (a hub
    model not in the cache, a built-in of no family yet). Raises UnknownFamilyError for a model_index.json
    whose `_class_name` is of no family genbatch knows."""
    family = families.for_builtin(ref)
    if family is not None:
        return ModelFamily(family, ref, revision)
    if is_builtin(ref):
        return None
    index = _read_json(ref, revision, "model_index.json")
    if index is None:
        return None
    class_name = index.get("_class_name")
    if class_name is None:  # not a diffusers pipeline's index: loading it will say so
        return None
    family = families.for_class_name(class_name)
    if family is None:
        raise UnknownFamilyError(families.unknown_class_message(class_name))
    return ModelFamily(family, ref, revision)


def _read_json(ref: str, revision: str | None, name: str) -> dict | None:
    path = _cached_file(pipeline_source(ref), revision, name)
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as file:
            found = json.load(file)
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None
