"""The ``cpu`` profile: this host, detected when first asked for.

Cores, clock, ISA flags and memory come from the OS (``/proc/cpuinfo``, ``/proc/meminfo``, cpufreq);
the highest ONNX opset from ONNX Runtime's registered CPU kernels; memory bandwidth is measured
with a short copy (about 50 ms). Peak FLOPS are an estimate from the vector width, stated as such.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

__all__ = ["detect_host", "cpu_flags"]


def _cpuinfo() -> dict[str, str]:
    """The first processor block of /proc/cpuinfo as a dict (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


def cpu_flags() -> set[str]:
    info = _cpuinfo()
    return set((info.get("flags") or info.get("Features") or "").split())


def _clock_ghz(info: dict[str, str]) -> float:
    try:  # the maximum clock where cpufreq exposes it, else the current one
        return int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e6
    except (OSError, ValueError):
        pass
    try:
        return float(info["cpu MHz"]) / 1e3
    except (KeyError, ValueError):
        return 2.0  # no clock exposed (some ARM boards): a typical value, flagged in the source field


def _memory_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except (OSError, ValueError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3


def _measure_bandwidth_gbs(mbytes: int = 64, repeats: int = 5) -> float:
    """Best-of-N copy bandwidth (read + write bytes per second) of an array too big for caches."""
    import numpy as np

    src = np.ones(mbytes * 2**20 // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return round(2 * src.nbytes / best / 1e9, 1)


def _max_ort_opset() -> int:
    """The highest ONNX opset ONNX Runtime's CPU kernels are registered for (capped by the onnx package)."""
    import onnx

    try:
        from onnxruntime.capi import _pybind_state as ort_c

        ort_max = max(k.version_range[0] for k in ort_c.get_all_opkernel_def()
                      if k.domain in ("", "ai.onnx") and k.provider == "CPUExecutionProvider")
    except Exception:  # an onnxruntime build without the kernel registry: stay on a widely supported opset
        ort_max = 17
    return int(min(ort_max, onnx.defs.onnx_opset_version()))


def detect_host() -> dict[str, Any]:
    """The host as a profile dict (validated by the registry like any profile file)."""
    info = _cpuinfo()
    flags = cpu_flags()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ghz = _clock_ghz(info)
    vendor = info.get("vendor_id", "")
    # fp32 lanes per FMA: AVX-512 (Intel executes 512-bit FMAs natively; AMD Zen 4 splits them in two),
    # AVX2+FMA, else 128-bit SIMD. Two FMA units per core, 2 FLOPs per FMA.
    if "avx512f" in flags and vendor == "GenuineIntel":
        lanes = 16
    elif "avx2" in flags or "avx512f" in flags:
        lanes = 8
    else:
        lanes = 4
    fp32 = cores * ghz * 1e9 * lanes * 2 * 2 / 1e12
    vnni = bool(flags & {"avx512_vnni", "avx_vnni", "avx512vnni"})
    int8 = fp32 * (4 if vnni else 2)  # VNNI: 4 int8 MACs per fp32 lane; without it pmaddubsw gives about 2x
    fp16 = fp32 * 2 if "avx512_fp16" in flags else None
    isa = [f for f in ("sse4_2", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
                       "amx_tile", "amx_int8", "asimd", "asimddp") if f in flags]
    model = info.get("model name") or info.get("Hardware") or platform.processor() or platform.machine()
    bandwidth = _measure_bandwidth_gbs()
    return {
        "name": "cpu",
        "kind": "cpu",
        "display_name": f"this host: {model}, {cores} cores",
        "jetpack": None,
        "tensorrt": None,
        "max_onnx_opset": _max_ort_opset(),
        "peak_tflops": {"fp32": round(fp32, 4), "fp16": round(fp16, 4) if fp16 else None, "int8": round(int8, 4)},
        "mem_bandwidth_gbs": bandwidth,
        "memory_gb": round(_memory_gb(), 2),
        "dla_cores": 0,
        "power_modes": [],
        # ORT's CPU kernels block channels by the vector width: 16 floats with AVX-512, 8 with AVX2.
        "preferred_channel_multiple": 16 if "avx512f" in flags else 8,
        "gpu": "",
        "source": (f"detected at load: {cores} usable cores at {ghz:.2f} GHz, ISA {' '.join(isa) or 'unknown'} "
                   "(/proc/cpuinfo, cpufreq), memory from /proc/meminfo, max opset from ONNX Runtime's CPU kernels, "
                   f"bandwidth measured with a {64} MiB numpy copy; peak TFLOPS estimated as cores x clock x "
                   f"{lanes} fp32 lanes x 2 FMA units x 2"),
        "notes": "Peak figures are estimates, not data-sheet values; SMT threads share FMA units, so they overstate "
                 "hosts with hyper-threading." + (" VNNI present: INT8 at 4x FP32." if vnni else ""),
    }
