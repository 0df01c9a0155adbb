"""Which layers go 2:4 (`--sparse-flops`), and data-aware 2:4 weights (`--method sparsegpt`).

Eligible layers follow NVIDIA ASP's rule, the one ModelOpt applies: Conv2d/Linear without grouping, output
channels a multiple of 8, input channels a multiple of 16. The 2:4 groups run along input channels at each
kernel position, which is what TensorRT's sparse kernels read (and what optimize/common/sparse24.py checks).

SparseGPT (Frantar & Alistarh, 2023) here: per layer, H = X Xᵀ of its inputs on calibration images, with
columns ordered kernel position first and input channel last, so four neighbouring columns are four input
channels. Column by column, the two weights of each four with the least w² / [H⁻¹]ᵢᵢ² are zeroed and the
error is spread over the columns not yet visited (the OBS update), so the layer's output moves as little as
the data allows. ModelOpt's own sparsegpt mode groups columns as (channel, kh, kw) and keeps the original
weights: its 3x3 masks are not 2:4 along channels (20 of the demo detector's 55 layers passed the check).

Sensitivity, the budget's "alone" view (optimize/quantize/sensitivity.py) for 2:4: each eligible layer is made 2:4 on its own
and the SQNR of the raw head outputs against the dense model is measured on calibration images. Layers are
taken in order of noise per FLOP until `sparse_flops` of the conv/linear FLOPs are 2:4.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...errors import OrinflowError
from ...progress import progress
from ..common.layers import channel_last, hessians, layer_macs, restore
from ..common.probes import sqnr_db
from ..common.tracing import output_layers

GROUP = 4  # 2 of every 4 input channels are kept
DAMP = 0.01  # SparseGPT's dampening, a share of the Hessian's mean diagonal
BLOCK = 128  # columns updated together (a multiple of GROUP)


def eligible(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Conv2d):
        return layer.groups == 1 and layer.out_channels % 8 == 0 and layer.in_channels % 16 == 0
    return isinstance(layer, nn.Linear) and layer.out_features % 8 == 0 and layer.in_features % 16 == 0


def eligible_layers(module: nn.Module) -> dict[str, nn.Module]:
    return {name: layer for name, layer in module.named_modules() if eligible(layer)}


def magnitude_24(weight: torch.Tensor) -> torch.Tensor:
    """The weight with the two smallest |w| of every four input channels zeroed."""
    flat = channel_last(weight.detach().float())
    groups = flat.reshape(flat.shape[0], -1, GROUP)
    drop = groups.abs().topk(GROUP // 2, dim=-1, largest=False).indices
    kept = groups.scatter(-1, drop, 0.0)
    return restore(kept.reshape(flat.shape), weight.shape).to(weight.dtype)


def sparsegpt_24(weight: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """2:4 along input channels with the SparseGPT weight update (`hessian` in channel_last column order)."""
    flat = channel_last(weight.detach().double()).clone()
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    flat[:, dead] = 0
    h += torch.eye(len(h), dtype=h.dtype) * DAMP * torch.diag(h).mean()
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    for start in range(0, flat.shape[1], BLOCK):
        stop = min(start + BLOCK, flat.shape[1])
        block, inv = flat[:, start:stop].clone(), inverse[start:stop, start:stop]
        errors = torch.zeros_like(block)
        for j in range(0, stop - start):
            if j % GROUP == 0:  # choose this group's two zeros by the error they cause
                cost = block[:, j:j + GROUP] ** 2 / torch.diag(inv)[j:j + GROUP] ** 2
                drop = cost.topk(GROUP // 2, dim=1, largest=False).indices + j
                pruned = torch.zeros_like(block, dtype=torch.bool).scatter_(1, drop, True)
            kept = torch.where(pruned[:, j], torch.zeros_like(block[:, j]), block[:, j])
            errors[:, j] = (block[:, j] - kept) / inv[j, j]
            block[:, j:] -= errors[:, j:j + 1] @ inv[j:j + 1, j:]
            block[:, j] = kept
        flat[:, start:stop] = block
        flat[:, stop:] -= errors @ inverse[start:stop, stop:]
    return restore(flat, weight.shape).to(weight.dtype)


class HeadOutputs:
    """The raw outputs of the model's output layers (what a detector's decode reads), as numpy arrays."""

    def __init__(self, module: nn.Module, images: torch.Tensor):
        self.module, self.images = module, images
        found = output_layers(module, images[:1])
        self.heads = [m for m in module.modules() if m in found]  # in model order

    def __call__(self) -> list[np.ndarray]:
        captured = {}
        hooks = [h.register_forward_hook(lambda m, _i, o: captured.__setitem__(m, o.detach().numpy().copy()))
                 for h in self.heads]
        try:
            with torch.no_grad():
                self.module.eval()(self.images)
        finally:
            for hook in hooks:
                hook.remove()
        return [captured[h] for h in self.heads]


def layer_sensitivity(module: nn.Module, candidates: dict[str, torch.Tensor], images: torch.Tensor) -> dict[str, float]:
    """SQNR (dB) of the raw head outputs with only this layer's weight replaced by its 2:4 candidate."""
    layers = dict(module.named_modules())
    outputs = HeadOutputs(module, images)
    reference = outputs()
    result = {}
    for name in progress(list(candidates), "2:4 sensitivity", total=len(candidates)):
        weight = layers[name].weight
        dense = weight.detach().clone()
        with torch.no_grad():
            weight.copy_(candidates[name])
        result[name] = sqnr_db(reference, outputs())
        with torch.no_grad():
            weight.copy_(dense)
    return result


