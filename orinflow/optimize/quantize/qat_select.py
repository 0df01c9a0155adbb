"""QAT never writes a model worse than its start: the start (epoch 0) and every epoch are written as the
model they would export and scored on selection data; the best one is the output."""
from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from ...data import Dataset
from ...io import atomic_path, private_folder
from ..train import distributed
from .qat_start import Pairing, StartModel, write_trained
from ...tasks import task_room


class BestEpoch:
    """Keeps the best exported candidate so far (the latest one without selection data)."""

    def __init__(self, start: StartModel, pairing: Pairing, student, output: Path, metadata: dict,
                 selection: Dataset | None, task: str, say=print):
        self.start, self.pairing, self.student, self.output = start, pairing, student, Path(output)
        self.metadata, self.selection, self.task, self.say = metadata, selection, task, say
        self.metric = task_room(task).headline
        self.scores: list[dict] = []
        self.best: tuple[int, float | None, Path] | None = None
        self._stack = contextlib.ExitStack()
        self._folder = self._stack.enter_context(private_folder("orinflow-qat-")) if distributed.is_main() else None

    def consider(self, epoch: int) -> None:
        """Write the model as it stands after `epoch` (0: the start) and keep it if it is the best."""
        if self._folder is None:
            return
        candidate = self._folder / f"epoch{epoch}.onnx"
        write_trained(self.start, self.pairing, self.student, candidate, self.metadata)
        score = self._score(candidate) if self.selection is not None else None
        if score is not None:
            self.scores.append({"epoch": epoch, self.metric: score})
            self.say(f"{'start' if epoch == 0 else f'epoch {epoch}'}: selection {self.metric} {score:.4f} "
                     f"({self.selection.name})")
        if self.best is None or score is None or score > self.best[1]:
            if self.best is not None:
                self.best[2].unlink()
            self.best = (epoch, score, candidate)
        else:
            candidate.unlink()

    def _score(self, path: Path) -> float:
        from ...evaluate import EvalOptions, evaluate_model
        from ...models import load_model

        record = evaluate_model(load_model(path), self.selection, options=EvalOptions(measure_latency=False, batch=8))
        return float(record["metrics"][self.metric])

    def finish(self) -> dict:
        """Write the best candidate to the output; what was scored and chosen, for the record."""
        epoch, score, path = self.best
        with atomic_path(self.output) as tmp:
            shutil.copyfile(path, tmp)
        chosen = {"data": self.selection.name if self.selection is not None else None, "metric": self.metric,
                  "scores": self.scores, "epoch": epoch}
        if self.selection is not None:
            chosen["never_beat_start"] = epoch == 0 and len(self.scores) > 1
            if chosen["never_beat_start"]:
                self.say("no epoch beat the start on the selection data: the start model is written")
            else:
                self.say(f"epoch {epoch} scored best on the selection data ({self.metric} {score:.4f}): written")
        return chosen

    def close(self) -> None:
        self._stack.close()
