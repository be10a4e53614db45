"""LoRA adapters on the actor, through diffusers' LoRA loader (peft): model.loras fused into the weights once,
and model.adapters loaded once and switched between micro-batches.

The files are those the driver resolved and hashed (jobs.config.adapters): a local .safetensors path, or a hub id with
its file name.
"""

from __future__ import annotations

import logging
from typing import Any

from workers.tasks import LoraFile

logger = logging.getLogger(__name__)


def _load(pipeline, lora: LoraFile, adapter_name: str) -> None:
    """One LoRA file into the pipeline's denoiser and text encoders, as the PEFT adapter `adapter_name`."""
    pipeline.load_lora_weights(
        lora.source, weight_name=lora.weight_name, adapter_name=adapter_name, use_safetensors=True
    )


def fuse_loras(pipeline, loras: tuple[LoraFile, ...]) -> None:
    """Load model.loras, fuse them with their weights into the model's weights, and drop the LoRA layers:
    each step then costs what it costs without them."""
    if not loras:
        return
    names = [f"genbatch_fused_{i}" for i in range(len(loras))]
    for name, lora in zip(names, loras, strict=True):
        _load(pipeline, lora, name)
    pipeline.set_adapters(names, [lora.weight for lora in loras])
    pipeline.fuse_lora(adapter_names=names)
    pipeline.unload_lora_weights()  # the fused weights stay; the PEFT layers go
    logger.info("fused %d LoRA(s) into the weights", len(loras))


class AdapterSwitch:
    """model.adapters on one pipeline: every distinct LoRA file loaded once as a PEFT adapter; `use(name)` makes
    the named set active (with its weights), `use(None)` the model without any. Micro-batches never mix adapters
    (the adapter is part of workers.io.rows.RowSpec.batch_key), so switching happens between pipeline calls. The
    image-to-image pipeline made by from_pipe shares the modules, so the switch applies to it too.

    Uncompiled, switching is diffusers' `set_adapters` (only the set's LoRAs run). On a compiled model that would
    recompile at every switch (the active adapters and their float scales are constants of the graph), so there
    every adapter stays active and each one's scale becomes a tensor, changed in place: the set's LoRAs get
    their weights, the others 0. That is how PEFT's hotswap preparation (`enable_lora_hotswap`) keeps a compiled
    graph: switching recompiles nothing, at the cost of every adapter's low-rank product at each step."""

    def __init__(self, pipeline, adapters: tuple[tuple[str, tuple[LoraFile, ...]], ...], compiled: bool = False):
        self.pipeline = pipeline
        loaded: dict[tuple[str, str | None], str] = {}  # (source, weight_name) -> PEFT adapter name
        self.sets: dict[str, dict[str, float]] = {}  # adapter -> its PEFT adapters' weights (a file twice: summed)
        for name, loras in adapters:
            weights: dict[str, float] = {}
            for lora in loras:
                where = (lora.source, lora.weight_name)
                if where not in loaded:
                    loaded[where] = f"genbatch_adapter_{len(loaded)}"
                    _load(pipeline, lora, loaded[where])
                weights[loaded[where]] = weights.get(loaded[where], 0.0) + lora.weight
            self.sets[name] = weights
        self.scales = _scales_as_tensors(pipeline, list(loaded.values())) if compiled else None
        self.active: str | None = "?"  # unknown: the first use() sets it
        self.use(None)
        logger.info("loaded %d adapter(s) from %d LoRA file(s)", len(self.sets), len(loaded))

    def use(self, name: str | None) -> None:
        """Make adapter `name` (None: none) the one the next pipeline calls run with."""
        if name == self.active:
            return
        if name is not None and name not in self.sets:
            known = ", ".join(self.sets) or "none"
            raise ValueError(f"adapter {name!r} is not in model.adapters (known: {known})")
        weights = {} if name is None else self.sets[name]
        if self.scales is not None:
            for scale, adapter, unit in self.scales:
                scale.fill_(unit * weights.get(adapter, 0.0))
        elif name is None:
            self.pipeline.disable_lora()  # rows without an adapter: the model as it loaded
        else:
            self.pipeline.enable_lora()
            self.pipeline.set_adapters(list(weights), list(weights.values()))
        self.active = name


def _scales_as_tensors(pipeline, adapters: list[str]) -> list[tuple[Any, str, float]]:
    """Activate every adapter in every LoRA layer of the pipeline and make each one's scale a 0-d tensor; the
    tensors with their adapter and unit scale (lora_alpha / r: what weight 1 gives)."""
    import torch
    from peft.tuners.lora import LoraLayer

    pipeline.enable_lora()
    pipeline.set_adapters(adapters, [1.0] * len(adapters))
    scales = []
    for component in pipeline.components.values():
        if not isinstance(component, torch.nn.Module):
            continue
        for module in component.modules():
            if isinstance(module, LoraLayer):
                for adapter in adapters:
                    if adapter in module.scaling:
                        unit = module.scaling[adapter]  # weight 1, as set above
                        module.scaling[adapter] = torch.tensor(0.0, device=module.weight.device)
                        scales.append((module.scaling[adapter], adapter, float(unit)))
    return scales
