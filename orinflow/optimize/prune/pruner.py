"""The pruner: torch-pruning's, with channel counts rounded to the nearest multiple of --round-to (never
below one), driven by a plan's per-layer counts or one ratio for every group; and a trial copy pruned in one
step, which is how a plan checks the FLOPs it reaches."""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, replace

import torch
from torch import nn

from ...errors import OrinflowError
from ..common.layers import PRUNABLE, out_width
from ..common.tracing import traceable
from .graph import OUTPUT_LAYER, same_gradient_flags, traced_forward


IMPORTANCES = ("l1", "l2", "bn", "taylor", "lamp")

PLANS = ("measured", "even")  # how the FLOPs to cut are shared among the groups (allocation.py)

DEFAULT_ROUND_TO = 32  # TensorRT's INT8 convolutions read channels in vectors of 32 (NC/32HW32)

DEFAULT_MIN_SHARE = 0.25


@dataclass
class PruneConfig:
    flops: float | None = 0.7  # target share of the original conv/linear FLOPs
    ratio: float | None = None  # or: prune this share of every prunable layer's channels
    importance: str = "l1"
    round_to: int = DEFAULT_ROUND_TO
    steps: int = 1
    min_share: float = DEFAULT_MIN_SHARE
    reconstruct: bool = True  # refit the layers that lost inputs by least squares (reconstruct.py)
    plan: str = "measured"  # or even (measured needs data: without it the cut is even)

    def validate(self) -> None:
        if self.importance not in IMPORTANCES:
            raise OrinflowError(f"unknown --importance {self.importance!r}; choose one of {', '.join(IMPORTANCES)}")
        if self.plan not in PLANS:
            raise OrinflowError(f"unknown --plan {self.plan!r}; choose one of {', '.join(PLANS)}")
        if (self.flops is None) == (self.ratio is None):
            raise OrinflowError("give either --flops (target share of FLOPs) or --ratio (share of channels to prune)")
        if self.flops is not None and not 0 < self.flops < 1:
            raise OrinflowError(f"--flops is the share of the original FLOPs to keep: it must be in (0, 1), got "
                                f"{self.flops}")
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise OrinflowError(f"--ratio must be in (0, 1), got {self.ratio}")
        if self.round_to < 1 or self.steps < 1:
            raise OrinflowError(f"--round-to and --steps must be >= 1 (got {self.round_to}, {self.steps})")
        if not 0 < self.min_share <= 1:
            raise OrinflowError(f"--min-share must be in (0, 1], got {self.min_share}")


def importance(name: str):
    import torch_pruning as tp

    return {"l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
            "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
            "bn": lambda: tp.importance.BNScaleImportance(),
            "taylor": lambda: tp.importance.GroupTaylorImportance(),
            "lamp": lambda: tp.importance.LAMPImportance(p=2)}[name]()


def make_pruner(module: nn.Module, example: torch.Tensor, config: PruneConfig, protected: dict[nn.Module, str],
                steps: int, keep: dict[str, int] | None = None):
    """A pruner that takes every group to the channels `keep` gives its layers (by name, from plan_channels) or,
    without it, prunes config.ratio of every group; in `steps` equal steps."""
    import torch_pruning as tp

    class RoundedPruner(tp.pruner.BasePruner):
        """Rounds the channels a layer keeps to the nearest multiple of round_to, never below one multiple
        (torch-pruning rounds down, which takes 64 channels to 32 at any ratio, and can reach zero)."""

        def _round_to(self, n_pruned, current_channels, round_to):
            keep = round((current_channels - n_pruned) / round_to) * round_to
            keep = min(max(keep, round_to), current_channels)
            return current_channels - keep

    by_name = dict(module.named_modules())
    ratios = {by_name[name]: 1 - count / out_width(by_name[name]) for name, count in (keep or {}).items()}
    with warnings.catch_warnings(), traceable(module, example) as traced:
        warnings.simplefilter("ignore")
        return RoundedPruner(traced, example, importance=importance(config.importance),
                             pruning_ratio=0.0 if keep is not None else config.ratio, pruning_ratio_dict=ratios,
                             max_pruning_ratio=1 - config.min_share, iterative_steps=steps,
                             ignored_layers=list(protected), round_to=config.round_to,
                             forward_fn=traced_forward({m for m, why in protected.items() if why == OUTPUT_LAYER}),
                             root_module_types=list(PRUNABLE))


def prune_step(pruner, module: nn.Module, gradients=None) -> None:
    """One of the pruner's steps; `gradients` fills .grad first (Taylor importance needs them)."""
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")
        if gradients is not None:
            gradients(module)
        pruner.step()
    module.zero_grad(set_to_none=True)


def pruned_copy(module: nn.Module, example: torch.Tensor, config: PruneConfig, protected_names: dict[str, str],
                keep: dict[str, int] | None = None) -> nn.Module:
    """A copy pruned as make_pruner would, in one step with L1 importance (channel counts do not depend on
    importance)."""
    trial = copy.deepcopy(module)
    by_name = dict(trial.named_modules())
    pruner = make_pruner(trial, example, replace(config, importance="l1"),
                         {by_name[n]: why for n, why in protected_names.items()}, 1, keep)
    with same_gradient_flags(trial):
        prune_step(pruner, trial)
    return trial
