"""The training routes: QAT, SAT (2:4), SAT+QAT and pruning, with what they share (outputs, set-up, the
side-by-side evaluation after training)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..config import workspace
from ..errors import OrinflowError
from .common import PathLike, Say, checked, locate
from .prepare import load


@checked
def qat(model: PathLike, data: PathLike, *, split: str = "train", val_data: PathLike | None = None,
        val_split: str = "val", mode: str = "int8", epochs: int = 1, lr: float = 1e-4, batch: int = 8,
        calib_images: int = 64, init_from: PathLike | None = None, allow_partial: bool = False,
        method: str | None = None, max_drop: float | None = None, select_yaml: PathLike | None = None,
        select_split: str = "val", select_images: int = 200, distill: bool = True, labels: bool | None = None,
        device: str = "cpu", max_steps: int | None = None, flip: bool = False, resume: bool = False, runs: int = 20,
        output: PathLike | None = None, arch: str | None = None, imgsz: int | None = None, mean=None, std=None,
        crop: float | None = None, modules: Sequence[PathLike] | None = None, head: str | None = None,
        names: str | None = None, say: Say = print) -> dict:
    """Route 2: quantization-aware fine-tuning (ModelOpt) on `data`/`split` from a Q/DQ start model, exported as
    Q/DQ ONNX (default workspace/qat/<model>/<model>_qat_int8.onnx) beside its FP32 reference
    `<output>_fp32_ref.onnx`.

    The start is `init_from` (route 1's best model, tensorrt target): its scales, its float groups and its Q/DQ
    placement are kept, and what does not pair with the model is refused unless `allow_partial` (then it is
    calibrated afresh). Without it, route 1 runs first, written as `<output>_start_int8.onnx`: quantize's
    `method` on `calib_images` images (default search where it costs less than the fine-tune's epochs, else
    entropy), under `max_drop` points on `select_yaml` when given.
    The start (epoch 0) and every epoch are scored on `select_yaml` (default `data`)/`select_split`,
    `select_images` drawn (0: all), and the best is written (the last epoch when there is no such labelled
    split); epochs 0 writes the start as QAT exports it.

    distill: learn from the FP32 model's raw head outputs (any family, no labels needed); labels: add the
    family's label loss (default on for classifiers, off for detectors). Returns the run record with
    "compare": the FP32 and QAT evaluation records on `val_data` (default `data`)/`val_split`.
    """
    from ..optimize.train.config import check_lr

    if mode != "int8":
        raise OrinflowError(f"--mode {mode}: QAT supports int8")
    if epochs < 0:
        raise OrinflowError("--epochs must be >= 0 (0: the start model, exported as QAT writes it)")
    check_lr(lr)
    if init_from and (method or max_drop is not None):
        raise OrinflowError("--init-from is the start model; --method and --max-drop make one: give one or the other")
    if method:
        from ..optimize.quantize.ptq import QuantizeSpec

        QuantizeSpec(method=method).validate()
    model, init_from = locate(model, say), locate(init_from, say)
    stem = Path(model).stem
    inputs = [model, data, val_data, init_from, select_yaml]
    output = _training_output(output or workspace() / "qat" / stem / f"{stem}_qat_int8.onnx", "_fp32_ref.onnx",
                              inputs, "qat", resume, ("qat",))
    start = _checked_start(init_from) if init_from else _start_output(output, inputs)
    budget = _start_budget(max_drop, select_yaml, select_split, select_images)
    adapter, train_set = _training_setup(model, data, split, epochs, batch, lr, device, arch, imgsz, mean, std, crop,
                                         modules, head, names, "QAT")
    if init_from:
        from ..optimize.quantize.qat_start import check_start_processing

        check_start_processing(start, adapter.processing)
    config = _train_config(epochs, lr, batch, calib_images, distill, labels, device, max_steps, resume, flip)
    config.run = run_identity(model, data, split, init_from)
    _ready_to_train(adapter, config, train_set)
    selection = _selection(select_yaml or data, select_split, select_images, explicit=bool(select_yaml), say=say)
    from ..optimize.quantize.qat import make_start, run_qat

    if not init_from:
        from ..optimize.train.distributed import on_main

        on_main(lambda: make_start(adapter, train_set, config, start, method, budget, say=say))
    record = run_qat(adapter, train_set, config, output, start, say=say, selection=selection,
                     allow_partial=allow_partial)
    fp32 = _reference_onnx(adapter, output, "_fp32_ref.onnx")  # after: a refused start leaves nothing behind
    return _with_comparison(record, [fp32, output], data, val_data, val_split, batch, runs, say)


def run_identity(model, data, split: str, init_from=None) -> str:
    """What a resumed run must share with the checkpoint besides its settings: the model and start files (by
    content) and the training data (by path and split)."""
    import hashlib

    digest = hashlib.sha256()
    for path in (model, init_from):
        if path is not None and Path(path).is_file():
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        digest.update(b"|")
    digest.update(f"{Path(str(data)).resolve()}:{split}".encode())
    return digest.hexdigest()[:16]


def _checked_start(init_from) -> Path:
    """--init-from's model, its form checked before any work (the pairing needs the model: run_qat)."""
    from ..optimize.quantize.qat_start import read_start

    read_start(Path(init_from))
    return Path(init_from)


def _start_output(output: Path, inputs: list) -> Path:
    """Where `qat` writes the route-1 start it makes, checked before any work."""
    from ..io import check_output

    return check_output(output.with_name(output.stem + "_start_int8.onnx"), (".onnx",), inputs, command="quantize")


def _start_budget(max_drop, select_yaml, select_split, select_images):
    """quantize's budget inputs for the start (--max-drop needs --select-yaml), or None."""
    from .quantization import budget_inputs

    return budget_inputs(max_drop, 0.10, 12, select_yaml, select_split, select_images)


def _selection(data, split: str, images: int, explicit: bool, say):
    """The labelled images that score the start and every epoch (`images` drawn, 0: all), or None when the
    training data has no such labelled split and none was given."""
    from ..data import load_dataset
    from ..optimize.quantize.sensitivity import selection_subset

    if images < 0:
        raise OrinflowError(f"--select-images must be >= 0, got {images}")
    try:
        return selection_subset(load_dataset(data, split), images, 0)
    except OrinflowError as e:
        if explicit:
            raise
        say(f"no selection data ({e}); the last epoch is written: give --select-yaml to keep the best")
        return None


@checked
def sparsify(model: PathLike, data: PathLike, *, split: str = "train", val_data: PathLike | None = None,
             val_split: str = "val", method: str = "magnitude", sparse_flops: float | None = None, epochs: int = 1,
             lr: float = 1e-4, batch: int = 8, calib_images: int = 64, distill: bool = True,
             labels: bool | None = None, device: str = "cpu", max_steps: int | None = None, flip: bool = False,
             resume: bool = False,
             output: PathLike | None = None, arch: str | None = None, imgsz: int | None = None, mean=None,
             std=None, crop: float | None = None, modules: Sequence[PathLike] | None = None, head: str | None = None,
             names: str | None = None,
             say: Say = print) -> dict:
    """Route 3: 2:4 sparsity (method magnitude or sparsegpt) and `epochs` of sparsity-aware fine-tuning (0: masks
    only), written as a sparse FP32 ONNX (default workspace/sat/<model>/<model>_sparse24.onnx) for `ptq`, and
    beside it as an ordinary checkpoint of the model's family (BatchNorm folded): <model>_sparse.pt by default,
    <output>_sparse.pt with `output`.

    sparse_flops: the share of conv FLOPs to make 2:4, the layers chosen by the accuracy they cost per FLOP on
    the training images (docs/sparsity.md); default every eligible layer.
    Returns the run record with "compare": the dense and sparse evaluation records (no latency)."""
    from ..io import check_output

    model = locate(model, say)
    stem = Path(model).stem
    checkpoint_name = f"{Path(output).stem}_sparse.pt" if output else f"{stem}_sparse.pt"  # default: the original's
    output = _training_output(output or workspace() / "sat" / stem / f"{stem}_sparse24.onnx", "_dense_ref.onnx",
                              [model, data, val_data], "sparsify", resume, ("sat",))
    sparse_checkpoint = output.with_name(checkpoint_name)
    check_output(sparse_checkpoint, (".pt",), [model, data, val_data], command="sparsify")
    adapter, train_set = _training_setup(model, data, split, epochs, batch, lr, device, arch, imgsz, mean, std, crop,
                                         modules, head, names, "sparsify")
    config = _train_config(epochs, lr, batch, calib_images, distill, labels, device, max_steps, resume, flip)
    _ready_to_train(adapter, config, train_set, method, sparse_flops)
    from ..optimize.sparsity.sat import run_sat

    dense = _reference_onnx(adapter, output, "_dense_ref.onnx")
    record = run_sat(adapter, train_set, method, config, output, say=say, sparse_checkpoint=sparse_checkpoint,
                     sparse_flops=sparse_flops)
    return _with_comparison(record, [dense, output], data, val_data, val_split, batch, 0, say)


@checked
def sparse_qat(model: PathLike, data: PathLike, *, split: str = "train", val_data: PathLike | None = None,
               val_split: str = "val", method: str = "magnitude", sparse_flops: float | None = None,
               sat_epochs: int = 1, qat_epochs: int = 1,
               qat_mode: str = "int8",
               lr: float = 1e-4, qat_lr: float | None = None, batch: int = 8, calib_images: int = 64,
               init_from: PathLike | None = None, allow_partial: bool = False, select_yaml: PathLike | None = None,
               select_split: str = "val", select_images: int = 200,
               distill: bool = True, labels: bool | None = None, device: str = "cpu", max_steps: int | None = None,
               flip: bool = False, resume: bool = False, runs: int = 20, output: PathLike | None = None,
               arch: str | None = None, imgsz: int | None = None, mean=None, std=None, crop: float | None = None,
               modules: Sequence[PathLike] | None = None, head: str | None = None,
               names: str | None = None, say: Say = print) -> dict:
    """Route 4: SAT, then QAT with the 2:4 masks held, exported as Q/DQ + 2:4 ONNX (default
    workspace/sparse_qat/<model>/<model>_sparse24_qat_int8.onnx). qat_lr defaults to `lr`.
    qat_mode: the QAT stage's quantization (int8, the original design's --qat-mode).
    init_from, allow_partial, select_yaml, select_split, select_images: QAT's start and selection, as in `qat`
    (the weights stay SAT's; without init_from the start is route 1 on the sparse model, search calibration,
    written as `<output>_start_int8.onnx`). sparse_flops: as in `sparsify`. Returns the run record with "compare": the FP32 and sparse INT8 evaluation
    records."""
    if qat_mode != "int8":
        raise OrinflowError(f"--qat-mode {qat_mode}: QAT supports int8")
    if qat_epochs < 1:
        raise OrinflowError("--qat-epochs must be >= 1")
    if qat_lr is not None and qat_lr <= 0:
        raise OrinflowError("--qat-lr must be > 0")
    model, init_from = locate(model, say), locate(init_from, say)
    stem = Path(model).stem
    inputs = [model, data, val_data, init_from, select_yaml]
    output = _training_output(output or workspace() / "sparse_qat" / stem / f"{stem}_sparse24_qat_int8.onnx",
                              "_fp32_ref.onnx", inputs, "sparse-qat", resume, ("sat", "qat"))
    if init_from:
        _checked_start(init_from)
    else:
        _start_output(output, inputs)
    adapter, train_set = _training_setup(model, data, split, sat_epochs, batch, lr, device, arch, imgsz, mean, std,
                                         crop, modules, head, names, "sparse-qat")
    sat_config = _train_config(sat_epochs, lr, batch, calib_images, distill, labels, device, max_steps, resume, flip)
    qat_config = _train_config(qat_epochs, qat_lr or lr, batch, calib_images, distill, labels, device, max_steps,
                               resume, flip)
    _ready_to_train(adapter, sat_config, train_set, method, sparse_flops)
    selection = _selection(select_yaml or data, select_split, select_images, explicit=bool(select_yaml), say=say)
    from ..optimize.sparsity.sat import run_sparse_qat

    record = run_sparse_qat(adapter, train_set, method, sat_config, qat_config, output, say=say,
                            sparse_flops=sparse_flops, init_from=init_from, allow_partial=allow_partial,
                            selection=selection)
    fp32 = _reference_onnx(adapter, output, "_fp32_ref.onnx")
    return _with_comparison(record, [fp32, output], data, val_data, val_split, batch, runs, say)


DEFAULT_PRUNE_FLOPS = 0.7  # without --ratio: keep 70% of the conv/linear FLOPs


@checked
def prune(model: PathLike, data: PathLike | None = None, *, split: str = "train", flops: float | None = None,
          ratio: float | None = None, importance: str = "l1", round_to: int = 32, steps: int = 1,
          min_share: float = 0.25, reconstruct: bool = True, plan: str = "measured", epochs: int = 1,
          lr: float = 1e-4, batch: int = 8, distill: bool = True, labels: bool | None = None,
          max_drop: float | None = None, select_yaml: PathLike | None = None,
          select_split: str = "val", select_images: int = 200, device: str = "cpu", max_steps: int | None = None,
          dry_run: bool = False, runs: int = 20, flip: bool = False, mixup: bool = False, schedule: str = "constant",
          seed: int = 0, output: PathLike | None = None,
          arch: str | None = None, imgsz: int | None = None, mean=None, std=None, crop: float | None = None,
          modules: Sequence[PathLike] | None = None, head: str | None = None, names: str | None = None,
          say: Say = print) -> dict:
    """Route 5: dependency-aware channel pruning (torch-pruning's DependencyGraph) to `flops` of the original
    conv/linear FLOPs (default 0.7), or `ratio` of every prunable layer's channels (not both), in `steps` steps,
    each followed by `epochs` of fine-tuning on `data`/`split` (distillation from the unpruned model, a detector's
    score term also averaged over the teacher's confident anchors (QATConfig.foreground), and/or the family's label
    loss; epochs 0 prunes only). Channel counts are rounded to `round_to` and every layer keeps `min_share`.
    reconstruct: after each step, refit every layer that lost input channels by least squares to its output
    before the step, on 64 images of `data` (optimize/prune/reconstruct.py); off, or without data, BatchNorm
    statistics are re-estimated instead. plan: how the FLOPs to cut are shared among the coupled channel groups
    (with `flops`): measured cuts first the groups whose cuts add the least distillation loss against the
    unpruned model per FLOP, each measured alone on 8 images of `data` (without data, or for an end-to-end
    head: even); even takes the same share from every group, as the rounding allows (docs/prune.md).

    max_drop: score the model on `select_yaml`/`select_split` (default `data`, `select_images` drawn) after every
    step and undo the step that loses more than this (absolute mAP50-95 or top-1). dry_run: per-layer channels,
    params and FLOPs before and after, nothing written. Writes an ordinary checkpoint of the model's family
    (default workspace/prune/<model>/<model>_pruned.pt) and its record; `runs` > 0 times both models as ONNX
    on ONNX Runtime, side by side. flip: mirror a random half of each fine-tuning batch. mixup: blend each image
    with another of its batch. schedule: the learning rate, constant or cosine. seed: the fine-tuning's image
    order and augmentation draws. Returns the record.
    """
    from ..data import draw_images, load_dataset
    from ..io import check_output, write_record
    from ..models import ModelAdapter
    from ..optimize.prune.steps import PruneConfig, run_prune
    from ..optimize.train.config import check_schedule

    check_schedule(schedule)  # checked with --epochs 0 too: a typo is not silently ignored
    if flops is not None and ratio is not None:
        raise OrinflowError(f"--flops {flops} and --ratio {ratio} are two targets: give one")
    config = PruneConfig(flops=None if ratio is not None else (DEFAULT_PRUNE_FLOPS if flops is None else flops),
                         ratio=ratio, importance=importance,
                         round_to=round_to, steps=steps, min_share=min_share, reconstruct=reconstruct,
                         plan=plan)
    config.validate()
    if max_drop is not None and max_drop < 0:
        raise OrinflowError("--max-drop must be >= 0")
    if epochs and not data:
        raise OrinflowError("fine-tuning needs data: give --yaml data.yaml, or --epochs 0 to prune only")
    model = locate(model, say)
    stem = Path(model).stem if model else str(arch or "model").rpartition(":")[2]
    output = Path(output or workspace() / "prune" / stem / f"{stem}_pruned.pt")
    if not dry_run:
        check_output(output, (".pt", ".pth"), [model, data, select_yaml], command="prune")
    adapter = load(model, arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules, head=head,
                   names=names, fuse=False)
    if not isinstance(adapter, ModelAdapter):
        raise OrinflowError(f"{model} is ONNX: pruning needs the PyTorch model")
    dataset = load_dataset(data, split) if data else None
    train_config = None
    if epochs and not dry_run:
        train_config = _train_config(epochs, lr, batch, 1, distill, labels, device, max_steps, False, flip, seed,
                                     mixup, schedule, foreground=True)
        _ready_to_train(adapter, train_config, dataset)
    selection = None
    if max_drop is not None and not dry_run:
        if not (select_yaml or data):
            raise OrinflowError("--max-drop scores each step: give --select-yaml (or --yaml)")
        selection = draw_images(load_dataset(select_yaml or data, select_split), select_images, 0)
    record = run_prune(adapter, config, output, dataset, train_config, selection, max_drop, dry_run, say)
    if dry_run:
        return record
    if train_config is not None:  # how it was fine-tuned, so the figure can be reproduced
        from dataclasses import asdict

        record["training"] = {**asdict(train_config), "device": str(train_config.device)}
    if runs:
        from ..optimize.prune.side_by_side import onnx_side_by_side

        loading = dict(arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules, head=head, names=names)
        record["onnx"] = onnx_side_by_side(load(model, **loading), load(output, **loading), runs)
    write_record(output, record)
    return record


def _training_output(output: PathLike, reference_suffix: str, inputs: list, command: str, resume: bool,
                     stages: tuple[str, ...]) -> Path:
    """The trained model's path and its FP32 reference's, checked before any work; --resume needs a checkpoint."""
    from ..io import check_output
    from ..optimize.train.loop import checkpoint_path

    output = Path(output)
    check_output(output, (".onnx",), inputs, command=command)
    check_output(output.with_name(output.stem + reference_suffix), (".onnx",), inputs, command="export")
    if resume and not any(checkpoint_path(output, stage).exists() for stage in stages):
        raise OrinflowError(f"--resume: no checkpoint at {checkpoint_path(output, stages[-1])} (it is written after "
                            "each epoch)")
    return output


def _training_setup(model, data, split, epochs, batch, lr, device, arch, imgsz, mean, std, crop, modules, head, names,
                    what: str):
    """Checks shared by the training routes; returns the PyTorch adapter and the training set."""
    from ..data import load_dataset
    from ..models import ModelAdapter
    from ..optimize.train.distributed import check_device

    from ..optimize.train.config import check_lr

    if not data:
        raise OrinflowError("give the training data with --yaml data.yaml (or --data folder/)")
    check_lr(lr)
    if epochs < 0 or batch < 1:
        raise OrinflowError("epochs must be >= 0 and --batch >= 1")
    check_device(device)
    adapter = load(model, arch=arch, imgsz=imgsz, mean=mean, std=std, crop=crop, modules=modules, head=head,
                   names=names)
    if not isinstance(adapter, ModelAdapter):
        raise OrinflowError(f"{model} is ONNX: {what} needs the PyTorch model")
    return adapter, load_dataset(data, split)


def _train_config(epochs, lr, batch, calib_images, distill, labels, device, max_steps, resume, flip, seed=0,
                  mixup=False, schedule="constant", foreground=False):
    """The training settings; under torchrun this also joins the process group and picks the rank's device."""
    from ..optimize.train import distributed
    from ..optimize.train.config import QATConfig

    config = QATConfig(epochs=epochs, lr=lr, batch=batch, calib_images=calib_images, distill=distill, labels=labels,
                       device=device, max_steps=max_steps, resume=resume, flip=flip, seed=seed, mixup=mixup,
                       schedule=schedule, foreground=foreground)
    config.validate()
    config.device = distributed.setup(device)
    return config


def _ready_to_train(adapter, config, train_set, method: str | None = None, sparse_flops: float | None = None) -> None:
    """What the training functions would refuse, refused before the FP32 reference is written."""
    from ..optimize.train.loop import check_trainable
    from ..optimize.sparsity.sat import check_method

    check_trainable(adapter, config, train_set)
    if method is not None:
        check_method(method, sparse_flops)


def _reference_onnx(adapter, output: Path, suffix: str) -> Path | None:
    """The FP32 ONNX that the trained model is compared with (rank 0 only under torchrun)."""
    from ..export import export_onnx
    from ..optimize.train.distributed import is_main

    return export_onnx(adapter, output.with_name(output.stem + suffix)).path if is_main() else None


def _with_comparison(record: dict, models: list, data, val_data, val_split, batch: int, runs: int, say) -> dict:
    """The training record plus "compare": reference and trained model evaluated side by side (rank 0 only)."""
    from ..data import load_dataset
    from ..evaluate import EvalOptions, evaluate_model

    if "rank" in record:  # torchrun ranks other than 0 train but neither export nor evaluate
        return record
    options = EvalOptions(latency_runs=runs, measure_latency=runs > 0, batch=max(1, batch))
    evaluation = load_dataset(val_data or data, val_split)
    compared = []
    for path in models:
        say(f"evaluating {path} ...")
        compared.append(evaluate_model(load(path), evaluation, val_split, options))
    return dict(record, compare=compared)
