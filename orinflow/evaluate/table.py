"""Rich tables for evaluation records: one model, or several with deltas against the first."""
from __future__ import annotations

from pathlib import Path

from rich.table import Table

from . import headline
from .latency import cpu_name


def _fmt_size(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f} MB"


def comparison_table(records: list[dict], title: str = "orinflow evaluate") -> Table:
    table = Table(title=title)
    table.add_column("model", no_wrap=True)
    table.add_column("runtime")
    metric_names = list(headline(records[0]))
    for name in metric_names:
        table.add_column(f"{name} (Δ)" if len(records) > 1 else name, justify="right")
    latency_keys = [k for k in records[0].get("latency_ms", {}) if k.startswith("batch")]
    for key in latency_keys:
        table.add_column(f"{key} ms (p90)", justify="right")
    if len(records) > 1 and latency_keys:
        table.add_column("×b1", justify="right")
    table.add_column("params", justify="right")
    table.add_column("size", justify="right")
    base = records[0]
    for record in records:
        row = [Path(record["model"]).name, record.get("runtime_label", record["runtime"])]
        for name in metric_names:
            value = headline(record)[name]
            delta = "" if len(records) == 1 or record is base else f" ({value - headline(base)[name]:+.4f})"
            row.append(f"{value:.4f}{delta}")
        latency = record.get("latency_ms", {})
        for key in latency_keys:
            entry = latency.get(key)
            row.append(f"{entry['median']:.2f} ({entry['p90']:.2f})" if entry else "-")
        if len(records) > 1 and latency_keys:
            speed = base["latency_ms"]["batch1"]["median"] / latency["batch1"]["median"] if latency else None
            row.append("-" if record is base or speed is None else f"{speed:.2f}x")
        row += [f"{record['params']:,}", _fmt_size(record.get("size_bytes"))]
        table.add_row(*row)
    timing = [r["latency_ms"] for r in records if "latency_ms" in r]
    if timing and "cpu" in timing[0]:
        table.caption = f"latency on {timing[0]['cpu']}" + (", batch 1 timed in turn (interleaved)"
                                                           if timing[0].get("interleaved") else "")
    return table


def runtimes_table(records: list[dict]) -> Table:
    """Each model's batch-1 latency on each runtime (timed side by side) and the fastest."""
    runtimes = list(records[0]["latency_by_runtime"])
    table = Table(title="batch-1 latency per runtime, ms (timed side by side)")
    table.add_column("model", no_wrap=True)
    for runtime in runtimes:
        table.add_column(runtime, justify="right")
    table.add_column("fastest")
    for record in records:
        timed = record["latency_by_runtime"]
        best = record["best_runtime"]
        table.add_row(Path(record["model"]).name, *(f"{timed[r]['median']:.2f}" for r in runtimes),
                      timed[best].get("label", best))
    table.caption = f"on {cpu_name()}"
    return table


def per_class_table(record: dict) -> Table:
    table = Table(title=f"per class: {Path(record['model']).name}")
    for column in ("class", "instances", "mAP50", "mAP50-95"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, values in record["metrics"]["per_class"].items():
        table.add_row(name, str(values["instances"]), f"{values['mAP50']:.4f}", f"{values['mAP50-95']:.4f}")
    return table


COCO_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


def coco_table(records: list[dict]) -> Table:
    """The COCO evaluation's table (--metric coco), beside the YOLOv5-style mAP50-95 of the same detections."""
    table = Table(title=f"COCO evaluation ({records[0]['metrics']['coco']['library']})")
    table.add_column("model", no_wrap=True)
    for column in (*COCO_COLUMNS, "mAP50-95 (YOLOv5-style)"):
        table.add_column(column, justify="right")
    for record in records:
        for key, what, own in (("coco", "", "mAP50-95"), ("coco_segm", " (masks)", "mask_mAP50-95")):
            if key in record["metrics"]:
                coco = record["metrics"][key]
                table.add_row(Path(record["model"]).name + what, *(f"{coco[c]:.4f}" for c in COCO_COLUMNS),
                              f"{record['metrics'][own]:.4f}")
    return table
