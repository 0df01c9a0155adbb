"""2:4 masks held fixed through fine-tuning (route 4: QAT on a model that SAT made sparse)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .sparse24 import is_2to4


def sparse_masks(module: nn.Module) -> dict[str, torch.Tensor]:
    """Non-zero patterns of the Conv/Linear weights that are 2:4 sparse along input channels, by module name."""
    masks = {}
    for name, layer in module.named_modules():
        if not isinstance(layer, (nn.Conv2d, nn.Linear)) or getattr(layer, "groups", 1) != 1:
            continue
        weight = layer.weight.detach()
        arranged = weight.movedim(1, -1) if weight.ndim == 4 else weight  # reduction dimension last
        if arranged.shape[-1] % 4 == 0 and (weight == 0).any() and is_2to4(arranged.cpu().numpy()):
            masks[name] = weight != 0
    return masks


def hold_masks(module: nn.Module, masks: dict[str, torch.Tensor]) -> Callable[[], None]:
    """A function that zeroes the masked weights again (call it after every optimiser step)."""
    layers = dict(module.named_modules())
    missing = sorted(set(masks) - set(layers))
    if missing:
        raise ValueError(f"masked layers not found in the model: {missing[:3]}")
    pairs = [(layers[name].weight, mask.to(layers[name].weight.device)) for name, mask in masks.items()]

    def apply() -> None:
        with torch.no_grad():
            for weight, mask in pairs:
                weight.mul_(mask)

    apply()
    return apply
