"""The training settings every fine-tuning route takes (QAT, SAT, the pruning steps' fine-tuning)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ...errors import OrinflowError


SCHEDULES = ("constant", "cosine")


def check_lr(lr) -> None:
    """--lr: a finite number above 0 (NaN compares false with everything, so `lr <= 0` lets it through)."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise OrinflowError(f"--lr must be a finite number above 0, got {lr}")


def check_schedule(schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise OrinflowError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")


@dataclass
class QATConfig:
    epochs: int = 1
    lr: float = 1e-4
    batch: int = 8
    calib_images: int = 64
    distill: bool = True
    temperature: float = 2.0
    labels: bool | None = None  # the family's label loss; None: on for classifiers, off for detectors
    device: str = "cpu"  # under torchrun: cuda means each rank's own GPU (LOCAL_RANK)
    seed: int = 0
    max_steps: int | None = None  # cap per epoch (quick runs, tests)
    resume: bool = False  # continue from the checkpoint of an interrupted run
    flip: bool = False  # mirror a random half of each batch (teacher, student and labels alike)
    mixup: bool = False  # blend each image with another of its batch (share ~ U(0, 1)); labels of both count
    schedule: str = "constant"  # learning rate: constant, or cosine (decays to 0 over the run)
    # Detectors: also weigh the score term over the teacher's confident anchors (distillation_loss). Pruning turns
    # it on: its student starts far from the teacher, and the background-dominated mean barely moves it.
    foreground: bool = False
    # What else a checkpoint must have been trained on to be resumed: a digest of the model, the data and the
    # start model (api/training.py); empty where the caller sets none.
    run: str = ""

    def validate(self) -> None:
        check_lr(self.lr)
        if self.epochs < 0 or self.batch < 1:
            raise OrinflowError(f"epochs must be >= 0 and --batch >= 1 (got {self.epochs}, {self.batch})")
        if self.calib_images < 1:
            raise OrinflowError(f"--calib-images must be >= 1, got {self.calib_images}")
        if self.max_steps is not None and self.max_steps < 1:
            raise OrinflowError(f"--max-steps must be >= 1, got {self.max_steps}")
        check_schedule(self.schedule)

    def fingerprint(self) -> dict:
        """What must match for a checkpoint to be resumed (the epoch count may grow)."""
        return {k: v for k, v in asdict(self).items() if k not in ("epochs", "resume", "device")}
