"""LoRA adapters on the actor, through diffusers' LoRA loader (peft): model.loras fused into the weights once,
and model.adapters loaded once and switched between micro-batches.

The files are those the driver resolved and hashed (jobs.adapters): a local .safetensors path, or a hub id with
its file name.
"""

from __future__ import annotations

import logging

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
    (the adapter is part of workers.rows.RowSpec.batch_key), so switching happens between pipeline calls. The
    image-to-image pipeline made by from_pipe shares the modules, so the switch applies to it too."""

    def __init__(self, pipeline, adapters: tuple[tuple[str, tuple[LoraFile, ...]], ...]):
        self.pipeline = pipeline
        loaded: dict[tuple[str, str | None], str] = {}  # (source, weight_name) -> PEFT adapter name
        self.sets: dict[str, tuple[list[str], list[float]]] = {}
        for name, loras in adapters:
            peft_names = []
            for lora in loras:
                where = (lora.source, lora.weight_name)
                if where not in loaded:
                    loaded[where] = f"genbatch_adapter_{len(loaded)}"
                    _load(pipeline, lora, loaded[where])
                peft_names.append(loaded[where])
            self.sets[name] = (peft_names, [lora.weight for lora in loras])
        self.active: str | None = None
        if self.sets:
            pipeline.disable_lora()  # rows without an adapter: the model as it loaded
            logger.info("loaded %d adapter(s) from %d LoRA file(s)", len(self.sets), len(loaded))

    def use(self, name: str | None) -> None:
        """Make adapter `name` (None: none) the one the next pipeline calls run with."""
        if name == self.active:
            return
        if name is None:
            self.pipeline.disable_lora()
        else:
            if name not in self.sets:
                known = ", ".join(self.sets) or "none"
                raise ValueError(f"adapter {name!r} is not in model.adapters (known: {known})")
            names, weights = self.sets[name]
            self.pipeline.enable_lora()
            self.pipeline.set_adapters(names, weights)
        self.active = name
