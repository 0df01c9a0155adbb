"""The one training loop that QAT, SAT and the pruning steps fine-tune with (loop.py): its settings
(config.py), its objective of distillation and label losses (objective.py, losses.py), and data parallel
under torchrun (distributed.py)."""
from ...lazy import exports

PUBLIC = {
    "QATConfig": "config", "train": "loop", "batches": "loop", "first_images": "loop", "checkpoint_path": "loop",
    "check_trainable": "loop", "distillation_loss": "objective", "Objective": "objective",
    "detection_label_loss": "losses",
}
__all__ = list(PUBLIC)
__getattr__, __dir__ = exports(__name__, PUBLIC)
