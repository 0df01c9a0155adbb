"""Interleaved timing (evaluate/latency.py): models timed in turn, round by round, each on its own input shape."""
import numpy as np

from orinflow.evaluate.latency import interleaved_latency


class _Recorder:
    """A runner that notes when it ran and on what: the order is what is tested."""

    def __init__(self, name: str, calls: list):
        self.name, self.calls = name, calls

    def run(self, batch: np.ndarray):
        self.calls.append((self.name, batch.shape))


def test_runners_take_turns_round_by_round_on_their_own_shapes():
    calls = []
    runners = {"a": _Recorder("a", calls), "b": _Recorder("b", calls)}
    shapes = {"a": (1, 3, 8, 8), "b": (1, 3, 16, 16)}
    result = interleaved_latency(runners, shapes, rounds=3, warmup=1, settle_s=0)
    assert calls[:2] == [("a", shapes["a"]), ("b", shapes["b"])]  # warm-up
    assert [name for name, _ in calls[2:]] == ["a", "b"] * 3
    assert all(shape == shapes[name] for name, shape in calls)
    assert result["a"]["runs"] == 3 and result["b"]["batch"] == 1 and result["b"]["images_per_s"] > 0
