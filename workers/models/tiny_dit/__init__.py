"""The built-in tiny transformer (DiT) pipelines, one per family: random weights from fixed seeds, saved once
in the diffusers folder format (safetensors) to the genbatch cache and loaded with `from_pretrained`.

Each family module only imports torch/diffusers inside its builder, so the driver can consult this registry
(names, pipeline classes) without loading them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workers.models import tiny
from workers.models.tiny_dit.flux import save_tiny_flux
from workers.models.tiny_dit.flux2 import save_tiny_flux2
from workers.models.tiny_dit.pixart import save_tiny_pixart
from workers.models.tiny_dit.qwen_image import save_tiny_qwen_image
from workers.models.tiny_dit.sana import save_tiny_sana
from workers.models.tiny_dit.sd3 import save_tiny_sd3
from workers.models.tiny_dit.z_image import save_tiny_z_image


@dataclass(frozen=True)
class TinyDiT:
    name: str  # the model reference users write: `model.id: tiny-flux`
    pipeline: str  # the diffusers class in the saved model_index.json
    version: str  # bump when the family's architecture or seeds change, so stale caches are rebuilt
    save: Callable[[Path], None]


TINY_DITS: dict[str, TinyDiT] = {
    model.name: model
    for model in (
        TinyDiT("tiny-flux", "FluxPipeline", "1", save_tiny_flux),
        TinyDiT("tiny-sd3", "StableDiffusion3Pipeline", "1", save_tiny_sd3),
        TinyDiT("tiny-qwen-image", "QwenImagePipeline", "1", save_tiny_qwen_image),
        TinyDiT("tiny-z-image", "ZImagePipeline", "1", save_tiny_z_image),
        TinyDiT("tiny-sana", "SanaPipeline", "1", save_tiny_sana),
        TinyDiT("tiny-flux2", "Flux2KleinPipeline", "1", save_tiny_flux2),
        TinyDiT("tiny-pixart", "PixArtSigmaPipeline", "1", save_tiny_pixart),
    )
}


def is_tiny_dit(ref: str) -> bool:
    return ref in TINY_DITS


def tiny_dit_dir(ref: str) -> Path:
    """Folder of the tiny DiT pipeline named `ref`, built on first use."""
    model = TINY_DITS[ref]
    return tiny._build_once(tiny.cache_root() / f"{model.name}-v{model.version}", model.save)
