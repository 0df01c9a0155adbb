"""Latency: warm-up, then timed runs on a fixed input; median and p90 in ms, throughput."""
from __future__ import annotations

import time

import numpy as np

from ..runtime import Runner


def measure_latency(runner: Runner, input_shape: tuple[int, ...], runs: int = 50, warmup: int = 5) -> dict:
    batch = np.random.default_rng(0).random(input_shape, dtype=np.float32)
    for _ in range(warmup):
        runner.run(batch)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.run(batch)
        times.append((time.perf_counter() - start) * 1000)
    return _summary(times, input_shape[0])


def latency_profile(runner: Runner, image_shape: tuple[int, int, int], batch: int, runs: int, warmup: int,
                    batch1: dict | None = None) -> dict:
    """Batch 1 (`batch1` when already timed) and, when asked, a larger batch, with the thread count that
    produced them."""
    result = {"batch1": batch1 or measure_latency(runner, (1, *image_shape), runs, warmup)}
    if batch > 1:
        result[f"batch{batch}"] = measure_latency(runner, (batch, *image_shape), max(3, runs // batch), warmup=1)
    result["threads"] = runner.threads
    result["cpu"] = cpu_name()
    return result


SETTLE_S = 0.05  # ONNX Runtime's and OpenMP's idle workers spin this long at most before they sleep


def interleaved_latency(runners: dict, input_shape: tuple[int, ...] | dict, rounds: int = 50,
                        warmup: int = 5, settle_s: float = SETTLE_S) -> dict:
    """Median/p90 ms per runner, timed in turn on the same input so drift hits all of them alike
    (`input_shape`: one for all, or one per runner's key).

    Each timed run waits `settle_s` first: without the pause, the previous runner's worker
    threads are still spinning when the next one starts, and on a 2-core machine that
    doubled every latency and skewed the ratios (measured: FP32 yolov5n 70 ms interleaved
    against 32 ms alone).
    """
    shapes = input_shape if isinstance(input_shape, dict) else dict.fromkeys(runners, input_shape)
    batches = {name: np.random.default_rng(0).random(shapes[name], dtype=np.float32) for name in runners}
    for name, runner in runners.items():
        for _ in range(warmup):
            runner.run(batches[name])
    times: dict = {name: [] for name in runners}
    for _ in range(rounds):
        for name, runner in runners.items():
            time.sleep(settle_s)
            start = time.perf_counter()
            runner.run(batches[name])
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: _summary(t, shapes[name][0]) for name, t in times.items()}


def _summary(times: list[float], batch: int) -> dict:
    median = float(np.median(times))
    return {"batch": batch, "median": median, "p90": float(np.percentile(times, 90)), "runs": len(times),
            "images_per_s": batch * 1000 / median}


def cpu_name() -> str:
    """The CPU model, printed beside every latency figure (INT8 speed-ups depend on it)."""
    from ..runtime.cpu import cpu_model

    return cpu_model()