def choose_layers(sensitivity: dict[str, float], macs: dict[str, int], share: float) -> list[str]:
    """Least noise per FLOP first, until `share` of all conv/linear MACs are in chosen layers."""
    total, wanted = sum(macs.values()), share * sum(macs.values())
    reachable = sum(macs[name] for name in sensitivity)
    if reachable < wanted - 1e-9 * total:
        raise OrinflowError(f"--sparse-flops {share}: only {reachable / total:.1%} of the conv FLOPs are in layers "
                            "that can be 2:4 (no grouping, input channels a multiple of 16, output channels of 8)")
    order = sorted(sensitivity, key=lambda n: 10 ** (-sensitivity[n] / 10) / max(macs[n], 1))
    chosen, covered = [], 0
    for name in order:
        if covered >= wanted:
            break
        chosen.append(name)
        covered += macs[name]
    return chosen


def select_24(module: nn.Module, method: str, share: float | None, calib: list[torch.Tensor], probe: torch.Tensor,
              say=print) -> tuple[dict[str, torch.Tensor], dict]:
    """Make the chosen layers of `module` 2:4 in place; returns their masks (for hold_masks) and the record.

    calib: batches for SparseGPT's Hessians; probe: the images whose head outputs rank the layers (only
    when `share` is below 1).
    """
    module.eval()
    macs = layer_macs(module, probe[:1])
    layers = {n: layer for n, layer in eligible_layers(module).items() if macs.get(n)}  # skip branches never run
    if not layers:
        raise OrinflowError("no layer can be 2:4 (Conv/Linear without grouping, input channels a multiple of 16 and "
                            "output channels of 8)")
    if method == "sparsegpt":
        found = hessians(module, layers, calib)
        candidates = {n: sparsegpt_24(layers[n].weight, found[n]) for n in progress(list(layers), "SparseGPT")}
    else:
        candidates = {n: magnitude_24(layer.weight) for n, layer in layers.items()}
    total = sum(macs.values())
    sensitivity = layer_sensitivity(module, candidates, probe) if share is not None and share < 1 else {}
    chosen = choose_layers(sensitivity, macs, share) if sensitivity else list(layers)
    chosen = [name for name in layers if name in chosen]  # model order
    with torch.no_grad():  # one shot: every Hessian comes from the dense model (sequential measured no better)
        for name in chosen:
            layers[name].weight.copy_(candidates[name])
    masks = {name: layers[name].weight.detach() != 0 for name in chosen}
    covered = sum(macs[n] for n in chosen)
    say(f"2:4 on {len(chosen)} of {len(layers)} eligible layers: {covered / total:.1%} of the conv FLOPs ({method})")
    record = {"method": method, "target_share": share, "share": round(covered / total, 4),
              "eligible_share": round(sum(macs[n] for n in layers) / total, 4),
              "layers": [{"name": n, "macs": macs[n], "sqnr_db": round(sensitivity[n], 2) if n in sensitivity else None,
                          "sparse": n in chosen} for n in layers]}
    return masks, record
