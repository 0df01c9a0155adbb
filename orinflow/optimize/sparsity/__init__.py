"""2:4 structured sparsity: which layers go 2:4 and with which weights (select.py: magnitude or SparseGPT,
--sparse-flops), then SAT fine-tuning and SAT+QAT (sat.py; routes 3 and 4). The 2:4 check of an ONNX graph
and the masks held through training are shared (optimize/common/)."""
from ...lazy import exports

PUBLIC = {
    "run_sat": "sat", "run_sparse_qat": "sat", "check_method": "sat",
    "select_24": "select", "magnitude_24": "select", "sparsegpt_24": "select", "eligible_layers": "select",
}
__all__ = list(PUBLIC)
__getattr__, __dir__ = exports(__name__, PUBLIC)
