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
    median = float(np.median(times))
    return {"batch": input_shape[0], "median": median, "p90": float(np.percentile(times, 90)),
            "runs": runs, "images_per_s": input_shape[0] * 1000 / median}


def latency_profile(runner: Runner, image_shape: tuple[int, int, int], batch: int, runs: int, warmup: int) -> dict:
    """Batch 1 and, when asked, a larger batch, with the thread count that produced them."""
    result = {"batch1": measure_latency(runner, (1, *image_shape), runs, warmup)}
    if batch > 1:
        result[f"batch{batch}"] = measure_latency(runner, (batch, *image_shape), max(3, runs // batch), warmup=1)
    result["threads"] = runner.threads
    return result
