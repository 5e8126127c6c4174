"""Energy meters: the best counter present, and an estimate, labelled as such, when there is none.

Order of preference on a CUDA device: (1) NVML's total-energy counter (Volta and newer), (2) NVML board power
sampled in a background thread and integrated; on the CPU: (3) RAPL package counters under /sys/class/powercap.
Otherwise (4) an estimate from this process's CPU time and a stated power per busy CPU. Every meter reads
cumulative joules since it was opened, so a batch's energy is the difference of two reads taken at its ends.
"""

from __future__ import annotations

import os
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable

import torch

RAPL_ROOT = Path("/sys/class/powercap")
# The estimate's power figure: a busy server core draws roughly TDP / cores = 4-7 W (EPYC 7763: 280 W / 64 cores,
# Xeon 8380: 270 W / 40 cores). Override with LLAVA_ACCEL_CPU_WATTS.
DEFAULT_CPU_WATTS = 6.0
SAMPLE_INTERVAL_S = 0.02


class EnergyMeter(ABC):
    source: str  # short name of the source, e.g. "nvml-energy-counter" or "estimated"
    measured: bool  # False only for the estimate
    scope: str = ""  # what the joules cover, in words
    note: str = ""  # why better sources were not used

    @property
    def label(self) -> str:
        return "measured" if self.measured else "estimated"

    @abstractmethod
    def read(self) -> float:
        """Joules since the meter was opened."""

    def close(self) -> None:
        pass


def _nvml():
    import pynvml  # nvidia-ml-py; imported lazily: most machines have no NVIDIA driver

    pynvml.nvmlInit()
    return pynvml


def _nvml_handle(nvml, device: torch.device):
    """The NVML handle of a CUDA device, matched by PCI bus id (CUDA and NVML may number GPUs differently)."""
    index = device.index if device.index is not None else 0
    if torch.cuda.is_available():
        try:
            p = torch.cuda.get_device_properties(index)
            return nvml.nvmlDeviceGetHandleByPciBusId(f"{p.pci_domain_id:08x}:{p.pci_bus_id:02x}:{p.pci_device_id:02x}.0")
        except (AttributeError, TypeError, nvml.NVMLError):  # older torch has no PCI ids: fall back to the index
            pass
    return nvml.nvmlDeviceGetHandleByIndex(index)


class NvmlEnergyCounter(EnergyMeter):
    source, measured = "nvml-energy-counter", True

    def __init__(self, device: torch.device) -> None:
        self.nvml = _nvml()
        self.handle = _nvml_handle(self.nvml, device)
        self.start_mj = self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)  # NotSupported before Volta
        self.scope = "GPU board energy from NVML's total-energy counter (mJ); host CPU not included"

    def read(self) -> float:
        return (self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) - self.start_mj) / 1000.0

    def close(self) -> None:
        self.nvml.nvmlShutdown()


class PowerSampler(EnergyMeter):
    """Integrates a power reading (W) over time with the trapezoid rule, sampling in a background thread.

    ``read`` takes a fresh sample first, so a batch boundary falls on a sample, not up to one interval away.
    """

    measured = True

    def __init__(self, power_w: Callable[[], float], interval: float = SAMPLE_INTERVAL_S,
                 clock: Callable[[], float] = time.perf_counter, background: bool = True) -> None:
        self.power_w, self.interval, self.clock = power_w, interval, clock
        self.lock = threading.Lock()
        self.joules = 0.0
        self.last = (clock(), power_w())
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True) if background else None
        if self.thread:
            self.thread.start()

    def _sample(self) -> float:
        with self.lock:
            t, p = self.clock(), self.power_w()
            t0, p0 = self.last
            self.joules += (t - t0) * (p + p0) / 2
            self.last = (t, p)
            return self.joules

    def _run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self._sample()

    def read(self) -> float:
        return self._sample()

    def close(self) -> None:
        self.stop_event.set()
        if self.thread:
            self.thread.join()


class NvmlPowerSampler(PowerSampler):
    source = "nvml-power-sampling"

    def __init__(self, device: torch.device, **kwargs: Any) -> None:
        self.nvml = _nvml()
        handle = _nvml_handle(self.nvml, device)
        super().__init__(lambda: self.nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0, **kwargs)
        self.scope = (f"GPU board power from NVML sampled every {self.interval * 1000:g} ms, integrated "
                      "(trapezoid); host CPU not included")

    def close(self) -> None:
        super().close()
        self.nvml.nvmlShutdown()


