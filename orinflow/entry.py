"""Console-script entry points. Ctrl-C handling goes in before anything heavy is imported.

On SIGINT (Ctrl-C) or SIGTERM at any moment, the command removes the temporary files and folders
it has not finished (outputs are only ever renamed into place whole), writes one line and exits 130.
It exits at once instead of raising KeyboardInterrupt: an exception raised while a library's native
code (ModelOpt, ONNX Runtime, torch) is loading can end in a C++ terminate and pages of traceback.
"""
from __future__ import annotations

import os
import signal
import sys

# The terminal's stderr, kept apart: libraries' output is silenced at times by redirecting it.
_STDERR = os.dup(2)


def interrupted(signum=None, frame=None) -> None:
    io = sys.modules.get("orinflow.io")  # nothing can be unfinished before it is imported
    if io is not None:
        io.remove_unfinished()
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001 - the interrupt may land inside a write
        pass
    os.write(_STDERR, b"interrupted\n")
    os._exit(130)


def install() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupted)


def _script(name: str):
    def run() -> None:
        install()
        from . import cli

        getattr(cli, name)()
    return run


main = _script("main")
export_alias = _script("export_alias")
calibrate_alias = _script("calibrate_alias")
evaluate_alias = _script("evaluate_alias")
quantize_alias = _script("quantize_alias")
qat_alias = _script("qat_alias")
sparsify_alias = _script("sparsify_alias")
sparse_qat_alias = _script("sparse_qat_alias")
