"""`orinflow demo`: every stage that exists, on the embedded detector and its generated data."""
from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from ..data import load_dataset
from ..data.calibration import build_calibration, save_calibration
from ..evaluate import EvalOptions, evaluate_model
from ..evaluate.table import comparison_table
from ..export import export_onnx
from ..io import write_json
from ..models import load_model
from . import shapes

DEMO_MODEL = Path(__file__).parent / "assets" / "shapes_yolov8p.pt"
CALIB_IMAGES = 64


def run_demo(workdir: Path, runs: int, console: Console) -> list[dict]:
    started = time.perf_counter()
    console.rule("orinflow demo: embedded shapes detector (YOLOv8-pico, 3 classes, 256 px)")
    data_yaml = shapes.generate(workdir / "shapes")
    console.print(f"1. data: {data_yaml} (generated from the committed recipe, seed {shapes.RECIPE_SEED})")

    adapter = load_model(DEMO_MODEL, imgsz=shapes.IMAGE_SIZE)
    exported = export_onnx(adapter, workdir / "models" / "shapes_yolov8p_256.onnx")
    console.print(f"2. export: {exported.path}, parity max |diff| {exported.record['parity']['max_abs_diff']:.2g}")

    calib = build_calibration(adapter.processing, load_dataset(data_yaml, "train"), CALIB_IMAGES, seed=0)
    calib_path = save_calibration(calib, workdir / "calib" / f"shapes_train_{CALIB_IMAGES}.npy")
    console.print(f"3. calibrate: {calib_path} {tuple(calib.shape)} (input for the quantization routes)")

    options = EvalOptions(latency_runs=runs, batch=8)
    records = []
    for model in (adapter, load_model(exported.path)):
        record = evaluate_model(model, data_yaml, "val", options)
        write_json(workdir / "records" / f"eval_{record['runtime']}.json", record)
        records.append(record)
    console.print("4. evaluate on the held-out split (100 images), PyTorch vs ONNX Runtime:")
    console.print(comparison_table(records, title="demo: shapes val"))
    console.print(f"records in {workdir / 'records'}; total {time.perf_counter() - started:.0f} s")
    return records
