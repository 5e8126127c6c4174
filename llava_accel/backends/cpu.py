"""``cpu``: the CPU path. bf16 only where the CPU computes it natively (else fp32), and an explicit thread count."""

from __future__ import annotations

from typing import Any

import torch

from ..distributed import local_share
from .base import default_threads
from .eager import EagerBackend


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU has bf16 arithmetic (x86 AVX512-BF16 or AMX-BF16; Arm BF16). Emulated bf16 is slower."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


class CpuBackend(EagerBackend):
    name = "cpu"
    default_device = "cpu"
    default_dtype = "bfloat16" if cpu_has_native_bf16() else "float32"

    def __init__(self, model: str | None = None, device: str | None = None, dtype: str | None = None,
                 attention: str | None = None, threads: int | None = None, **options: Any) -> None:
        """``options``: those of ``EagerBackend`` (``quantize``, ``quantize_vision``)."""
        if device not in (None, "cpu"):
            raise ValueError(f"the 'cpu' backend runs on the CPU only, not '{device}'; use 'eager' for CUDA")
        self.threads = threads or local_share(default_threads())  # shared with data-parallel peers
        torch.set_num_threads(self.threads)
        super().__init__(model, "cpu", dtype, attention, **options)

    def describe(self) -> dict[str, Any]:
        why = "native bf16" if cpu_has_native_bf16() else "no native bf16 on this CPU"
        return {**super().describe(), "threads": self.threads, "dtype_reason": f"default {self.default_dtype} ({why})"}
