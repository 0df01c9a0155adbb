"""Blocks that a pruned Ultralytics checkpoint pickles in place of C2f/C3k2/C2PSA.

Those blocks run one conv and cut its output in two equal halves (`chunk`/`split`). A
dependency graph cannot carry channel indices through a split whose halves meet again in a
concat, and pruning makes the halves unequal anyway. So before pruning, `cv1` becomes two
convs (`cv0` gives the first half, `cv1` the second): the same arithmetic, one conv more.
The classes live in orinflow (not torch-pruning), so a pruned checkpoint loads with
orinflow and Ultralytics installed and nothing else.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

SPLIT_ATTRIBUTES = ("i", "f", "type", "np")  # what Ultralytics' parse_model sets on every layer


class SplitC2f(nn.Module):
    """C2f (and C3k2, C2fPSA) with its first conv split in two: cv0 -> first half, cv1 -> second."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SplitC2PSA(nn.Module):
    """C2PSA with its first conv split in two: the attention blocks read the second half."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv2(torch.cat((self.cv0(x), self.m(self.cv1(x))), 1))


def conv_half(conv_block: nn.Module, start: int, stop: int) -> nn.Module:
    """A copy of a Conv(+BN) block keeping output channels [start, stop) of every per-channel tensor."""
    half = copy.deepcopy(conv_block)
    channels = half.conv.out_channels
    for module in half.modules():
        for name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if tensor.ndim >= 1 and tensor.shape[0] == channels:
                kept = tensor.data[start:stop].clone()
                if isinstance(tensor, nn.Parameter):
                    setattr(module, name, nn.Parameter(kept, requires_grad=tensor.requires_grad))
                else:
                    module.register_buffer(name, kept)
    half.conv.out_channels = stop - start
    if getattr(half, "bn", None) is not None:
        half.bn.num_features = stop - start
    return half


def split_block(block: nn.Module, cls: type[nn.Module]) -> nn.Module:
    """`block` rebuilt as `cls` with cv0/cv1 halves of its cv1; every other child and attribute kept."""
    split = cls()
    half = block.c
    split.cv0 = conv_half(block.cv1, 0, half)
    split.cv1 = conv_half(block.cv1, half, 2 * half)
    for name, child in block.named_children():
        if name != "cv1":
            setattr(split, name, child)
    for name in SPLIT_ATTRIBUTES + ("c",):
        if hasattr(block, name):
            setattr(split, name, getattr(block, name))
    return split.train(block.training)
