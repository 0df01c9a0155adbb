"""`orinflow compare A B`: where two forms of a model part, layer by layer and detection by detection.

Layers: tensors are paired by name. ONNX files keep the names of the graph they were quantized or
made end-to-end from (a Q/DQ node's float tensor is the same name as in the FP32 graph), and
`torch.onnx.export` names each node after the module that made it (`/model.2/cv1/conv/Conv`), so a
PyTorch Conv2d/Linear pairs with its ONNX node. Statistics are accumulated over all images, image by
image (no tensor of all images is ever held): cosine similarity, SQNR (dB) and max |A - B|. A layer's
"growth" is the SQNR lost between its closest paired inputs and its output: where error is born.

Detections: the raw head outputs before NMS, then the final detections, matched image by image
(same class, IoU >= 0.9). Every detection of one model without a match in the other gets a cause.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from ..errors import OrinflowError
from ..optimize.common.graph import onnx_scope
from ..models.processing import NMS_INSIDE, Detections, ImageMeta, Processing
from ..runtime.trust import probe_count
from .instances import attribute, keypoint_summary, new_tally
from .probing import evaluated_runner, probing_effect

SQNR_CAP = 100.0  # dB: identical tensors
EVAL_CONF = 0.001  # the evaluator's threshold, for the mAP of both on the compared images
COMPARE_RUNTIMES = ("auto", "onnxruntime", "openvino")
PAIRED_MODULES = {"Conv2d": ("Conv",), "Linear": ("Gemm", "MatMul"), "ConvTranspose2d": ("ConvTranspose",)}


@dataclass
class TensorStats:
    """Running comparison of one tensor over images."""

    dot: float = 0.0
    norm_a: float = 0.0
    norm_b: float = 0.0
    noise: float = 0.0
    max_abs: float = 0.0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
        self.dot += float(a @ b)
        self.norm_a += float(a @ a)
        self.norm_b += float(b @ b)
        self.noise += float(((a - b) ** 2).sum())
        self.max_abs = max(self.max_abs, float(np.abs(a - b).max(initial=0.0)))

    def cosine(self) -> float:
        return 1.0 if self.norm_a == self.norm_b == 0 else self.dot / math.sqrt(max(self.norm_a * self.norm_b, 1e-300))

    def sqnr_db(self) -> float:
        if self.noise <= self.norm_a * 10 ** (-SQNR_CAP / 10):
            return SQNR_CAP
        return float(10 * math.log10(max(self.norm_a, 1e-300) / self.noise))


@dataclass
class Side:
    """One of the two models: how to run it and read its tensors."""

    label: str
    kind: str  # torch, onnx, engine
    processing: Processing | None
    model: object
    runtime: str = "auto"  # an ONNX side: onnxruntime (auto) or openvino
    int8_kernels: str = "auto"  # how that runtime runs a Q/DQ graph (runtime/trust.py)
    form: str | None = None  # the form evaluate runs it in, once settled (evaluate/probing.py)
    nms: dict | None = None  # an end-to-end graph's NMS settings (export/nms.py)
    layers: dict[str, dict] = field(default_factory=dict)  # tensor name -> {"op", "depth", "inputs"}


# ---------------------------------------------------------------- loading
def load_side(path: str | Path, label: str, load_checkpoint: Callable[[Path], object], runtime: str = "auto",
              int8_kernels: str = "auto") -> Side:
    """One side of a comparison: an engine, an ONNX graph, or a PyTorch model that `load_checkpoint` loads
    (the API's own loader, with the user's options). `runtime`: auto, or the one an ONNX side runs on
    (onnxruntime, openvino); `int8_kernels`: how it runs a Q/DQ graph."""
    from ..runtime import check_runtime
    from ..runtime.tensorrt import ENGINE_SUFFIXES

    path = Path(path)
    if runtime not in COMPARE_RUNTIMES:
        raise OrinflowError(f"unknown --runtime-{label.lower()} {runtime!r}; compare runs an ONNX side on "
                            f"{', '.join(COMPARE_RUNTIMES)}")
    check_runtime([path], runtime)
    if runtime == "openvino" and path.suffix.lower() != ".onnx":
        raise OrinflowError(f"compare runs {path.name} on its own runtime or an ONNX on onnxruntime or openvino, "
                            f"not on {runtime}")
    if path.suffix.lower() in ENGINE_SUFFIXES:
        from ..runtime.tensorrt import TrtRunner

        return Side(label, "engine", None, TrtRunner(path))
    if path.suffix.lower() == ".onnx":
        graph = onnx.load(str(path), load_external_data=False)
        from ..export.nms import read_spec
        from ..models.onnx_model import read_processing

        spec = read_spec(graph)
        side = Side(label, "onnx", read_processing(graph), path, nms=None if spec is None else vars(spec),
                    runtime=runtime, int8_kernels=int8_kernels)
        side.layers = onnx_layers(graph)
        if runtime == "openvino":  # only the tensors OpenVINO keeps by name can be asked for
            from ..runtime.openvino import tensor_names

            kept = tensor_names(path)
            side.layers = {name: info for name, info in side.layers.items() if name in kept}
        return side
    adapter = load_checkpoint(path)
    if not hasattr(adapter, "module"):
        raise OrinflowError(f"{path}: not a model compare can run")
    side = Side(label, "torch", adapter.processing, adapter)
    side.layers = torch_layers(adapter)
    return side


def onnx_layers(graph: onnx.ModelProto) -> dict[str, dict]:
    """Float tensors made by the graph's nodes (not Q/DQ, not the NMS part), in graph order."""
    from ..export.nms import PREFIX
    from ..optimize.common.graph import QDQ_OPS

    source = {}  # a Q/DQ pair's output -> the float tensor it quantizes (so inputs reach through Q/DQ)
    for node in graph.graph.node:
        if node.op_type in QDQ_OPS:
            source[node.output[0]] = source.get(node.input[0], node.input[0])
    layers = {}
    for depth, node in enumerate(graph.graph.node):
        if node.op_type in QDQ_OPS | {"Constant"} or node.name.startswith(PREFIX):
            continue
        layers[node.output[0]] = {"op": node.op_type, "node": node.name, "depth": depth,
                                  "inputs": [source.get(i, i) for i in node.input]}
    return layers


