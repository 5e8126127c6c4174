"""Peak FLOP/s of the device, for model FLOP utilisation (MFU = achieved FLOP/s / peak).

One peak per device, whatever dtype a run uses: the fastest dtype the device has. Otherwise a run in a slow dtype
(bf16 emulated on a CPU without bf16 instructions, fp32 on a GPU's CUDA cores) would be divided by a small peak and
look well utilised, and MFU could not be compared across dtypes or quantisation. GPUs: the vendor spec-sheet dense
(no sparsity) fp16/bf16 tensor-core peak. CPUs: no spec-sheet figure fits every part, so the peak is a large matmul
in the fastest of float32, bfloat16 and float16, measured once per (CPU, threads, torch) and cached on disk.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# (pattern on torch.cuda.get_device_name, dense fp16/bf16 tensor-core TFLOP/s); first match wins.
GPU_PEAKS: list[tuple[str, float]] = [
    (r"B200", 2250.0),
    (r"GH200|H200 NVL", 989.4),  # GH200 before H200: "GH200" contains "H200"
    (r"H200", 989.4),
    (r"H100 NVL", 835.0),
    (r"H100 PCIe", 756.0),
    (r"H100", 989.4),  # SXM5 / HBM3
    (r"A100", 312.0),
    (r"L40S", 362.0),
    (r"L40\b", 181.0),
    (r"L4\b", 121.0),
    (r"A10\b", 125.0),
    (r"V100S", 130.0),
    (r"V100.*PCIE|V100-PCIE", 112.0),
    (r"V100", 125.0),
    (r"T4\b", 65.0),
]
CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
CPU_SCREEN_N = 256  # each dtype is screened with a small matmul (an emulated one is slow), the fastest measured
CPU_MATMUL_N = 1024


@dataclass
class Peak:
    flops_per_s: float | None
    source: str  # where the figure comes from and which dtype it is for, or why there is none


def gpu_peak(name: str) -> Peak:
    for pattern, tflops in GPU_PEAKS:
        if re.search(pattern, name, re.IGNORECASE):
            return Peak(tflops * 1e12, f"spec sheet: {name}, dense fp16/bf16 tensor cores {tflops:g} TFLOP/s (its "
                                       f"fastest dtype; the peak for runs in every dtype)")
    return Peak(None, f"'{name}' is not in the peak table (llava_accel.metrics.mfu.GPU_PEAKS)")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "llava_accel"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def measure_matmul_peak(dtype: torch.dtype, n: int = CPU_MATMUL_N, repeats: int = 10) -> float:
    """Best FLOP/s of an n x n matmul on the CPU with torch's current thread count."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(3):
        torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def cpu_peak() -> Peak:
    threads = torch.get_num_threads()
    key = f"{cpu_model()}|threads={threads}|torch {torch.__version__}"
    path = cache_dir() / "cpu_peak.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached.get(key), dict):
        best = max(CPU_DTYPES, key=lambda dt: measure_matmul_peak(dt, n=CPU_SCREEN_N, repeats=3))
        cached[key] = {"flops_per_s": measure_matmul_peak(best), "dtype": _name(best)}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cached, indent=1))
        except OSError:
            pass  # a read-only home: measure again next time
    entry = cached[key]
    return Peak(entry["flops_per_s"], f"measured: {CPU_MATMUL_N}x{CPU_MATMUL_N} matmul in {entry['dtype']}, the "
                                      f"fastest of {', '.join(map(_name, CPU_DTYPES))} here (the peak for runs in "
                                      f"every dtype), {threads} threads (cached in {path})")


def device_peak(device: str | torch.device) -> Peak:
    """The device's peak in its fastest dtype: the one denominator of MFU for every run on it."""
    device = torch.device(device)
    if device.type == "cuda":
        return gpu_peak(torch.cuda.get_device_name(device))
    if device.type == "cpu":
        return cpu_peak()
    return Peak(None, f"no peak known for device type '{device.type}'")
