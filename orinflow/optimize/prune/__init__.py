"""Route 5, dependency-aware channel pruning: the dependency graph and what it protects (graph.py), the
pruner (pruner.py), the channel plan that meets --flops (plan.py, allocation.py), the steps with their refit
and fine-tuning (steps.py, reconstruct.py), and the side-by-side ONNX of both models (side_by_side.py)."""
from ...lazy import exports

PUBLIC = {
    "PruneConfig": "pruner", "make_pruner": "pruner", "pruned_copy": "pruner",
    "protected_layers": "graph", "prunable_groups": "graph", "summary": "graph",
    "plan_channels": "plan", "cut_probe": "plan", "allocate": "allocation",
    "run_prune": "steps", "recalibrate_batchnorm": "steps", "pruned_and_refitted": "reconstruct",
    "onnx_side_by_side": "side_by_side",
}
__all__ = list(PUBLIC)
__getattr__, __dir__ = exports(__name__, PUBLIC)
