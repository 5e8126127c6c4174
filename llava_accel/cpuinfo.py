"""What this CPU can compute: its instruction-set flags, read once from ``/proc/cpuinfo``."""

from __future__ import annotations

from functools import lru_cache


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``); empty where ``/proc/cpuinfo`` cannot be read."""
    return _parse(cpuinfo) if cpuinfo is not None else _this_cpu()


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU has bf16 arithmetic (x86 AVX512-BF16 or AMX-BF16; Arm BF16). Emulated bf16 is slower."""
    return bool(cpu_flags(cpuinfo) & {"avx512_bf16", "amx_bf16", "bf16"})


@lru_cache(maxsize=1)
def _this_cpu() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return _parse(f.read())
    except OSError:
        return frozenset()


def _parse(cpuinfo: str) -> frozenset[str]:
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return frozenset(flags)