def rapl_packages(root: Path | None = None) -> list[Path]:
    """Top-level RAPL package domains (``intel-rapl:N`` named ``package-*``; AMD uses the same driver).

    Sub-domains (core, uncore, dram) are inside the package and ``psys`` contains it: counting either would count
    twice.
    """
    root = RAPL_ROOT if root is None else root
    domains = []
    for d in sorted(root.glob("*-rapl:*")):
        if d.name.count(":") == 1 and (d / "name").exists() and (d / "name").read_text().startswith("package"):
            domains.append(d)
    return domains


class RaplCounter(EnergyMeter):
    source, measured = "rapl", True

    def __init__(self, root: Path | None = None) -> None:
        self.domains = rapl_packages(root)
        if not self.domains:
            raise OSError(f"no RAPL package domain under {RAPL_ROOT if root is None else root}")
        self.ranges = [int((d / "max_energy_range_uj").read_text()) for d in self.domains]
        self.last = [self._raw(d) for d in self.domains]  # PermissionError: energy_uj is root-only since Linux 5.10
        self.total_uj = 0
        self.scope = (f"CPU package energy from RAPL ({len(self.domains)} package domain(s)): the whole socket, "
                      "including other processes")

    @staticmethod
    def _raw(domain: Path) -> int:
        return int((domain / "energy_uj").read_text())

    def read(self) -> float:
        """Sums each domain's increase, adding its range when the counter wrapped (read at least once per wrap)."""
        for i, d in enumerate(self.domains):
            raw = self._raw(d)
            delta = raw - self.last[i]
            self.total_uj += delta if delta >= 0 else delta + self.ranges[i]
            self.last[i] = raw
        return self.total_uj / 1e6


class CpuTimeEstimate(EnergyMeter):
    source, measured = "estimated", False

    def __init__(self, watts_per_cpu: float | None = None) -> None:
        self.watts = watts_per_cpu or float(os.environ.get("LLAVA_ACCEL_CPU_WATTS", DEFAULT_CPU_WATTS))
        self.start = time.process_time()
        self.scope = (f"this process's CPU time x {self.watts:g} W per busy CPU (a stated figure, "
                      "not a measurement)")

    def read(self) -> float:
        return (time.process_time() - self.start) * self.watts


class DeviceSum(EnergyMeter):
    """The meters of the GPUs one model is spread over (``device_map``), read as one."""

    measured = True

    def __init__(self, meters: list[EnergyMeter], devices: list[torch.device]) -> None:
        self.meters = meters
        self.source = "+".join(dict.fromkeys(m.source for m in meters))
        self.scope = f"sum over {', '.join(map(str, devices))}: " + "; ".join(dict.fromkeys(m.scope for m in meters))
        self.note = "; ".join(dict.fromkeys(m.note for m in meters if m.note))

    def read(self) -> float:
        return sum(m.read() for m in self.meters)

    def close(self) -> None:
        for m in self.meters:
            m.close()


def open_meter(device: str | torch.device, *more: str | torch.device) -> EnergyMeter:
    """The best meter for ``device``; its ``note`` says why each better source was not used. With ``more`` devices
    (a model spread over GPUs): the sum of their meters when every one has a counter, else the first one's."""
    if more:
        devices = [torch.device(d) for d in (device, *more)]
        meters = [open_meter(d) for d in devices]
        if all(m.measured for m in meters):
            return DeviceSum(meters, devices)
        for m in meters[1:]:
            m.close()
        left_out = [str(d) for d, m in zip(devices[1:], meters[1:]) if meters[0].measured or m.measured]
        if left_out:
            meters[0].note = "; ".join(filter(None, [meters[0].note, f"not included: {', '.join(left_out)} (the "
                                                                     "model also runs there; no counter on all)"]))
        return meters[0]
    device = torch.device(device)
    if device.type == "cuda":
        candidates: list[tuple[str, Callable[[], EnergyMeter]]] = [
            ("NVML energy counter", lambda: NvmlEnergyCounter(device)),
            ("NVML power", lambda: NvmlPowerSampler(device))]
    else:
        candidates = [("RAPL", RaplCounter)]
    why: list[str] = []
    for name, make in candidates:
        try:
            return make()
        except Exception as exc:  # ImportError, NVMLError (no driver, not supported), OSError (no RAPL, not root)
            why.append(f"{name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    meter = CpuTimeEstimate()
    if device.type == "cuda":
        meter.scope += "; the GPU's energy is not included"
    meter.note = "; ".join(why)
    return meter


def idle_power(meter: EnergyMeter, seconds: float) -> float:
    """Mean power (W) over ``seconds`` of doing nothing, from the same meter."""
    e0, t0 = meter.read(), time.perf_counter()
    time.sleep(seconds)
    return (meter.read() - e0) / (time.perf_counter() - t0)
