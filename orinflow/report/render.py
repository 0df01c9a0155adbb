"""Report rows → one table (Markdown and self-contained HTML) and two plots."""
from __future__ import annotations

import html
import io
import re
from pathlib import Path

from ..formats import markdown_text
from .records import Row, pareto_front
from ..tasks import task_room

ROUTE_COLOURS = {"fp32": "#4c72b0", "ptq": "#dd8452", "qat": "#55a868", "sat": "#8172b3", "sparse-qat": "#c44e52",
                 "prune": "#937860", "prune+ptq": "#da8bc3"}
FRONT_COLOUR = "#d62728"


def latency_keys(rows: list[Row]) -> list[str]:
    keys = {k for r in rows for k, v in r.record.get("latency_ms", {}).items() if isinstance(v, dict)}
    return sorted(keys, key=lambda k: int(re.sub(r"\D", "", k) or 0))


def table(rows: list[Row]) -> tuple[list[str], list[list[str]]]:
    tasks = {r.record["task"] for r in rows}
    metrics = rows[0].metric_names if len(tasks) == 1 else ("metric 1", "metric 2")
    keys = latency_keys(rows)
    coco = any("coco" in r.record["metrics"] for r in rows)  # evaluated with --metric coco
    header = ["model", "route", "mode", "method", "target", "runtime", "data", *metrics, *(["COCO AP"] if coco else []),
              "Δ vs FP32 (pts)"]
    for key in keys:
        header += [f"{key} ms", f"speed-up {key}"]
    header += ["size MB", "INT8 FLOP share", "2:4 FLOP share"]
    by_runtime = any("best_runtime" in r.record for r in rows)  # ptq --runtimes
    if by_runtime:
        header.append("fastest runtime (b1 ms)")
    body = []
    for row in rows:
        values = [row.record["metrics"][m] for m in row.metric_names]
        delta = row.delta_points()
        cells = [row.name, row.route, row.mode, row.method, row.target, row.record.get("runtime_label", row.record["runtime"]),
                 Path(str(row.record.get("data", "-"))).name, *(f"{v:.4f}" for v in values),
                 *([_coco_ap(row.record)] if coco else []),
                 "baseline" if row.baseline is row else ("-" if delta is None else f"{delta:+.2f}")]
        for key in keys:
            latency, speedup = row.latency(key), row.speedup(key)
            cells += ["-" if latency is None else f"{latency:.2f}", "-" if speedup is None else f"{speedup:.2f}x"]
        size = row.record.get("size_bytes")
        cells += ["-" if size is None else f"{size / 1e6:.2f}", _share(row.int8_flop_share),
                  _share(row.sparse_flop_share)]
        if by_runtime:
            cells.append(_fastest(row.record))
        body.append(cells)
    return header, body


def _fastest(record: dict) -> str:
    best = record.get("best_runtime")
    if best is None:
        return "-"
    timed = record["latency_by_runtime"][best]
    return f"{timed.get('label', best)} ({timed['median']:.2f})"


def _coco_ap(record: dict) -> str:
    coco = record["metrics"].get("coco")
    return "-" if coco is None else f"{coco['AP']:.4f}"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def budget_lines(rows: list[Row]) -> list[str]:
    """One line per model quantized under an accuracy budget: what it cost and where."""
    lines = []
    for row in rows:
        b = row.budget
        if not b:
            continue
        groups = ", ".join(b["fallback"]) or "none"
        lines.append(f"{row.name}: budget {b['max_drop']:.2f} points {'met' if b['met'] else 'NOT met'} on "
                     f"{b['select_data']} ({b['metric']} FP32 {b['fp32']:.4f}, full INT8 {b['full_int8']:.4f}, "
                     f"budgeted {b['final']:.4f}); INT8 FLOP share {b['int8_flop_share']:.1%}; in "
                     f"{b['fallback_precision']}: {groups}")
    return lines


