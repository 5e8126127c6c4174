"""What this CPU can compute: its instruction-set flags, read once from ``/proc/cpuinfo``."""

from __future__ import annotations

from functools import lru_cache


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``); empty where ``/proc/cpuinfo`` cannot be read."""
    return _parse(cpuinfo) if cpuinfo is not None else _this_cpu()


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """True when the CPU has bf16 arithmetic (x86 AVX512-BF16 or AMX-BF16; Arm BF16). Emulated bf16 is slower."""
    return bool(cpu_flags(cpuinfo) & {"avx512_bf16", "amx_bf16", "bf16"})


def cpu_vendor(cpuinfo: str | None = None) -> str:
    """The x86 ``vendor_id`` (``GenuineIntel``, ``AuthenticAMD``, ...); empty where it cannot be read."""
    text = cpuinfo if cpuinfo is not None else _cpuinfo()
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("vendor_id")), "")


@lru_cache(maxsize=1)
def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


@lru_cache(maxsize=1)
def _this_cpu() -> frozenset[str]:
    return _parse(_cpuinfo())


def _parse(cpuinfo: str) -> frozenset[str]:
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return frozenset(flags)
