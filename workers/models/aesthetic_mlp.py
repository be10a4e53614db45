"""The LAION improved-aesthetic-predictor's MLP: its layers and the tensors a head file holds.

Both the scorer that loads a real head (workers.scoring.scorers) and the built-in tiny head (workers.models.tiny)
build it.
"""

from __future__ import annotations

# The width after each Linear, and each Linear's index in its nn.Sequential (dropouts sit at 1, 3 and 5),
# which is what its state-dict names (`layers.N.*`) count.
AESTHETIC_WIDTHS = (1024, 128, 64, 16, 1)
AESTHETIC_LINEARS = (0, 2, 4, 6, 7)
AESTHETIC_DROPOUTS = (0.2, 0.2, 0.1)


def aesthetic_mlp(input_dim: int):
    """The LAION improved-aesthetic-predictor's nn.Sequential, its first layer taking `input_dim` features."""
    import torch.nn as nn

    dims = (input_dim, *AESTHETIC_WIDTHS)
    layers: list[nn.Module] = []
    for k in range(len(AESTHETIC_WIDTHS)):
        layers.append(nn.Linear(dims[k], dims[k + 1]))
        if k < len(AESTHETIC_DROPOUTS):
            layers.append(nn.Dropout(AESTHETIC_DROPOUTS[k]))
    return nn.Sequential(*layers)


def head_shapes(input_dim: int) -> dict[str, tuple[int, ...]]:
    """The tensors an aesthetic head must hold, in order, with their shapes."""
    dims = (input_dim, *AESTHETIC_WIDTHS)
    shapes: dict[str, tuple[int, ...]] = {}
    for k, index in enumerate(AESTHETIC_LINEARS):
        shapes[f"layers.{index}.weight"] = (dims[k + 1], dims[k])
        shapes[f"layers.{index}.bias"] = (dims[k + 1],)
    return shapes