def torch_layers(adapter) -> dict[str, dict]:
    """Conv/Linear modules by the ONNX scope name their node gets ('/module/model.0/conv/Conv')."""
    module = adapter.export_module()
    layers = {}
    for depth, (name, child) in enumerate(module.named_modules()):
        ops = PAIRED_MODULES.get(type(child).__name__)
        if ops and name:
            layers[name] = {"op": ops[0], "ops": ops, "depth": depth, "inputs": [], "module": child}
    return layers


def pair_layers(a: Side, b: Side) -> list[tuple[str, str]]:
    """(A's key, B's key) of every tensor both can report, in A's order."""
    if "engine" in (a.kind, b.kind):
        return []
    if a.kind == b.kind == "onnx":
        return [(name, name) for name in a.layers if name in b.layers]
    torch_side, onnx_side = (a, b) if a.kind == "torch" else (b, a)
    if onnx_side.kind != "onnx":
        return []
    by_scope = {}
    for name, info in onnx_side.layers.items():
        by_scope.setdefault((onnx_scope(info["node"]), info["op"]), name)
    pairs = []
    for module_name, info in torch_side.layers.items():
        found = next((by_scope[(module_name, op)] for op in info["ops"] if (module_name, op) in by_scope), None)
        if found is not None:
            pairs.append((module_name, found) if torch_side is a else (found, module_name))
    return pairs


