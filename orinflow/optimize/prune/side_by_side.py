"""A pruned model beside its original, as inference runs them: both exported to ONNX, sizes, and ONNX
Runtime CPU batch-1 latency timed in turn."""
from __future__ import annotations


def onnx_side_by_side(original, pruned, runs: int) -> dict:
    """Both models (loaded as inference loads them) exported to ONNX: sizes, and ONNX Runtime CPU batch-1
    latency timed in turn."""
    from pathlib import Path

    from ...evaluate.latency import cpu_name, interleaved_latency
    from ...export import export_onnx
    from ...io import private_folder
    from ...runtime import OrtRunner

    with private_folder() as folder:
        paths = {name: export_onnx(model, Path(folder) / f"{name}.onnx").path
                 for name, model in (("original", original), ("pruned", pruned))}
        latency = interleaved_latency({name: OrtRunner(path) for name, path in paths.items()},
                                      (1, 3, *original.processing.imgsz), rounds=runs)
        sizes = {name: path.stat().st_size for name, path in paths.items()}
    return {"size_bytes": sizes, "latency_ms": latency, "cpu": cpu_name(),
            "latency_ratio": latency["pruned"]["median"] / latency["original"]["median"]}
