"""Data-parallel training across processes started by `torchrun` (GPUs with NCCL, or CPU processes with gloo).

Each rank takes its share of every epoch's images, gradients are averaged across ranks after
each backward pass, and rank 0 alone writes checkpoints, exports and records. Without
torchrun (WORLD_SIZE unset or 1) every function here is a no-op.
"""
from __future__ import annotations

import os
import re

import numpy as np
import torch
import torch.distributed as dist

from ...errors import OrinflowError


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def check_device(device: str) -> None:
    """Refuse a device this machine does not have, before anything is loaded or written."""
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    if device == "cpu":
        return
    if match is None:
        raise OrinflowError(f"--device {device!r}: use cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise OrinflowError(f"--device {device}: torch sees no CUDA GPU on this machine; use --device cpu")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise OrinflowError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")


def setup(device: str) -> str:
    """Join the process group when launched by torchrun; returns this rank's device."""
    check_device(device)
    if world_size() <= 1:
        return device
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if not is_main():
        os.environ["ORINFLOW_QUIET"] = "1"  # one set of progress bars: rank 0's
    return device


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def on_main(work) -> None:
    """Run `work` on rank 0 only (it writes a file every rank then reads); the other ranks wait for it."""
    if is_main():
        work()
    if active():
        dist.barrier()


def shard(order: np.ndarray) -> np.ndarray:
    """This rank's images of the epoch, the same count on every rank (so every rank takes the same steps)."""
    if not active():
        return order
    size = dist.get_world_size()
    order = order[:len(order) // size * size]
    if not len(order):
        raise OrinflowError(f"fewer training images than the {size} processes")
    return order[dist.get_rank()::size]


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    if not active():
        return
    size = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= size


def mean_across_ranks(value: float, device) -> float:
    if not active():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item() / dist.get_world_size())


def check_in_sync(module: torch.nn.Module) -> None:
    """Every rank must end with the same weights; a cheap checksum catches a broken all-reduce."""
    if not active():
        return
    total = sum(float(p.detach().double().sum()) for p in module.parameters())
    sums = [None] * dist.get_world_size()
    dist.all_gather_object(sums, total)
    if max(sums) - min(sums) > 1e-6 * max(1.0, abs(sums[0])):
        raise OrinflowError(f"data-parallel ranks diverged (weight checksums {sums})")
