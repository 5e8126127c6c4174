"""Peak FLOP/s of the device, for model FLOP utilisation (MFU = achieved FLOP/s / peak).

GPUs: vendor spec-sheet dense (no sparsity) fp16/bf16 tensor-core peaks. CPUs: no spec-sheet figure fits every
part, so the peak is a large matmul measured once per (CPU, threads, dtype, torch) and cached on disk.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

# (pattern on torch.cuda.get_device_name, dense fp16/bf16 TFLOP/s, has bf16); first match wins.
GPU_PEAKS: list[tuple[str, float, bool]] = [
    (r"B200", 2250.0, True),
    (r"GH200|H200 NVL", 989.4, True),  # GH200 before H200: "GH200" contains "H200"
    (r"H200", 989.4, True),
    (r"H100 NVL", 835.0, True),
    (r"H100 PCIe", 756.0, True),
    (r"H100", 989.4, True),  # SXM5 / HBM3
    (r"A100", 312.0, True),
    (r"L40S", 362.0, True),
    (r"L40\b", 181.0, True),
    (r"L4\b", 121.0, True),
    (r"A10\b", 125.0, True),
    (r"V100S", 130.0, False),
    (r"V100.*PCIE|V100-PCIE", 112.0, False),
    (r"V100", 125.0, False),
    (r"T4\b", 65.0, False),
]
CPU_MATMUL_N = 1024


@dataclass
class Peak:
    flops_per_s: float | None
    source: str  # where the figure comes from, or why there is none


def gpu_peak(name: str, dtype: torch.dtype) -> Peak:
    if dtype not in (torch.float16, torch.bfloat16):
        return Peak(None, f"no {str(dtype).removeprefix('torch.')} peak in the table (fp16/bf16 only)")
    for pattern, tflops, has_bf16 in GPU_PEAKS:
        if re.search(pattern, name, re.IGNORECASE):
            if dtype == torch.bfloat16 and not has_bf16:
                return Peak(None, f"{name} has no bf16 tensor cores")
            return Peak(tflops * 1e12, f"spec sheet: {name}, dense fp16/bf16 {tflops:g} TFLOP/s")
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


def cpu_peak(dtype: torch.dtype) -> Peak:
    threads = torch.get_num_threads()
    key = f"{cpu_model()}|threads={threads}|{str(dtype).removeprefix('torch.')}|torch {torch.__version__}"
    path = cache_dir() / "cpu_peak.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if key not in cached:
        cached[key] = measure_matmul_peak(dtype)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cached, indent=1))
        except OSError:
            pass  # a read-only home: measure again next time
    return Peak(cached[key], f"measured: {CPU_MATMUL_N}x{CPU_MATMUL_N} matmul, {threads} threads "
                             f"(cached in {path})")


def device_peak(device: str | torch.device, dtype: torch.dtype) -> Peak:
    device = torch.device(device)
    if device.type == "cuda":
        return gpu_peak(torch.cuda.get_device_name(device), dtype)
    if device.type == "cpu":
        return cpu_peak(dtype)
    return Peak(None, f"no peak known for device type '{device.type}'")