# ---------------------------------------------------------------- running
class Capture:
    """Runs one side on one image and returns (final outputs, {tensor key: array})."""

    def __init__(self, side: Side, keys: list[str], folder: Path):
        self.side, self.keys = side, keys
        if side.kind == "onnx" and side.runtime == "openvino":
            from ..runtime.openvino import OpenVinoRunner

            self._openvino = OpenVinoRunner(side.model, extra_outputs=keys, form=side.form or "as written")
            self._final, self._names = self._openvino.final, self._openvino.output_names
        elif side.kind == "onnx":
            self._session, self._final = _session_with_outputs(side.model, keys, folder / f"{side.label}.onnx")
            self._names = [o.name for o in self._session.get_outputs()]
        elif side.kind == "torch":
            from ..runtime import TorchRunner

            self._runner = TorchRunner(side.model)
            self._hooks, self._seen = [], {}
            for key in keys:
                self._hooks.append(side.layers[key]["module"].register_forward_hook(self._hook(key)))

    def _hook(self, key):
        def keep(module, inputs, output):
            self._seen[key] = output.detach().numpy().copy()  # an in-place activation follows some layers
        return keep

    def run(self, x: np.ndarray) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        if self.side.kind == "engine":
            return self.side.model.run(x), {}
        if self.side.kind == "torch":
            self._seen = {}
            return self._runner.run(x), dict(self._seen)
        if self.side.runtime == "openvino":
            values = self._openvino.run(x)
        else:
            values = self._session.run(None, {self._session.get_inputs()[0].name: x})
        return values[:self._final], {n: v for n, v in zip(self._names, values) if n in self.keys}


def _session_with_outputs(path: Path, names: list[str], copy: Path):
    """ONNX Runtime on a private copy of `path` whose graph also returns `names`; and its own output count."""
    import onnxruntime as ort

    graph = onnx.load(str(path))
    existing = {o.name for o in graph.graph.output}
    final = len(existing)
    for name in names:
        if name not in existing:
            graph.graph.output.append(onnx.ValueInfoProto(name=name))
    onnx.save(graph, str(copy))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every named tensor
    try:
        return ort.InferenceSession(str(copy), options, providers=["CPUExecutionProvider"]), final
    except Exception as e:
        raise OrinflowError(f"ONNX Runtime cannot run {path}: {str(e).strip().splitlines()[0][:200]}") from e


def growth(pairs: list[tuple[str, str]], stats: dict[str, TensorStats], layers: dict[str, dict]) -> dict[str, float]:
    """Noise added at each paired tensor: its noise-to-signal power ratio minus the worst of its closest paired
    inputs' (graph inputs and weights count as exact). A linear ratio, so a layer that turns 1% noise into 5%
    outranks the first layer's 0.01%, which dB differences from an exact input would not.

    ONNX: walked in graph order through unpaired tensors. PyTorch modules carry no graph: the previous paired
    layer in order stands for the input.
    """
    nsr = {key: 10 ** (-stats[key].sqnr_db() / 10) for key, _ in pairs}
    if all(not info["inputs"] for info in layers.values()):
        previous, result = 0.0, {}
        for key, _ in pairs:
            result[key], previous = nsr[key] - previous, nsr[key]
        return result
    reaching: dict[str, float] = {}  # tensor -> NSR of the closest paired tensors upstream (itself if paired)
    result = {}
    for name, info in layers.items():  # graph order
        before = max((reaching.get(i, 0.0) for i in info["inputs"] if i), default=0.0)
        if name in nsr:
            result[name] = nsr[name] - before
        reaching[name] = nsr.get(name, before)
    return result


