"""What the CPU is and offers integer kernels: printed beside latency figures, and part of the key under which
an integer path's measured verdict is cached (runtime/trust.py). The flags no longer decide which path runs."""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

# /proc/cpuinfo flags -> the names printed
FEATURES = {"avx2": ("avx2",), "avx512": ("avx512f",), "vnni": ("avx512_vnni", "avx_vnni", "avx_vnni_int8"),
            "amx": ("amx_int8",)}


def default_threads() -> int:
    """All the cores this process may run on."""
    return max(1, len(os.sched_getaffinity(0)))


@lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where it cannot be read)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags() -> frozenset[str]:
    """The CPU's flags (empty where /proc/cpuinfo cannot be read)."""
    return frozenset(_cpuinfo().get("flags", "").split())


def cpu_model() -> str:
    """The CPU model, printed beside every latency figure (INT8 speed-ups depend on it)."""
    import platform

    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_features() -> dict[str, bool]:
    """AVX2, AVX-512, VNNI (AVX-512 or AVX) and AMX-INT8 (all False where /proc/cpuinfo cannot be read)."""
    flags = cpu_flags()
    return {name: any(flag in flags for flag in names) for name, names in FEATURES.items()}


def describe_features() -> str:
    """'AVX2, AVX-512, VNNI', and the instruction-set cap oneDNN (OpenVINO) runs under when one is set."""
    features = cpu_features()
    found = ", ".join(name.upper().replace("AVX512", "AVX-512") for name, present in features.items() if present)
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return (found or "no AVX2") + (f"; OpenVINO capped at {cap} (ONEDNN_MAX_CPU_ISA)" if cap else "")
