"""Sensitivity records (optimize/quantize/sensitivity.py) → a ranked table, a bar plot, and a report section."""
from __future__ import annotations

import html
from pathlib import Path

from ..io import atomic_path, write_json


def is_sensitivity(tree) -> bool:
    return isinstance(tree, dict) and {"groups", "full_int8", "head_tensors"} <= tree.keys()


def rows(record: dict, count: int = 15) -> tuple[list[str], list[list[str]]]:
    key = record["metric"]
    header = ["rank", "group", "convs", "FLOP share", "SQNR alone dB", "SQNR kept float dB", "gain dB",
              f"{key} kept float", "gain pts"]
    body = []
    for rank, row in enumerate(record["groups"][:count], 1):
        metric = row.get(f"all_but_{key}")
        body.append([str(rank), row["name"], str(len(row["compute"])), f"{row['flop_share']:.1%}",
                     f"{row['sqnr_alone_db']:.2f}", f"{row['sqnr_all_but_db']:.2f}", f"{row['gain_db']:+.3f}",
                     "-" if metric is None else f"{metric:.4f}",
                     "-" if metric is None else f"{row['metric_gain_points']:+.2f}"])
    return header, body


def title(record: dict) -> str:
    key, quant = record["metric"], record["quantization"]
    return (f"sensitivity of {Path(record['model']).name} ({quant['method']}, {quant['target']}): full INT8 SQNR "
            f"{record['full_int8']['sqnr_db']:.2f} dB; {key} FP32 {record['fp32'][key]:.4f}, full INT8 "
            f"{record['full_int8'][key]:.4f} on {record['select_data']}")


def table(record: dict, count: int = 15):
    """A rich table for the terminal."""
    from rich.table import Table

    header, body = rows(record, count)
    result = Table(title=title(record))
    for column in header:
        result.add_column(column, justify="left" if column == "group" else "right")
    for cells in body:
        result.add_row(*cells)
    return result


def markdown(record: dict, count: int = 15) -> str:
    header, body = rows(record, count)
    lines = [f"## {title(record)}", "", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def html_section(record: dict, count: int = 15) -> str:
    header, body = rows(record, count)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body)
    return (f'<h2>{html.escape(title(record))}</h2>\n<table class="sensitivity"><thead><tr>{head}</tr></thead>'
            f"<tbody>\n{trs}\n</tbody></table>\n")


def plot(record: dict, count: int = 20):
    """Bar plot of the SQNR gain from keeping each group in float, worst groups first."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    ranked = record["groups"][:count]
    figure, axis = plt.subplots(figsize=(9, 0.32 * len(ranked) + 1.6))
    names = [r["name"] if len(r["name"]) <= 48 else "…" + r["name"][-47:] for r in ranked]
    axis.barh(range(len(ranked)), [r["gain_db"] for r in ranked], color="#1f3b5c")
    axis.set_yticks(range(len(ranked)), names, fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel("SQNR gain of the head outputs when kept in float (dB)")
    axis.set_title(f"most sensitive groups, full INT8 SQNR {record['full_int8']['sqnr_db']:.2f} dB", fontsize=9)
    figure.tight_layout()
    return figure


def write_sensitivity(record: dict, folder: Path) -> dict:
    """sensitivity.json and sensitivity.png in `folder` (each written atomically)."""
    from matplotlib import pyplot as plt

    json_path = write_json(Path(folder) / "sensitivity.json", record)
    figure = plot(record)
    with atomic_path(Path(folder) / "sensitivity.png") as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return {"json": json_path, "plot": Path(folder) / "sensitivity.png"}
