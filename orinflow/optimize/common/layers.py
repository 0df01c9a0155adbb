"""Layer arithmetic every technique reads: the Conv/Linear MACs of one forward pass, channel counts, a
weight's channel-last view (the order 2:4 groups and Hessian columns take), and X Xᵀ of layer inputs."""
from __future__ import annotations

import torch
from torch import nn

PRUNABLE = (nn.Conv2d, nn.Linear)
HESSIAN_POSITIONS = 1024  # output positions per image that feed a layer's Hessian (seeded draw)


def layer_macs(module: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates of every Conv2d/Linear in one inference forward pass, by module name."""
    names = {m: n for n, m in module.named_modules()}
    macs: dict[str, int] = {}

    def count(layer, _inputs, output):
        out = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(layer, nn.Conv2d):
            per_output = layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1]
        else:
            per_output = layer.in_features
        macs[names[layer]] = macs.get(names[layer], 0) + out.numel() // out.shape[0] * per_output

    run_hooked(module, example, [m.register_forward_hook(count) for m in module.modules() if isinstance(m, PRUNABLE)])
    return macs


def run_hooked(module: nn.Module, example: torch.Tensor, hooks: list) -> None:
    """One evaluation-mode forward of `example` with `hooks` in place; they are removed afterwards."""
    try:
        with torch.no_grad():
            module.eval()(example)
    finally:
        for hook in hooks:
            hook.remove()


def out_width(layer: nn.Module) -> int:
    return layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features


def channels(module: nn.Module) -> dict[str, int]:
    return {n: out_width(m) for n, m in module.named_modules() if isinstance(m, PRUNABLE)}


def channel_last(weight: torch.Tensor) -> torch.Tensor:
    """(out, in, kh, kw) -> (out, kh*kw*in): a row's columns in groups of input channels per kernel position."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1) if weight.ndim == 4 else weight


def restore(flat: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if len(shape) == 2:
        return flat
    out, inp, kh, kw = shape
    return flat.reshape(out, kh, kw, inp).permute(0, 3, 1, 2).contiguous()


def hessians(module: nn.Module, layers: dict[str, nn.Module], batches, seed: int = 0) -> dict[str, torch.Tensor]:
    """X Xᵀ of every layer's inputs (columns in channel_last order) over `batches`, dense model throughout."""
    found = {name: None for name in layers}
    rng = torch.Generator().manual_seed(seed)

    def collect(name, layer):
        def hook(_layer, inputs, _output):
            x = inputs[0].detach().float()
            if isinstance(layer, nn.Conv2d):
                cols = nn.functional.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
                kernel = layer.kernel_size[0] * layer.kernel_size[1]
                cols = cols.reshape(len(x), layer.in_channels, kernel, -1).transpose(1, 2)  # channel last
                cols = cols.reshape(len(x), kernel * layer.in_channels, -1).permute(1, 0, 2).flatten(1)
            else:
                cols = x.reshape(-1, x.shape[-1]).t()
            if cols.shape[1] > HESSIAN_POSITIONS * len(x):
                cols = cols[:, torch.randperm(cols.shape[1], generator=rng)[:HESSIAN_POSITIONS * len(x)]]
            product = (cols @ cols.t()).double()  # float32 products, summed in float64
            found[name] = product if found[name] is None else found[name] + product
        return hook

    hooks = [layer.register_forward_hook(collect(name, layer)) for name, layer in layers.items()]
    try:
        with torch.no_grad():
            for images in batches:
                module(images)
    finally:
        for hook in hooks:
            hook.remove()
    return found
