"""A job's settings against its model's family (workers.models.families), checked and resolved before any actor starts.

Where the family is known before loading (built-ins, local folders, the hub cache), a config gets the family's
defaults for what it does not set, and combinations the family cannot run are refused in one line: a
scheduler of another kind, a negative prompt where the family takes none, a class of no known family.
Where it is not known, the actor refuses the same combinations when it loads (workers.worker).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.errors import ConfigError, some_of
from workers.errors import UnknownFamilyError
from workers.io import columns as C
from workers.io import storage
from workers.models.families.base import Family
from workers.models.families.lookup import ModelFamily, model_family

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from jobs.config.schema import JobConfig
    from jobs.inputs.manifest import Manifest


def find_family(config: JobConfig) -> ModelFamily | None:
    """The job's model family where it can be known before loading; None where it cannot."""
    try:
        return model_family(config.model.id, config.model.revision)
    except UnknownFamilyError as error:
        raise ValueError(f"model.id: {config.model.id}: {error}") from None


def apply_model_family(config: JobConfig) -> None:
    """Fill in the family's defaults for what `config` leaves unset, in place; raise ValueError, naming the key,
    for what the family cannot run. Called by JobConfig's validation, so every config is resolved."""
    found = find_family(config)
    if found is None:
        return
    generation = config.generation
    given = set(generation.model_fields_set)
    try:
        _apply(found, config, given)
    finally:
        # What the family filled in stays unset: a copy of the config for another model (a sweep's run)
        # gets that model's family's defaults, not these.
        generation.__pydantic_fields_set__ = given


def _apply(found: ModelFamily, config: JobConfig, given: set[str]) -> None:
    family = found.family
    generation = config.generation
    if "steps" not in given or "guidance_scale" not in given:
        defaults = found.defaults()
        if "steps" not in given:
            generation.steps = defaults.steps
        if "guidance_scale" not in given:
            generation.guidance_scale = defaults.guidance_scale
    if family.negative_prompt == "true_cfg":
        if generation.true_cfg_scale is None:
            generation.true_cfg_scale = found.defaults().true_cfg_scale or 1.0
    elif generation.true_cfg_scale is not None:
        raise ValueError(
            f"generation.true_cfg_scale: {family.title} has no true CFG (its guidance_scale is classifier-free "
            "guidance); remove the key"
        )
    _resolve_sequence_length(family, config)
    for key in ("loras", "adapters"):
        lora_problem = family.lora_problem(f"model.{key}") if getattr(config.model, key) else None
        if lora_problem:
            raise ValueError(lora_problem)
    problem = family.scheduler_problem(config.model.scheduler)
    if problem:
        raise ValueError(f"model.scheduler: {problem}")
    for key, problem in (
        ("cache", family.cache_problem(config.performance.cache)),
        ("compile", family.compile_problem(config.performance.compile)),
    ):
        if problem:
            raise ValueError(f"performance.{key}: {problem}")
    if generation.negative_prompt and not family.takes_negative_prompt(generation.true_cfg_scale):
        raise ValueError(f"generation.negative_prompt: {family.negative_prompt_rule()}")


def _resolve_sequence_length(family: Family, config: JobConfig) -> None:
    generation = config.generation
    if family.max_sequence_length is None:
        if generation.max_sequence_length is not None:
            raise ValueError(
                f"generation.max_sequence_length: {family.title} has only CLIP text encoders, which read 77 tokens; "
                "remove the key"
            )
        return
    if generation.max_sequence_length is None:
        generation.max_sequence_length = family.max_sequence_length
    elif generation.max_sequence_length > (family.token_limit or 0):
        raise ValueError(
            f"generation.max_sequence_length: {family.title} reads at most {family.token_limit} tokens, "
            f"got {generation.max_sequence_length}"
        )


def fetch_family_files(ref: str, revision: str | None, timeout_s: float) -> None:
    """Put a hub model's model_index.json, and the config files its family's defaults read, into the Hugging Face
    cache (small JSON files, no weights), so that its family is known before any actor starts. A file that cannot
    be had is left to the actors, which load the whole model anyway."""
    import huggingface_hub

    from workers.models import families

    def fetched(name: str) -> str:
        cached = huggingface_hub.try_to_load_from_cache(ref, name, revision=revision)
        if isinstance(cached, str):
            return cached
        return huggingface_hub.hf_hub_download(ref, name, revision=revision, etag_timeout=timeout_s)

    try:
        with open(fetched("model_index.json"), encoding="utf-8") as file:
            family = families.for_class_name(json.load(file).get("_class_name"))
        for name in family.config_files if family is not None else ():
            fetched(name)
    except (OSError, ValueError) as error:
        logger.info("could not fetch %s's model_index.json or config files before loading (%s)", ref, error)


def resolved_again(config: JobConfig) -> JobConfig:
    """`config` validated afresh, as if loaded now: the family of a hub model whose files were fetched since
    (fetch_family_files) gives its defaults, and refuses what it cannot run. What the user set is kept."""
    from pydantic import ValidationError

    from jobs.config.schema import JobConfig, describe_validation_error

    raw = config.model_dump(mode="json")
    raw["generation"] = config.generation.model_dump(mode="json", exclude_unset=True)
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error)) from None


def check_manifest(config: JobConfig, manifest: Manifest) -> None:
    """Refuse manifest columns the family cannot use: a `negative_prompt` column with values where the family
    takes no negative prompt (an empty string is no negative prompt), init images where it has no
    image-to-image pipeline."""
    found = find_family(config)
    if found is None:
        return
    family = found.family
    if C.NEGATIVE_PROMPT in manifest.columns and not family.takes_negative_prompt(config.generation.true_cfg_scale):
        _refuse_values(manifest, C.NEGATIVE_PROMPT, family.negative_prompt_rule())
    if C.INIT_IMAGE in manifest.columns and config.mode == "generate" and family.image_to_image is None:
        _refuse_values(manifest, C.INIT_IMAGE, f"{family.title} has no image-to-image pipeline")


def _refuse_values(manifest: Manifest, column: str, rule: str) -> None:
    """ConfigError naming the column, the rule and the first rows whose `column` holds a (non-empty) value."""
    for manifest_file in manifest.files:
        names = [column] + ([C.ID] if manifest.has_id_column else [])
        table = pq.read_table(storage.open_input(manifest_file.path), columns=names)
        values = table.column(column)
        if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
            present = pc.and_(pc.is_valid(values), pc.not_equal(pc.utf8_length(values), 0))
        else:
            present = pc.is_valid(values)
        rows = pc.indices_nonzero(pc.fill_null(present, False)).to_pylist()
        if rows:
            if manifest.has_id_column:
                ids = table.column(C.ID).take(rows).to_pylist()
            else:
                ids = [manifest_file.first_row + row for row in rows]
            raise ConfigError(
                f"{manifest_file.path}: column {column!r}: {rule}, and "
                f"{'1 row has' if len(rows) == 1 else f'{len(rows)} rows have'} one "
                f"(ids: {some_of([str(i) for i in ids])}); remove the column or its values"
            )
