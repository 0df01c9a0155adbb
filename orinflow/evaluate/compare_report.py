"""`orinflow compare`: the run around evaluate/alignment.py (images drawn, mAP of both, record, plot, tables)."""
from __future__ import annotations

from pathlib import Path

from ..errors import OrinflowError

PLOT = "compare.png"
RECORD = "compare.json"


def run_compare(sides, paths, data, split: str, images: int, seed: int, conf: float, top: int, folder: Path,
                say=print) -> dict:
    from ..data import draw_images, load_dataset
    from ..io import write_json
    from .alignment import compare_models

    dataset = load_dataset(data, split)
    if not len(dataset):
        raise OrinflowError(f"{data} has no images in split {split!r}")
    subset = draw_images(dataset, images, seed)
    say(f"comparing {paths[0]} (A) with {paths[1]} (B) on {len(subset)} images of {data}")
    found = compare_models(*sides, subset, conf=conf, say=say)
    notes = _notes(sides, found)
    record = {"command": "compare", "a": str(paths[0]), "b": str(paths[1]), "kinds": [s.kind for s in sides],
              "runtimes": [s.runtime for s in sides],
              "data": str(data), "split": split, "images": len(subset), "seed": seed, "conf": conf,
              "paired_layers": found["paired_layers"], "head_output": found["head_output"],
              "worst_layers": [r for r in sorted(found["layers"], key=lambda r: -r["growth"])
                               if r["growth"] > 0][:top],
              "min_cosine": min((r["cosine"] for r in found["layers"]), default=None),
              "detections": found["detections"], "examples": found["examples"],
              "mAP": _map_both(subset, found, found["room"]) if found["detections"] is not None else None,
              "layers": found["layers"], "notes": notes, "probing": found["probing"],
              "int8_kernels": found["int8_kernels"],
              "files": {"json": str(folder / RECORD), "plot": str(folder / PLOT)}}
    folder.mkdir(parents=True, exist_ok=True)
    plot_layers(record, folder / PLOT)
    write_json(folder / RECORD, record)
    return record


def _notes(sides, found) -> list[str]:
    notes = []
    if "engine" in (s.kind for s in sides):
        notes.append("an engine exposes only its outputs: layers are not compared")
    elif not found["paired_layers"]:
        notes.append("no tensor of one model could be paired with the other's")
    notes += found["runtime_notes"]
    for effect in found["probing"]:
        notes.append(probing_note(effect))
    for side in sides:
        if side.processing is None:
            notes.append(f"{side.label} carries no orinflow metadata: it is fed the other's preprocessing, and its "
                         "detections are not compared (give it its head layout with `orinflow adopt`)")
    return notes


def probing_note(effect: dict) -> str:
    """One line: reading the layers changed a side's outputs, and where its evaluated form departs."""
    changed = effect["changed"]
    line = (f"{effect['side']} on {effect['runtime']} computes other outputs when its layers are read (worst-channel "
            f"error {changed['error']:.3g}, cosine {changed['cosine']:.4f} against its evaluation; tolerance "
            f"{effect['tolerance']:.3g}): the layer table shows the probed compilation, not what evaluate runs. ")
    where = effect.get("departs_at")
    if where is None:
        return line + "No prefix of the graph departs on its own: the departure needs the whole graph."
    return line + (f"Compiled as evaluated ({effect['form']}), the graph departs from its exact function at "
                   f"{where['tensor']} ({where['op']} {where['node']}; worst-channel error {where['error']:.3g}, "
                   f"cosine {where['cosine']:.4f}), found by compiling {len(effect['prefixes'])} prefixes")


def _map_both(subset, found, room) -> dict | None:
    """The task's mAPs (boxes, and masks or keypoints) of A and B on the compared images (their detections at the
    evaluator's threshold, 0.001)."""
    from ..tasks import Scoring

    if any(d is None for d in found["final"]["a"] + found["final"]["b"]):
        return None
    keys = dict.fromkeys(("mAP50", "mAP50-95") + room.metric_keys)
    return {side: {k: v for k, v in room.score(found["final"][side], subset, subset.names, Scoring()).items()
                   if k in keys} for side in ("a", "b")}


def plot_layers(record: dict, path: Path) -> None:
    """The report's alignment plot (SQNR against depth), as a PNG beside the record."""
    import matplotlib.pyplot as plt

    from ..io import atomic_path
    from ..report.alignment import layer_figure

    figure = layer_figure(record)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def compare_tables(record: dict) -> list:
    """Rich tables for the terminal: the worst layers, the head output, and the detection causes."""
    from rich.table import Table

    tables = []
    agree = "" if record["worst_layers"] else (f": none adds noise (lowest cosine {record['min_cosine']:.9f})"
                                                if record["min_cosine"] is not None else "")
    layers = Table(title=f"layers where the error grows most ({record['paired_layers']} paired, of A's graph){agree}")
    for column in ("tensor", "op", "depth", "cosine", "SQNR dB", "max |A-B|", "noise added %"):
        layers.add_column(column, justify="left" if column in ("tensor", "op") else "right")
    for row in record["worst_layers"]:
        layers.add_row(row["tensor"], row["op"], str(row["depth"]), f"{row['cosine']:.6f}", f"{row['sqnr_db']:.1f}",
                       f"{row['max_abs']:.3g}", f"{100 * row['growth']:.2f}")
    tables.append(layers)
    head = record["head_output"]
    detections = record["detections"]
    if detections is not None:
        table = Table(title=f"detections at conf {record['conf']} on {record['images']} images: A {detections['a']}, "
                            f"B {detections['b']}, matched {detections['matched']} (same class, IoU >= 0.9); raw "
                            f"head output cosine {head['cosine']:.6f}, SQNR {head['sqnr_db']:.1f} dB")
        for column in ("cause", "only in A", "only in B"):
            table.add_column(column, justify="left" if column == "cause" else "right")
        for cause in detections["a_only"]:
            table.add_row(cause, str(detections["a_only"][cause]), str(detections["b_only"][cause]))
        tables.append(table)
    points = (detections or {}).get("keypoints")
    if points and points["persons"]:
        table = Table(title=f"keypoints of the {points['persons']} matched persons: B against A, mean OKS "
                            f"{points['mean_oks']:.4f}")
        table.add_column("keypoint", justify="right")
        table.add_column("mean error px", justify="right")
        for index, error in enumerate(points["error_px"]):
            table.add_row(str(index), "-" if error is None else f"{error:.2f}")
        tables.append(table)
    return tables
