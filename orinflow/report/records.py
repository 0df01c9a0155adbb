"""Run records (JSON) → report rows: one per evaluated model, joined with what made it."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OrinflowError
from ..tasks import task_room

BASELINE_ROUTE = "fp32"


@dataclass
class Row:
    record: dict  # the evaluation record as written
    route: str
    mode: str
    method: str
    target: str
    int8_flop_share: float | None
    sparse_flop_share: float | None
    baseline: "Row | None" = field(default=None, repr=False)
    budget: dict | None = None  # the accuracy budget the model was quantized under (--max-drop)

    @property
    def name(self) -> str:
        return Path(self.record["model"]).name

    @property
    def metric_names(self) -> tuple[str, str]:
        return task_room(self.record["task"]).metric_keys

    @property
    def main_metric(self) -> float:
        return self.record["metrics"][task_room(self.record["task"]).headline]

    def delta_points(self) -> float | None:
        return None if self.baseline is None else (self.main_metric - self.baseline.main_metric) * 100

    def latency(self, key: str) -> float | None:
        entry = self.record.get("latency_ms", {}).get(key)
        return entry["median"] if isinstance(entry, dict) else None

    def speedup(self, key: str) -> float | None:
        mine, base = self.latency(key), self.baseline.latency(key) if self.baseline else None
        if mine is None or base is None or self.baseline.record["runtime"] != self.record["runtime"]:
            return None
        return base / mine


def read_trees(paths: list[Path]) -> tuple[list[tuple[Path, object]], list[str]]:
    """Every JSON file given, or found in a folder given, parsed once, oldest first. A file named on its own
    must be JSON; one found in a folder that is not is skipped and returned in the second list."""
    trees, skipped = [], []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.json") if not p.name.startswith("."))
        elif path.is_file():
            found = [path]
        else:
            raise OrinflowError(f"no such record file or folder: {path}")
        for file in found:
            try:
                trees.append((file, json.loads(file.read_text())))
            except (OSError, ValueError, RecursionError) as e:
                if not path.is_dir():
                    raise OrinflowError(f"{file} is not a JSON run record ({type(e).__name__}: "
                                        f"{str(e)[:120]})") from e
                skipped.append(str(file))
    trees.sort(key=lambda item: item[0].stat().st_mtime)
    return trees, skipped


def _walk(node, found: list[dict]) -> None:
    """Every evaluation record inside a JSON tree (route and benchmark records nest them)."""
    if isinstance(node, dict):
        if {"model", "task", "metrics", "runtime"} <= node.keys():
            found.append(node)
            return
        for value in node.values():
            _walk(value, found)
    elif isinstance(node, list):
        for value in node:
            _walk(value, found)


def load_evaluations(trees: list[tuple[Path, object]], paths: list[Path]) -> list[dict]:
    """Evaluation records, one per (model, runtime, data, split); one with latency wins, then the newest file."""
    chosen: dict[tuple, dict] = {}
    for _, tree in trees:
        found: list[dict] = []
        _walk(tree, found)
        for record in found:
            key = (record["model"], record["runtime"], record.get("data"), record.get("split"))
            if key not in chosen or "latency_ms" in record or "latency_ms" not in chosen[key]:
                chosen[key] = record
    if not chosen:
        raise OrinflowError(f"no evaluation records in {', '.join(map(str, paths))} (write them with "
                            "`orinflow evaluate --json`, `orinflow ptq` or the benchmarks)")
    return list(chosen.values())


def _artifact_record(model: str | None) -> dict:
    """What the command that wrote `model` recorded beside it (io.record_path), if anything."""
    from ..io import record_path

    if not model:
        return {}
    sibling = record_path(model)
    if sibling == Path(model) or not sibling.is_file():
        return {}
    try:
        found = json.loads(sibling.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return found if isinstance(found, dict) else {}


def pruned_ancestor(made: dict, depth: int = 4) -> dict | None:
    """The prune record among the model's sources (a pruned checkpoint, exported, then quantized)."""
    for _ in range(depth):
        if made.get("command") == "prune":
            return made
        made = _artifact_record(made.get("source"))
    return None


def make_row(record: dict) -> Row:
    made = {**_artifact_record(record["model"]), **record}
    quant = made.get("quantization") or {}
    route = made.get("route") or ("ptq" if quant else BASELINE_ROUTE)
    if pruned_ancestor(made) is not None:  # route 5, alone or followed by another route
        route = "prune" if route in (BASELINE_ROUTE, "prune") else f"prune+{route}"
    qdq, sparsity = made.get("qdq_report") or {}, made.get("sparsity") or {}
    mode = quant.get("mode") or ("int8" if route in ("qat", "sparse-qat") else "fp32")
    method = quant.get("method") or {"qat": "qat", "sparse-qat": "qat", "sat": made.get("method", "")}.get(route, "-")
    target = quant.get("target") or ("tensorrt" if route in ("qat", "sparse-qat") else "-")
    return Row(record, route, mode, method or "-", target, qdq.get("quantized_flop_share"),
               sparsity.get("sparse_flop_share"), budget=made.get("budget"))


def link_baselines(rows: list[Row]) -> None:
    """Each row's FP32 reference: a dense FP32 row on the same data, same runtime first, closest name."""
    dense = [r for r in rows if r.route == BASELINE_ROUTE]
    for row in rows:
        same_data = [b for b in dense if (b.record.get("data"), b.record.get("split"), b.record["task"]) ==
                     (row.record.get("data"), row.record.get("split"), row.record["task"])]
        if not same_data:
            continue
        row.baseline = max(same_data, key=lambda b: (b.record["runtime"] == row.record["runtime"],
                                                     len(os.path.commonprefix([b.name, row.name]))))


def build_rows(paths: list[Path], trees: list[tuple[Path, object]] | None = None) -> list[Row]:
    rows = [make_row(r) for r in load_evaluations(read_trees(paths)[0] if trees is None else trees, paths)]
    link_baselines(rows)
    order = {BASELINE_ROUTE: 0, "ptq": 1, "qat": 2, "sat": 3, "sparse-qat": 4, "prune": 5, "prune+ptq": 6}
    rows.sort(key=lambda r: (r.record.get("data") or "", order.get(r.route, 9), r.target, r.method, r.name))
    return rows


def pareto_front(rows: list[Row], key: str = "batch1") -> list[Row]:
    """Rows no other row beats on both latency (lower) and accuracy (higher)."""
    timed = [r for r in rows if r.latency(key) is not None]

    def dominated(r: Row) -> bool:
        return any(o.latency(key) <= r.latency(key) and o.main_metric >= r.main_metric and
                   (o.latency(key) < r.latency(key) or o.main_metric > r.main_metric) for o in timed)

    return sorted((r for r in timed if not dominated(r)), key=lambda r: r.latency(key))
