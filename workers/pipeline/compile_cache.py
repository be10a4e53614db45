"""Compile once per fleet: torch's portable compile artifacts, shared by every actor, node and run.

An actor that compiles from scratch spends its first micro-batch in Dynamo, AOTAutograd and Inductor.
After that batch it saves `torch.compiler.save_cache_artifacts()` (Inductor's graphs, with the Triton
kernels torch bundles into them on CUDA, and autotuning results) as one file per `CompileKey` in
`performance.compile_cache`; an actor that finds the file loads it with
`torch.compiler.load_cache_artifacts()` before its first call, and Inductor then finds those graphs
already built. The file cannot change what is computed: torch looks each artifact up by its own key
(graph, inputs, versions, device) and compiles whatever does not match, so a stale or foreign file
costs time, never pixels. On the CPU, Inductor's kernels are C++ built for the local processor
(-march=native), which torch keeps out of the artifacts: there the C++ compiler still runs.

Saves are atomic (workers.io.storage.write_bytes: a temporary name, then a rename or move); actors that
start together all miss, all compile and all save the same kernels, the last rename winning. Only what
the first micro-batch compiled is saved: rows whose own width, height or guidance give other shapes
compile on each actor. A cache that cannot be read or written is a warning: the actor compiles as it
would without one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass

from workers.io import storage
from workers.io.provenance import device_description
from workers.models import tiny
from workers.models.families import Family
from workers.models.families.stable_diffusion import STABLE_DIFFUSION
from workers.tasks import WorkerSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompileKey:
    """What a compiled denoiser and VAE decoder depend on. Every field goes into the file name (readably, or
    through its hash), so a change of any (a library upgrade, another GPU or image size) gives a new file
    instead of a useless load."""

    torch: str
    diffusers: str
    device: str  # `cpu`, or the GPU's model and CUDA version (workers.io.provenance.device_description)
    model: str
    revision: str | None
    variant: str | None
    dtype: str
    batch_size: int  # micro-batches are padded to it when compiled, so it fixes the shapes
    width: int
    height: int
    guidance: bool  # classifier-free guidance doubles the batch the denoiser sees (Family.batch_multiplier)
    quantize: str = "none"  # performance.quantize: a quantized UNet is another graph
    regional: bool = False  # performance.compile: regional compiles the repeated blocks: other graphs
    loras: str = ""  # model.loras (fused) and model.adapters: their sha256s and weights, hashed; "": none

    def file_name(self) -> str:
        """Readable where it can be (`torch-2.13.0-cpu-tiny-float32-b8-512x512-...`), unique by its hash."""
        model = self.model.rstrip("/").rsplit("/", 1)[-1]
        shapes = f"b{self.batch_size}{'-cfg' if self.guidance else ''}-{self.width}x{self.height}"
        quantized = "" if self.quantize == "none" else f"-{self.quantize}"
        regional = "-regional" if self.regional else ""
        readable = f"torch-{self.torch}-{self.device}-{model}-{self.dtype}{quantized}{regional}-{shapes}"
        fields = asdict(self)
        if self.quantize == "none":  # the files of unquantized models keep the names they had before the option
            del fields["quantize"]
        if not self.regional:  # and those of whole-denoiser compiles theirs
            del fields["regional"]
        if not self.loras:  # and so do those of models without LoRAs
            del fields["loras"]
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
        return f"{re.sub(r'[^A-Za-z0-9.-]+', '_', readable)}-{digest}.torch-cache"


def compile_key(
    settings: WorkerSettings, device, dtype, family: Family = STABLE_DIFFUSION, regional: bool = False
) -> CompileKey:
    """The key of an actor's compiled models: its libraries, its device, and what fixes the shapes (the
    model's family says how its batch grows under guidance)."""
    import diffusers
    import torch

    return CompileKey(
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        device=device_description(device),
        model=settings.model,
        revision=settings.revision,
        variant=settings.variant,
        dtype=str(dtype).removeprefix("torch."),
        batch_size=settings.batch_size,
        width=settings.defaults.width,
        height=settings.defaults.height,
        guidance=family.batch_multiplier(settings.defaults.guidance_scale, settings.defaults.true_cfg_scale) > 1,
        quantize=quantize_label(settings.fast.quantize, settings.fast.quantize_min_features),
        regional=regional,
        loras=loras_label(settings.loras, settings.adapters),
    )


def loras_label(loras, adapters) -> str:
    """model.loras and model.adapters (workers.tasks.LoraFile) as one short hash of their sha256s and weights (the
    adapters' LoRA layers are in the compiled graph); "" for none."""
    if not loras and not adapters:
        return ""
    fused = [(lora.sha256, lora.weight) for lora in loras]
    named = [(name, [(lora.sha256, lora.weight) for lora in files]) for name, files in adapters]
    described = json.dumps([fused, named])
    return hashlib.sha256(described.encode()).hexdigest()[:16]


def quantize_label(option: str, min_features: int) -> str:
    """`none`, or the option with the threshold that decides which layers it changed: `int8-min512`."""
    return option if option == "none" else f"{option}-min{min_features}"


def cache_location(setting: str | None) -> str:
    """performance.compile_cache, or by default a folder beside the built-in models ($GENBATCH_CACHE/compile)."""
    return setting if setting is not None else str(tiny.cache_root() / "compile")


def cache_file(setting: str | None, key: CompileKey) -> str:
    return storage.join(cache_location(setting), key.file_name())


def load_artifacts(location: str) -> bool:
    """Hand the compiled artifacts at `location` to torch before anything is compiled; True if there were any."""
    import torch

    try:
        if not storage.is_file(location):
            logger.info("no compiled kernels at %s yet: compiling from scratch", location)
            return False
        data = storage.read_bytes(location)
        info = torch.compiler.load_cache_artifacts(data)  # None when torch cannot read them (it logs why)
    except Exception as error:  # noqa: BLE001 - a cache that fails costs compile time, never the actor
        logger.warning("cannot load compiled kernels from %s (%s): compiling from scratch", location, error)
        return False
    if info is None:
        logger.warning("%s holds no compiled kernels this torch can use: compiling from scratch", location)
        return False
    logger.info("loaded compiled kernels from %s (%s)", location, _count(info.artifacts))
    return True


def save_artifacts(location: str) -> bool:
    """Save what this process compiled so far at `location`, whole or not at all; True if saved."""
    import torch

    try:
        saved = torch.compiler.save_cache_artifacts()  # None when nothing was compiled (or caching is off)
        if saved is None:
            logger.info("torch has no compiled artifacts to save at %s", location)
            return False
        data, info = saved
        storage.write_bytes(location, data)
    except Exception as error:  # noqa: BLE001 - a cache that fails costs the next actors time, not this one its shard
        logger.warning("cannot save compiled kernels at %s: %s", location, error)
        return False
    logger.info("saved compiled kernels at %s (%s, %.1f MB)", location, _count(info.artifacts), len(data) / 1e6)
    return True


def _count(artifacts: dict[str, list[str]]) -> str:
    return ", ".join(f"{len(keys)} {kind}" for kind, keys in sorted(artifacts.items()))
