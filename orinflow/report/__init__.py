"""`orinflow report`: run records → report.md and a self-contained report.html with the table and plots."""
from __future__ import annotations

from pathlib import Path

from ..errors import OrinflowError
from ..io import atomic_path
from . import alignment, sensitivity
from .records import Row, build_rows, pareto_front, read_trees
from .render import html_page, markdown, plots, svg_text

__all__ = ["Row", "build_rows", "pareto_front", "write_report"]


def write_report(sources: list[Path], output: Path) -> dict:
    """Write report.md (+ PNG plots) and report.html (plots inline as SVG) into `output`."""
    from matplotlib import pyplot as plt

    trees, skipped = read_trees(sources)
    studies = [tree for _, tree in trees if sensitivity.is_sensitivity(tree)]
    alignments = [tree for _, tree in trees if alignment.is_alignment(tree)]
    try:
        rows = build_rows(sources, trees)
    except OrinflowError:
        if not studies and not alignments:
            raise
        rows = []  # a report of sensitivity studies or comparisons alone
    figures = plots(rows) if rows else {}
    names = {title: f"report_{title.replace(' ', '_')}.png" for title in figures}
    svgs = {}
    for title, figure in figures.items():
        with atomic_path(output / names[title]) as tmp:
            figure.savefig(tmp, format="png")
        svgs[title] = svg_text(figure)
        plt.close(figure)
    labels = [str(s) for s in sources]
    with atomic_path(output / "report.md") as tmp:
        tmp.write_text(markdown(rows, names, labels, [sensitivity.markdown(s) for s in studies]
                                + [alignment.markdown(a) for a in alignments]))
    with atomic_path(output / "report.html") as tmp:
        tmp.write_text(html_page(rows, svgs, labels, [sensitivity.html_section(s) for s in studies]
                                 + [alignment.html_section(a) for a in alignments]))
    return {"rows": len(rows), "sensitivity": len(studies), "alignment": len(alignments),
            "markdown": output / "report.md", "html": output / "report.html",
            "pareto_front": [r.name for r in pareto_front(rows)], "skipped": skipped}
