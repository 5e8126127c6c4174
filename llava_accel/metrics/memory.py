"""Peak memory: the CUDA caching allocator's peak and the process's peak resident set size (RSS), in bytes.

The RSS peak (``VmHWM``) is reset at the start of a measurement through ``/proc/self/clear_refs`` (Linux >= 4.0),
so it covers the measurement, not the whole process; where that is impossible the result says "process lifetime".
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass

import torch


def reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def proc_kib_field(path: str, name: str) -> int | None:
    """A "Name:  N kB" line of a /proc file (``/proc/self/status``, ``/proc/meminfo``) in bytes; None off Linux."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(f"{name}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_peak_bytes() -> int:
    hwm = proc_kib_field("/proc/self/status", "VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


@dataclass
class MemoryResult:
    device_peak_bytes: int | None  # torch.cuda.max_memory_allocated; None off CUDA
    device_reserved_peak_bytes: int | None  # torch.cuda.max_memory_reserved (what nvidia-smi sees, roughly)
    rss_peak_bytes: int
    rss_scope: str  # "measurement" or "process lifetime"


class MemoryTracker:
    def __init__(self, device: str | torch.device) -> None:
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.rss_scope = "measurement" if reset_rss_peak() else "process lifetime"

    def result(self) -> MemoryResult:
        cuda = self.device.type == "cuda"
        return MemoryResult(torch.cuda.max_memory_allocated(self.device) if cuda else None,
                            torch.cuda.max_memory_reserved(self.device) if cuda else None,
                            rss_peak_bytes(), self.rss_scope)
