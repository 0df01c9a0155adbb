"""`orinflow compare` records (evaluate/alignment.py) → the plot of error against depth and an "alignment" section."""
from __future__ import annotations

import html
from pathlib import Path


def is_alignment(tree) -> bool:
    return isinstance(tree, dict) and tree.get("command") == "compare" and "worst_layers" in tree


def layer_figure(record: dict):
    """SQNR of every paired layer against its depth in A's graph, the worst layers named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = record["layers"]
    figure, axis = plt.subplots(figsize=(10, 4))
    if layers:
        axis.plot([r["depth"] for r in layers], [r["sqnr_db"] for r in layers], ".-", linewidth=0.8)
        for row in record["worst_layers"]:
            axis.annotate(row["tensor"][-28:], (row["depth"], row["sqnr_db"]), fontsize=7, rotation=20)
    axis.set_xlabel("depth (node index in A's graph)")
    axis.set_ylabel("SQNR of B against A (dB)")
    axis.set_title(f"{title(record)}: {record['paired_layers']} paired layers")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def title(record: dict) -> str:
    return f"{Path(record['a']).name} vs {Path(record['b']).name} ({record['images']} images of {Path(record['data']).name})"


def _layer_rows(record: dict) -> tuple[list[str], list[list[str]]]:
    header = ["tensor", "op", "depth", "cosine", "SQNR dB", "max |A-B|", "noise added %"]
    body = [[r["tensor"], r["op"], str(r["depth"]), f"{r['cosine']:.6f}", f"{r['sqnr_db']:.1f}", f"{r['max_abs']:.3g}",
             f"{100 * r['growth']:.2f}"] for r in record["worst_layers"]]
    return header, body


def _summary(record: dict) -> list[str]:
    head = record["head_output"]
    lines = [f"raw head output: cosine {head['cosine']:.6f}, SQNR {head['sqnr_db']:.1f} dB, max |A-B| "
             f"{head['max_abs']:.3g}"]
    detections = record["detections"]
    if detections:
        causes = "; ".join(f"{cause}: {detections['a_only'][cause]} only in A, {detections['b_only'][cause]} only in B"
                           for cause in detections["a_only"] if detections["a_only"][cause] or
                           detections["b_only"][cause]) or "none"
        lines.append(f"detections at conf {record['conf']}: A {detections['a']}, B {detections['b']}, matched "
                     f"{detections['matched']}; differences by cause: {causes}")
        points = detections.get("keypoints")
        if points and points["persons"]:
            worst = max((e, i) for i, e in enumerate(points["error_px"]) if e is not None)
            lines.append(f"keypoints of the {points['persons']} matched persons: mean OKS of B against A "
                         f"{points['mean_oks']:.4f}; largest mean error {worst[0]:.2f} px at keypoint {worst[1]}")
    if record.get("mAP"):
        for key in record["mAP"]["a"]:
            lines.append(f"{key} on these images: A {record['mAP']['a'][key]:.4f}, B {record['mAP']['b'][key]:.4f}")
    return lines + list(record.get("notes", []))


def markdown(record: dict) -> str:
    header, body = _layer_rows(record)
    lines = [f"## Alignment: {title(record)}", "", *[f"- {line}" for line in _summary(record)], "",
             "Layers where the error grows most:", "", "| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def html_section(record: dict) -> str:
    from .render import svg_text

    header, body = _layer_rows(record)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body)
    figure = layer_figure(record)
    svg = svg_text(figure)
    import matplotlib.pyplot as plt

    plt.close(figure)
    items = "".join(f"<li>{html.escape(line)}</li>" for line in _summary(record))
    return (f'<h2>Alignment: {html.escape(title(record))}</h2>\n<ul>{items}</ul>\n<table class="alignment"><thead>'
            f"<tr>{head}</tr></thead><tbody>\n{trs}\n</tbody></table>\n<figure>{svg}</figure>\n")
