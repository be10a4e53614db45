"""Model families: everything that differs between Stable Diffusion, SDXL, FLUX.1, ... in one description each.

A family (workers.models.families.base.Family) names its pipeline classes, its denoiser, the call arguments its
pipelines take, the schedulers that apply, its defaults and its compile pay-back figures. The rest of genbatch
asks the family and never branches on it. Adding a family is a module here and one entry in FAMILIES.

This module imports no torch: the driver finds a model's family from its model_index.json to check a config.
"""

from __future__ import annotations

from workers.errors import UnknownFamilyError
from workers.models.families.base import CompilePayback, ConfigReader, Defaults, Family
from workers.models.families.flux import FLUX
from workers.models.families.flux2 import FLUX2
from workers.models.families.pixart import PIXART_SIGMA
from workers.models.families.qwen_image import QWEN_IMAGE
from workers.models.families.sana import SANA
from workers.models.families.sd3 import SD3
from workers.models.families.stable_diffusion import STABLE_DIFFUSION, STABLE_DIFFUSION_XL
from workers.models.families.z_image import Z_IMAGE

__all__ = ["FAMILIES", "CompilePayback", "ConfigReader", "Defaults", "Family", "for_class_name", "for_pipeline"]

FAMILIES: tuple[Family, ...] = (
    STABLE_DIFFUSION,
    STABLE_DIFFUSION_XL,
    FLUX,
    SD3,
    QWEN_IMAGE,
    Z_IMAGE,
    SANA,
    FLUX2,
    PIXART_SIGMA,
)


def for_class_name(class_name: str | None) -> Family | None:
    """The family of a model_index.json `_class_name` (or a loaded pipeline's class name); None if unknown."""
    for family in FAMILIES:
        if class_name in family.class_names or class_name in (family.text_to_image, family.image_to_image):
            return family
    return None


def for_builtin(ref: str) -> Family | None:
    """The family of a built-in tiny model id (`tiny-flux`); None for any other reference."""
    return next((family for family in FAMILIES if ref in family.builtins), None)


def for_pipeline(pipeline) -> Family:
    """The family of a loaded diffusers pipeline (text- or image-to-image)."""
    name = type(pipeline).__name__
    family = for_class_name(name)
    if family is None:
        raise UnknownFamilyError(unknown_class_message(name))
    return family


def known() -> str:
    """The families genbatch knows, with their pipeline classes, for error messages."""
    return ", ".join(f"{family.title} ({family.text_to_image})" for family in FAMILIES)


def unknown_class_message(class_name: object) -> str:
    return f"pipeline class {class_name!r} is not a model family genbatch knows; it knows: {known()}"
