"""What the CPU offers integer kernels: printed beside latency figures, and OpenVINO's INT8 choice rests on it."""
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
def cpu_features() -> dict[str, bool]:
    """AVX2, AVX-512, VNNI (AVX-512 or AVX) and AMX-INT8, read from /proc/cpuinfo (all False where it cannot be
    read)."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {name: any(flag in flags for flag in names) for name, names in FEATURES.items()}


def exact_int8_dot_products() -> bool:
    """Whether 8-bit dot products can run without a 16-bit intermediate that saturates: VNNI or AMX.

    Without them (AVX2, AVX-512F), oneDNN multiplies u8 x s8 pairs into 16 bits (vpmaddubsw), which saturates
    for 8-bit weights: OpenVINO documents it ("Saturation (overflow) issue") and advises 7-bit weights.
    """
    features = cpu_features()
    return features["vnni"] or features["amx"]


def describe_features() -> str:
    features = cpu_features()
    return ", ".join(name.upper().replace("AVX512", "AVX-512") for name, present in features.items() if present) \
        or "no AVX2"