def markdown(rows: list[Row], plots: dict[str, str], sources: list[str], sections: list[str] = ()) -> str:
    header, body = table(rows)
    lines = ["# orinflow report", "", f"{len(rows)} evaluated models from {markdown_text(', '.join(sources))}.", ""]
    if rows:
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(markdown_text(cell) for cell in cells) + " |" for cells in body]
        lines += ["", markdown_text(_notes(rows)), ""]
    budgets = budget_lines(rows)
    if budgets:
        lines += ["## Accuracy budgets", ""] + [f"- {markdown_text(line)}" for line in budgets] + [""]
    lines += list(sections)
    lines += [f"![{title}]({name})" for title, name in plots.items()]
    return "\n".join(lines) + "\n"


def _notes(rows: list[Row]) -> str:
    front = ", ".join(r.name for r in pareto_front(rows))
    main = ", ".join(sorted({task_room(r.record["task"]).headline_label for r in rows}))
    return (f"Δ is the main metric ({main}) against the dense FP32 model on the same data; speed-up is "
            "that model's median latency over this one's, on the same runtime. "
            f"Pareto front (batch-1 latency vs accuracy): {front or 'no latency recorded'}.")


def html_page(rows: list[Row], svgs: dict[str, str], sources: list[str], sections: list[str] = ()) -> str:
    header, body = table(rows)
    front = {id(r) for r in pareto_front(rows)}
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = []
    for row, cells in zip(rows, body):
        cls = ' class="front"' if id(row) in front else ""
        trs.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    figures = "".join(f'<figure><figcaption>{html.escape(title)}</figcaption>{svg}</figure>'
                      for title, svg in svgs.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>orinflow report</title>
<style>
body {{ font-family: "DejaVu Sans", Arial, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; }}
th {{ background: #1f3b5c; color: #fff; padding: 6px 8px; text-align: left; }}
td {{ border-bottom: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
td:first-child {{ text-align: left; font-family: monospace; }}
tr.front td {{ background: #fdecea; }}
figure {{ display: inline-block; margin: 16px 16px 0 0; }}
figcaption {{ font-weight: bold; margin-bottom: 4px; }}
svg {{ max-width: 640px; height: auto; }}
</style></head>
<body>
<h1>orinflow report</h1>
<p>{len(rows)} evaluated models from {html.escape(', '.join(sources))}. Rows shaded red are on the Pareto front.</p>
<table id="results"><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(trs)}
</tbody></table>
<p>{html.escape(_notes(rows))}</p>
{_budget_html(rows)}{"".join(sections)}
{figures}
</body></html>
"""


def plots(rows: list[Row]) -> dict[str, "object"]:
    """matplotlib figures: accuracy vs batch-1 latency with the Pareto front, and per-variant accuracy bars."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figures = {}
    metric = task_room(rows[0].record["task"]).headline_label
    timed = [r for r in rows if r.latency("batch1") is not None]
    if timed:
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
        for row in timed:
            ax.scatter(row.latency("batch1"), row.main_metric, color=ROUTE_COLOURS.get(row.route, "#777"), s=40,
                       zorder=3)
            ax.annotate(row.name, (row.latency("batch1"), row.main_metric), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
        front = pareto_front(rows)
        xs, ys = [r.latency("batch1") for r in front], [r.main_metric for r in front]
        ax.plot(xs, ys, color=FRONT_COLOUR, linewidth=2, zorder=2)
        ax.scatter(xs, ys, s=160, facecolors="none", edgecolors=FRONT_COLOUR, linewidths=2, zorder=4,
                   label="Pareto front")
        ax.margins(0.15)
        ax.set_xlabel("batch-1 median latency (ms)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        figures["accuracy vs latency"] = fig
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(rows) + 1.2), dpi=100)
    names = [f"{r.name} ({r.record['runtime']})" for r in rows]
    ax.barh(names, [r.main_metric for r in rows], color=[ROUTE_COLOURS.get(r.route, "#777") for r in rows])
    ax.invert_yaxis()
    values = [r.main_metric for r in rows]
    spread = max(values) - min(values)
    ax.set_xlim(max(0.0, min(values) - max(2 * spread, 0.01)), max(values) + max(spread, 0.005) * 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(4))
    ax.set_xlabel(metric)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    figures["accuracy per variant"] = fig
    return figures


def svg_text(figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: inline in HTML


def _budget_html(rows: list[Row]) -> str:
    lines = budget_lines(rows)
    if not lines:
        return ""
    return "<h2>Accuracy budgets</h2><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>\n"