# ---------------------------------------------------------------- the comparison
def compare_models(a: Side, b: Side, dataset, conf: float = 0.25, say=print) -> dict:
    """Layers and detections of `a` against `b` on every image of `dataset` (already drawn)."""
    from ..data import read_image
    from ..io import private_folder
    from ..progress import progress
    from . import runtime_notes

    processing = _shared_processing(a, b)
    pairs = pair_layers(a, b)
    stats = {key: TensorStats() for key, _ in pairs}
    head_stats = TensorStats()
    room = processing.room
    tally = new_tally(room)
    examples: list[dict] = []
    final = {"a": [], "b": []}
    with private_folder() as folder:
        count = probe_count(processing.imgsz)
        probe = np.stack([processing.preprocess(read_image(Path(p)))[0] for p in dataset.images[:count]])
        evaluated = {side.label: evaluated_runner(side, probe) for side in (a, b) if side.kind == "onnx"}
        for side in (a, b):
            side.form = evaluated[side.label].form if side.label in evaluated else None
        captures = [Capture(side, [k[i] for k in pairs] + _raw_key(side, [k[i] for k in pairs]), folder)
                    for i, side in enumerate((a, b))]
        probing = [found for side, capture in zip((a, b), captures) if side.label in evaluated
                   for found in [probing_effect(side, evaluated[side.label], capture, probe, folder, say)] if found]
        for index, path in enumerate(progress(dataset.images, "compare")):
            x, meta = processing.preprocess(read_image(Path(path)))
            (outs_a, tensors_a), (outs_b, tensors_b) = (c.run(x[None].astype(np.float32)) for c in captures)
            for key_a, key_b in pairs:
                if key_a in tensors_a and key_b in tensors_b and tensors_a[key_a].shape == tensors_b[key_b].shape:
                    stats[key_a].add(tensors_a[key_a], tensors_b[key_b])
            raws = [_raw_head(side, outs, tensors) for side, outs, tensors in ((a, outs_a, tensors_a),
                                                                               (b, outs_b, tensors_b))]
            if raws[0] is not None and raws[1] is not None and raws[0].shape == raws[1].shape:
                head_stats.add(raws[0], raws[1])
            if processing.room.instances:  # evaluation threshold for the mAP, `conf` for the matching
                dets = [_detections(side, outs, meta, EVAL_CONF) for side, outs in ((a, outs_a), (b, outs_b))]
                final["a"].append(None if dets[0] is None else (index, meta, dets[0]))
                final["b"].append(None if dets[1] is None else (index, meta, dets[1]))
                attribute(index, path, dets, raws, (a, b), meta, conf, tally, examples, room)
    if "keypoints" in tally:
        tally["keypoints"] = keypoint_summary(tally["keypoints"])
    layer_rows = _layer_rows(pairs, stats, a)
    return {"layers": layer_rows, "paired_layers": len(layer_rows), "head_output": _row(head_stats),
            "detections": tally if processing.room.instances else None, "examples": examples[:50],
            "final": final, "probing": probing, "room": room,
            "int8_kernels": {label: runner.describe() for label, runner in evaluated.items()},
            "runtime_notes": [f"{label}: {note}" for label, runner in evaluated.items() for note in runtime_notes(runner)]}


def _shared_processing(a: Side, b: Side) -> Processing:
    """The preprocessing both are fed with; models that disagree on input or classes are refused."""
    known = [s for s in (a, b) if s.processing is not None]
    if not known:
        raise OrinflowError("neither model carries orinflow metadata: compare needs one that does (adopt or export "
                            "it), to know how to feed images")
    if len(known) == 2:
        pa, pb = a.processing, b.processing
        if pa.imgsz != pb.imgsz:
            raise OrinflowError(f"the models take different inputs ({pa.imgsz[0]}x{pa.imgsz[1]} and "
                                f"{pb.imgsz[0]}x{pb.imgsz[1]}): compare the same model in two forms")
        if pa.task != pb.task or (pa.names and pb.names and len(pa.names) != len(pb.names)):
            raise OrinflowError(f"the models predict different things ({pa.task}, {len(pa.names)} classes and "
                                f"{pb.task}, {len(pb.names)} classes): compare the same model in two forms")
    return known[0].processing


def _raw_key(side: Side, keys: list[str]) -> list[str]:
    """An end-to-end graph's raw head output, captured from inside it."""
    return [side.nms["raw_output"]] if side.nms and side.nms["raw_output"] not in keys else []


def _raw_head(side: Side, outputs: list, tensors: dict) -> np.ndarray | None:
    """The raw head output before NMS (an end-to-end graph's from inside it), or None."""
    if side.nms is not None:
        return tensors.get(side.nms["raw_output"])
    if side.processing is not None and side.processing.head in NMS_INSIDE:
        return None
    return np.asarray(outputs[0])


def _detections(side: Side, outputs: list, meta: ImageMeta, conf: float) -> Detections | None:
    if side.processing is None:
        return None
    return side.processing.read(outputs, [meta], conf=conf)[0]


def _row(stats: TensorStats) -> dict:
    return {"cosine": stats.cosine(), "sqnr_db": stats.sqnr_db(), "max_abs": stats.max_abs}


def _layer_rows(pairs, stats, a: Side) -> list[dict]:
    measured = [(ka, kb) for ka, kb in pairs if stats[ka].norm_a or stats[ka].norm_b]
    grown = growth(measured, stats, a.layers)
    return [{"tensor": ka, "other": kb, "op": a.layers[ka]["op"], "depth": a.layers[ka]["depth"],
             **_row(stats[ka]), "growth": grown[ka]} for ka, kb in measured]
