"""Optimization, one subpackage per technique over the machinery they share:

- quantize/  route 1 and 2: PTQ (ModelOpt for TensorRT, ONNX Runtime for the CPU), the calibration search,
             quantization groups, sensitivity and the accuracy budget, the CPU layout, QAT;
- sparsity/  2:4 structured sparsity: layer selection and SparseGPT, SAT and SAT+QAT (routes 3 and 4);
- prune/     route 5: the dependency graph and what it protects, the channel plan, the pruning steps;
- train/     the one training loop that QAT, SAT and pruning fine-tune with: distillation, label losses,
             checkpoints and resume, data parallel;
- common/    what they all read: the ONNX graph index, the Q/DQ report, head probes and SQNR, layer FLOPs,
             traced output layers, the 2:4 check and held masks.

A technique imports common/ and train/ and another technique's public functions, never its private names.
The flat module paths of orinflow 0.1 (orinflow.optimize.ptq, ...) still import, for one release (legacy.py).
"""
from .legacy import install

install()
